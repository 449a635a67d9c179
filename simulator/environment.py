"""The retail shop day by day: visits, organic browsing, carousels, purchases, retention.
The world comes from ``seed``, each day's draws from a stream keyed by (seed, day).

Details: docs/simulator.md, "The environment (`simulator/environment.py`)".
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from banditrec.errors import ValidationError
from banditrec.validation import as_seed_sequence

from .carousel import CarouselModel, Response, check_slates, sigmoid
from .config import DEVICES, SimConfig
from .history import CART, PURCHASE, VIEW, History
from .state import NOT_DUE, CustomerState, Stock, push
from .world import make_population, make_reorder_cycles, make_retail_catalog

NEVER = -32768
SEED_POOL = 16  # items drawn from the segment's popularity before the customer picks one to view
MAX_VIEWS = 8
COMPLEMENT_POOL = 8  # items of the complementary type a customer compares before buying one
SUBSTITUTE_POOL = 8  # items of a consumable type a customer compares when not rebuying the last one


@dataclass(frozen=True)
class Requests:
    """One carousel request per visiting customer today, with the state the response depends
    on copied in (so responses and exact expectations stay consistent whatever happens later)."""

    day: int
    customer: np.ndarray  # (m,) customer index
    session: np.ndarray  # (m,) visit id, unique within the run
    context: np.ndarray  # (m, d + S + 5) observed profile, segment and device one-hot, hour (sin, cos)
    segment: np.ndarray  # (m,)
    device: np.ndarray  # (m,)
    hour: np.ndarray  # (m,)
    owned: np.ndarray  # (m, R) recently bought items, -1 empty
    owned_day: np.ndarray  # (m, R)
    cart: np.ndarray  # (m, C) items in the cart, -1 empty
    views: np.ndarray  # (m, V) recently viewed items, -1 empty (a ring)
    view_next: np.ndarray  # (m,) the views ring's next write position: the oldest entry
    available: np.ndarray = field(repr=False)  # (n_items,) bool: in stock when the request was made

    def __len__(self) -> int:
        return len(self.customer)

    def user_ids(self) -> list[str]:
        return [f"u{c}" for c in self.customer.tolist()]

    def take(self, index) -> Requests:
        index = np.atleast_1d(np.asarray(index))
        return Requests(
            day=self.day,
            available=self.available,
            **{
                k: getattr(self, k)[index]
                for k in (
                    "customer",
                    "session",
                    "context",
                    "segment",
                    "device",
                    "hour",
                    "owned",
                    "owned_day",
                    "cart",
                    "views",
                    "view_next",
                )
            },
        )

    def describe(self, i: int) -> dict:
        """Request ``i`` as a JSON-ready dict for an HTTP client: user id, context, and the item
        ids in the cart, recently bought and recently viewed."""
        ids = lambda a: [f"i{j}" for j in a.tolist()]  # noqa: E731
        recent = self.recent(i)
        return {
            "user_id": f"u{int(self.customer[i])}",
            "context": self.context[i].tolist(),
            "cart": ids(recent["cart"]),
            "purchases": ids(recent["purchases"]),
            "views": ids(recent["views"]),
        }

    def recent(self, i: int) -> dict:
        """Request ``i``'s cart, recent purchases and views as item index arrays, newest first
        (purchases by day, views by ring position)."""
        cart = self.cart[i][self.cart[i] >= 0]
        owned, days = self.owned[i], self.owned_day[i]
        order = np.argsort(-days.astype(np.int64), kind="stable")
        purchases = owned[order][owned[order] >= 0]
        views = np.roll(self.views[i], -int(self.view_next[i]))[::-1]  # oldest..newest, reversed
        return {"cart": cart, "purchases": purchases, "views": views[views >= 0]}


@dataclass
class DayKPIs:
    day: int
    visits: int = 0
    impressions: int = 0  # carousels shown
    slots: int = 0
    clicks: int = 0
    carousel_purchases: int = 0
    orders: int = 0  # visits with at least one purchase
    purchases: int = 0
    revenue: float = 0.0
    margin: float = 0.0
    carousel_revenue: float = 0.0
    carousel_margin: float = 0.0
    replenishments: int = 0  # purchases customers made on their own when a consumable came due (in purchases)
    replenishment_revenue: float = 0.0  # (in revenue)
    alive: int = 0
    active_30d: int = 0

    @property
    def ctr(self) -> float:
        return self.clicks / self.slots if self.slots else 0.0

    @property
    def conversion(self) -> float:
        return self.orders / self.visits if self.visits else 0.0

    @property
    def aov(self) -> float:
        """Average order value of the visits with a purchase (replenishments are not visits)."""
        return (self.revenue - self.replenishment_revenue) / self.orders if self.orders else 0.0


class Environment:
    """The simulated shop. See ``docs/simulator.md``."""

    def __init__(self, config: SimConfig | None = None, seed=0):
        self.config = c = config or SimConfig()
        self.seed_seq = as_seed_sequence(seed)
        cat_rng, pop_rng, stock_rng = (np.random.default_rng(s) for s in self.seed_seq.spawn(3))
        self.catalog = make_retail_catalog(c, cat_rng)
        cycles = make_reorder_cycles(c, self.catalog, c.n_customers, np.random.default_rng(self._stream(-1, 97)))
        self.population = replace(make_population(c, pop_rng), reorder_cycle=cycles)
        self.model = CarouselModel(self.catalog, self.population, c)
        self._consumable_column = self.catalog.consumable_column
        self._consumable_type = np.flatnonzero(self.catalog.consumable)
        self.state = CustomerState.new(c, len(self._consumable_type))
        self.stock = Stock.new(c, stock_rng, self.catalog.launch_day, start_day=-c.history_days)
        self.day = -c.history_days
        self.recording = False
        self._events: list[tuple] = []
        self._next_session = 0
        self._bought_today = np.zeros(c.n_customers, bool)
        self._visited_today = np.zeros(c.n_customers, bool)
        self._experience = np.zeros(c.n_customers, np.float32)  # today's carousel relevance, per customer
        self._purchases_today = np.zeros(c.n_customers, np.int16)
        self._kpi = DayKPIs(day=self.day)
        self.kpis: list[DayKPIs] = []
        self.initial_customers = c.n_customers
        self._requested_day: int | None = None
        self._interval_rng = self._day_rng(14)  # noise of the reorder intervals started today
        self._prepare_sampling()
        # drift and seasons (docs/simulator.md): today's shift of each item's appeal
        self._walk = np.zeros(c.n_items) if c.drift_sd else None
        self._season_phase = (
            np.random.default_rng(self._stream(-1, 98)).uniform(0, 2 * np.pi, c.n_types) if c.season_amplitude else None
        )
        self._update_shift()

    # ---- derived tables for fast sampling -------------------------------------------------
    def _prepare_sampling(self):
        cat, pop, c = self.catalog, self.population, self.config
        # where customers of a segment start browsing: softmax of the segment's typical taste
        scale = c.preference_scale / np.sqrt(c.dim) * 0.6
        logits = cat.bias[None, :] + scale * (pop.segment_centre @ cat.latent.T.astype(float))
        self._seed_weight = np.exp(logits - logits.max(axis=1, keepdims=True))
        self._launch_seed_cdf()
        A = cat.complement.astype(float)
        out = A.sum(axis=1)
        self._has_complement = out > 0
        row_cdf = np.cumsum(A, axis=1) / np.where(out > 0, out, 1.0)[:, None]
        row_cdf[~self._has_complement] = 1.0
        self._comp_cdf = (row_cdf + np.arange(len(A))[:, None]).ravel()
        self._log_price = np.log(cat.price) - cat.log_price_ref
        # the shop's average attraction, against which a carousel's relevance moves satisfaction
        rng = np.random.default_rng(self._stream(-1, 99))
        u = rng.integers(0, c.n_customers, 20_000)
        j = rng.integers(0, c.n_items, 20_000)
        z = (
            c.base_logit
            + cat.bias[j]
            + np.einsum("md,md->m", pop.preference[u], cat.latent[j], dtype=float)
            - pop.price_sensitivity[u] * self._log_price[j]
        )
        self.mean_attraction = float(sigmoid(z).mean())

    def _update_shift(self) -> None:
        """Today's appeal shift: ``season_amplitude sin(2 pi day / season_days + phase_type)`` plus
        the random walk (a step ``N(0, drift_sd^2)`` per item per day, from the day's stream)."""
        c = self.config
        if self._walk is None and self._season_phase is None:
            return
        shift = np.zeros(c.n_items)
        if self._season_phase is not None:
            shift += c.season_amplitude * np.sin(
                2 * np.pi * self.day / c.season_days + self._season_phase[self.catalog.product_type]
            )
        if self._walk is not None:
            shift += self._walk
        self.model.shift = shift

    def _appeal(self, items) -> np.ndarray:
        """Each item's hidden appeal today (bias, plus drift and season when on)."""
        shift = self.model.shift
        return self.catalog.bias[items] if shift is None else self.catalog.bias[items] + shift[items]

    def _launch_seed_cdf(self):
        """Browsing starts only at launched items: rebuilt when items launch."""
        p = self._seed_weight * (self.catalog.launch_day <= self.day)[None, :]
        cdf = np.cumsum(p, axis=1)
        cdf /= cdf[:, -1:]
        self._seed_cdf = (cdf + np.arange(len(cdf))[:, None]).ravel()  # segment s occupies (s, s + 1]

    def _stream(self, day: int, stream: int) -> np.random.SeedSequence:
        ss = self.seed_seq
        return np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, 7919, stream, day + (1 << 20)))

    def _day_rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng(self._stream(self.day, stream))

    # ---- public API --------------------------------------------------------------------------
    @property
    def context_dim(self) -> int:
        return self.config.dim + self.config.n_segments + len(DEVICES) + 2

    def contexts(self, customers, hours) -> np.ndarray:
        """(m, context_dim) what a request tells the shop: observed taste profile, segment and
        device one-hot, time of day as (sin, cos)."""
        pop, c = self.population, self.config
        customers = np.asarray(customers)
        m = len(customers)
        out = np.zeros((m, self.context_dim))
        out[:, : c.dim] = pop.observed[customers]
        out[np.arange(m), c.dim + pop.segment[customers].astype(np.int64)] = 1.0
        out[np.arange(m), c.dim + c.n_segments + pop.device[customers].astype(np.int64)] = 1.0
        angle = 2 * np.pi * np.asarray(hours) / 24.0
        out[:, -2], out[:, -1] = np.sin(angle), np.cos(angle)
        return out

    def warm_up(self, days: int | None = None) -> History:
        """Run the pre-period (organic browsing only, no carousel) up to day 0 and return its
        events: views, cart adds and purchases. Customers' states carry on from it."""
        days = -self.day if days is None else days
        if self.day + days > 0 and days != -self.day:
            raise ValidationError(f"warm_up runs at most {-self.day} days before day 0, asked {days}", "days")
        was, self.recording = self.recording, True
        start = len(self._events)
        for _ in range(days):
            self.requests()
            self.advance_day()
        self.recording = was
        parts = self._events[start:]
        return History.concat(parts, self.config.n_customers, self.config.n_items)

    def take_events(self) -> History:
        """The events recorded since the last call (or since recording began), and forget them:
        for a consumer that writes them elsewhere day by day."""
        out = History.concat(self._events, self.config.n_customers, self.config.n_items)
        self._events = []
        return out

    def events(self) -> History:
        """Every event recorded so far (recording is on during :meth:`warm_up`, or when set)."""
        return History.concat(self._events, self.config.n_customers, self.config.n_items)

    def requests(self, day: int | None = None) -> Requests:
        """Today's visitors: who visits, their organic browsing and purchases, then one carousel
        request each. Call once per day, then :meth:`respond`, then :meth:`advance_day`."""
        if day is not None and day != self.day:
            raise ValidationError(f"the shop is at day {self.day}; requests for day {day} cannot be made", "day")
        if self._requested_day == self.day:
            raise ValidationError(f"requests() was already called for day {self.day}; call advance_day() first", "day")
        self._requested_day = self.day
        c, st, pop = self.config, self.state, self.population
        rng = self._day_rng(0)
        rate = (
            pop.visit_rate0
            * np.exp(c.visit_satisfaction * st.satisfaction)
            * np.where(st.gateway, 1.0 + c.gateway_visit_boost, 1.0)
        )
        u = rng.random(c.n_customers)
        visitors = np.flatnonzero(st.alive & (u < -np.expm1(-rate)))
        m = len(visitors)
        session = self._next_session + np.arange(m, dtype=np.int64)
        self._next_session += m
        st.visits[visitors] += 1
        self._visited_today[visitors] = True
        st.last_visit[visitors] = self.day
        self._kpi.visits += m
        self._replenish()
        brng = self._day_rng(1)
        self._checkout_carts(visitors, session, brng)
        self._browse(visitors, session, brng)
        hour = np.mod(pop.hour[visitors] + brng.normal(0.0, 2.0, size=m), 24.0)
        return Requests(
            day=self.day,
            customer=visitors,
            session=session,
            context=self.contexts(visitors, hour),
            segment=pop.segment[visitors],
            device=pop.device[visitors],
            hour=hour,
            owned=st.purchases[visitors],
            owned_day=st.purchase_day[visitors],
            cart=st.cart[visitors],
            views=st.views[visitors],
            view_next=st.view_next[visitors],
            available=self.stock.available.copy(),
        )

    def expected_reward(self, requests: Requests, slates, kind: str = "click") -> np.ndarray:
        """(m,) exact expected clicks, purchases, revenue, margin (or an extra column's total,
        e.g. ``"royalty"``) of showing each slate, from the choice model."""
        return self.model.expected(requests, slates, kind)

    def outcomes(self, requests: Requests, slates, rng: np.random.Generator) -> Response:
        """Sample the responses to ``slates`` without changing the shop."""
        return self.model.sample(requests, slates, rng)

    def respond(self, requests: Requests, slates, rng: np.random.Generator) -> Response:
        """Sample the responses to the carousels shown and apply them: purchases, cart adds,
        satisfaction from the carousels' relevance."""
        if requests.day != self.day:
            raise ValidationError(
                f"these requests are from day {requests.day}; the shop is at day {self.day}", "requests"
            )
        slates = check_slates(requests, slates, self.catalog.n_items)
        out = self.model.sample(requests, slates, rng)
        c, k = self.config, self._kpi
        m, K = slates.shape
        k.impressions += m
        k.slots += m * K
        k.clicks += int(out.click.sum())
        # relevance: examination-weighted mean attraction of what was shown
        if m and K:
            a = self.model.attraction(requests, slates)
            theta = self.model.examination(requests, K)
            rel = (a * theta).sum(axis=1) / theta.sum(axis=1)
            np.add.at(
                self._experience,
                requests.customer,
                (c.satisfaction_relevance * (rel - self.mean_attraction)).astype(np.float32),
            )
        rows, cols = np.nonzero(out.purchase)
        bought = slates[rows, cols]
        k.carousel_purchases += len(bought)
        k.carousel_revenue += float(out.revenue.sum())
        k.carousel_margin += float(out.margin.sum())
        self._purchase(requests.customer[rows], bought, requests.session[rows])
        rows, cols = np.nonzero(out.cart)
        self._add_to_cart(requests.customer[rows], slates[rows, cols], requests.session[rows])
        return out

    def respond_one(self, requests: Requests, i: int, item_ids, rng: np.random.Generator) -> dict:
        """The per-request wrapper: visitor ``i`` of ``requests`` is shown ``item_ids`` (ids such
        as ``"i42"``, in slot order, e.g. what ``/v1/decide`` returned); the response is applied
        to the shop and returned as lists per slot: click, purchase (0/1) and margin."""
        if not 0 <= i < len(requests):
            raise ValidationError(f"request index {i} is outside [0, {len(requests)})", "i")
        try:
            if any(not str(item).startswith("i") for item in item_ids):
                raise ValueError
            slate = np.array([[int(str(item)[1:]) for item in item_ids]], dtype=np.int64)
        except ValueError:
            raise ValidationError(f"item ids look like 'i42'; got {list(item_ids)!r}", "item_ids") from None
        out = self.respond(requests.take(i), slate, rng)
        return {
            "click": out.click[0].astype(int).tolist(),
            "purchase": out.purchase[0].astype(int).tolist(),
            "margin": out.margin[0].tolist(),
        }

    def advance_day(self) -> DayKPIs:
        """Close the day: churn, satisfaction decay, restocking. Returns the day's KPIs."""
        c, st = self.config, self.state
        rng = self._day_rng(2)
        hazard = np.minimum(
            self.population.churn0
            * np.exp(-c.churn_satisfaction * st.satisfaction)
            * np.where(st.gateway, 1.0 - c.gateway_churn_cut, 1.0),
            1.0,
        )
        u = rng.random(c.n_customers)
        st.alive &= ~(u < hazard)
        # satisfaction: a moving average of visit experiences, decaying towards 0 between visits
        v = self._visited_today
        experience = self._experience[v] + c.satisfaction_per_purchase * np.minimum(self._purchases_today[v], 3)
        st.satisfaction[v] += np.float32(c.satisfaction_weight) * (experience - st.satisfaction[v])
        st.satisfaction *= np.float32(c.satisfaction_decay)
        self._visited_today[:] = False
        self._experience[:] = 0.0
        self._purchases_today[:] = 0
        self.stock.advance(self.day, c, rng)
        k = self._kpi
        k.orders = int(self._bought_today.sum())
        st.orders += self._bought_today
        k.alive = int(st.alive.sum())
        k.active_30d = int((st.alive & (st.last_visit > self.day - 30)).sum())
        self._bought_today[:] = False
        self.kpis.append(k)
        self.day += 1
        if (self.catalog.launch_day == self.day).any():
            self._launch_seed_cdf()
        if self._walk is not None:
            self._walk += self._day_rng(13).normal(0.0, c.drift_sd, size=c.n_items)
        self._update_shift()
        if c.mix_shift_share > 0 and self.day == c.mix_shift_day:
            self._shift_device_mix()
        self._kpi = DayKPIs(day=self.day)
        self._interval_rng = self._day_rng(14)
        return k

    def _shift_device_mix(self) -> None:
        """Covariate drift (docs/simulator.md): a ``mix_shift_share`` of all customers switch to
        mobile from today, drawn from the day's own stream, so the rest of the world's draws are
        those of the run without the shift."""
        move = self._day_rng(16).random(self.config.n_customers) < self.config.mix_shift_share
        self.population.device[move] = DEVICES.index("mobile")

    @property
    def retention(self) -> float:
        return float(self.state.alive.mean())

    # ---- replenishment ----------------------------------------------------------------------
    def _replenish(self) -> None:
        """Live customers whose consumable types come due today buy them again on their own, each
        with probability replenish_rate (else they lapse until they next buy the type): the
        item bought last with probability reorder_loyalty, else their pick among SUBSTITUTE_POOL
        launched items of the type. An item out of stock is tried again the next day. Each
        customer's replenishments today form one session (an order without a carousel)."""
        c, st, cat, pop = self.config, self.state, self.catalog, self.population
        if st.due_day.shape[1] == 0:
            return
        rows, cols = np.nonzero((st.due_day <= self.day) & st.alive[:, None])
        if len(rows) == 0:
            return
        rng = self._day_rng(15)
        u = rng.random((2, len(rows)))
        go = u[0] < c.replenish_rate
        st.due_day[rows[~go], cols[~go]] = NOT_DUE
        rows, cols, loyal = rows[go], cols[go], u[1, go] < c.reorder_loyalty
        m = len(rows)
        pool = cat.random_item_of_type(
            np.repeat(self._consumable_type[cols], SUBSTITUTE_POOL), rng.random(m * SUBSTITUTE_POOL)
        ).reshape(m, SUBSTITUTE_POOL)
        taste = np.einsum("md,mkd->mk", pop.preference[rows], cat.latent[pool], dtype=float)
        score = (
            self._appeal(pool)
            + taste
            - pop.price_sensitivity[rows][:, None] * self._log_price[pool]
            + rng.gumbel(size=pool.shape)
        )
        score = np.where(cat.launch_day[pool] <= self.day, score, -np.inf)
        pick = pool[np.arange(m), np.argmax(score, axis=1)]
        last = st.last_consumable[rows, cols]
        item = np.where(loyal & (last >= 0), last, pick).astype(np.int64)
        ok = self.stock.available[item] & (cat.launch_day[item] <= self.day)
        rows, item = rows[ok], item[ok]
        first = np.r_[True, rows[1:] != rows[:-1]] if len(rows) else np.empty(0, bool)
        session = self._next_session + np.cumsum(first) - 1
        self._next_session += int(first.sum())
        self._purchase(rows, item, session.astype(np.int64))
        # not a visit: orders count visits with a purchase, and a visit's experience its own purchases
        # (nothing else has been bought today when replenishment runs)
        self._bought_today[rows] = False
        self._purchases_today[rows] = 0
        self._kpi.replenishments += len(item)
        self._kpi.replenishment_revenue += float(cat.price[item].sum())

    # ---- a visit's organic part ------------------------------------------------------------
    def _record(self, customers, items, sessions, kind):
        if self.recording and len(items):
            n = len(items)
            self._events.append(
                (
                    np.asarray(customers, np.int64),
                    np.asarray(items, np.int64),
                    np.full(n, self.day, np.int32),
                    np.asarray(sessions, np.int64),
                    np.full(n, kind, np.int8),
                )
            )

    def _checkout_carts(self, visitors, session, rng):
        """Each live cart item is bought with probability cart_checkout (when in stock); items
        older than cart_days leave the cart."""
        c, st = self.config, self.state
        cart = st.cart[visitors]
        live = cart >= 0
        if not live.any():
            return
        u = rng.random(cart.shape)
        expired = live & (st.cart_day[visitors] < self.day - c.cart_days)
        buy = live & ~expired & (u < c.cart_checkout) & self.stock.available[np.maximum(cart, 0)]
        rows, cols = np.nonzero(buy)
        bought = cart[rows, cols]
        cart[buy | expired] = -1
        st.cart[visitors] = cart
        self._purchase(visitors[rows], bought, session[rows], rng=rng)

    def _browse(self, visitors, session, rng):
        """Views: a seed item the customer picks among SEED_POOL drawn from their segment's
        popularity, then more items of the same type (substitutes: the co-view signal). The
        visit may end in buying the last item viewed (a purchase may pull in a complement), or
        in putting it in the cart."""
        m = len(visitors)
        if m == 0:
            return
        c, cat, pop, st = self.config, self.catalog, self.population, self.state
        seg = pop.segment[visitors].astype(np.int64)
        pool = np.searchsorted(self._seed_cdf, seg[:, None] + rng.random((m, SEED_POOL))) - seg[:, None] * c.n_items
        pool = np.clip(pool, 0, c.n_items - 1)
        taste = np.einsum("md,mkd->mk", pop.preference[visitors], cat.latent[pool], dtype=float)
        score = self._appeal(pool) + taste - pop.price_sensitivity[visitors][:, None] * self._log_price[pool]
        first = pool[np.arange(m), np.argmax(score + rng.gumbel(size=score.shape), axis=1)]
        n_views = np.minimum(1 + rng.poisson(c.views_per_visit - 1.0, size=m), MAX_VIEWS)
        more = cat.random_item_of_type(
            np.repeat(cat.product_type[first], MAX_VIEWS - 1), rng.random(m * (MAX_VIEWS - 1))
        ).reshape(m, MAX_VIEWS - 1)
        launched = cat.launch_day[more] <= self.day  # an item not yet launched cannot be viewed
        more = np.where(launched, more, first[:, None])  # (the customer looks at the first item again)
        viewed = np.c_[first, more]
        mask = np.arange(MAX_VIEWS)[None, :] < n_views[:, None]
        rows = np.repeat(np.arange(m), n_views)
        items = viewed[mask]
        push(st.views, st.view_next, visitors[rows], items.astype(np.int32))
        self._record(visitors[rows], items, session[rows], VIEW)
        # the visit may end in buying the last item viewed
        last = viewed[np.arange(m), n_views - 1]
        held = np.concatenate([st.purchases[visitors], st.cart[visitors]], axis=1)
        comp = self._complement_to(held, last)
        q = (
            sigmoid(
                c.purchase_logit - pop.price_sensitivity[visitors] * self._log_price[last] + c.complement_boost * comp
            )
            * self.stock.available[last]
        )
        u = rng.random((2, m))
        buy = u[0] < c.organic_purchase * q
        # or it may leave the item in the cart, to be bought at a later visit (or dropped)
        keep = ~buy & (u[1] < c.cart_rate * q)
        self._add_to_cart(visitors[keep], last[keep], session[keep])
        self._purchase(visitors[buy], last[buy], session[buy], rng=rng)

    def _complement_to(self, held, items):
        """(m,) complement weight of ``items (m,)`` to what each customer holds ``(m, R)``."""
        cat = self.catalog
        ht = np.where(held >= 0, cat.product_type[np.maximum(held, 0)], -1)
        w = cat.complement[np.maximum(ht, 0), cat.product_type[items][:, None]]
        return np.where(ht >= 0, w, 0.0).max(axis=1) if held.shape[1] else np.zeros(len(items))

    # ---- state changes -------------------------------------------------------------------------
    def _purchase(self, customers, items, sessions, rng=None):
        """Record purchases; with ``rng``, each may pull in a complement bought in the same visit."""
        if len(items) == 0:
            return
        c, cat, st = self.config, self.catalog, self.state
        items = np.asarray(items, np.int64)
        push(st.purchases, st.purchase_next, customers, items.astype(np.int32), st.purchase_day, self.day)
        self.stock.take(items)
        np.add.at(st.revenue, customers, cat.price[items])
        np.add.at(st.margin, customers, cat.margin[items])
        if 0 <= self.day < c.ltv_horizon_days:
            np.add.at(st.ltv, customers, cat.margin[items] * c.daily_discount**self.day)
        np.add.at(self._purchases_today, customers, 1)
        col = self._consumable_column[cat.product_type[items]]
        cons = col >= 0
        if cons.any():  # the next replenishment of the type: a noisy draw around the customer's cycle
            who, col = customers[cons], col[cons]
            z = self._interval_rng.standard_normal(len(who))
            days = np.rint(self.population.reorder_cycle[who, col] * np.exp(c.reorder_noise * z))
            st.last_consumable[who, col] = items[cons]
            st.due_day[who, col] = np.minimum(self.day + np.maximum(days, 1), NOT_DUE)
        st.gateway[customers[cat.gateway[items]]] = True
        self._bought_today[customers] = True
        k = self._kpi
        k.purchases += len(items)
        k.revenue += float(cat.price[items].sum())
        k.margin += float(cat.margin[items].sum())
        self._record(customers, items, sessions, PURCHASE)
        if rng is None:
            return
        t = cat.product_type[items]
        pull = self._has_complement[t] & (rng.random(len(items)) < c.complement_purchase)
        if not pull.any():
            return
        tp = t[pull]
        u_type = np.searchsorted(self._comp_cdf, tp + rng.random(len(tp))) - tp * cat.n_types
        u_type = np.clip(u_type, 0, cat.n_types - 1)
        # the customer picks the complement they like best among a few items of that type
        who = customers[pull]
        pool = cat.random_item_of_type(
            np.repeat(u_type, COMPLEMENT_POOL), rng.random(len(tp) * COMPLEMENT_POOL)
        ).reshape(len(tp), COMPLEMENT_POOL)
        taste = np.einsum("md,mkd->mk", self.population.preference[who], cat.latent[pool], dtype=float)
        score = (
            self._appeal(pool)
            + taste
            - self.population.price_sensitivity[who][:, None] * self._log_price[pool]
            + rng.gumbel(size=pool.shape)
        )
        extra = pool[np.arange(len(tp)), np.argmax(score, axis=1)]
        ok = self.stock.available[extra]
        self._purchase(customers[pull][ok], extra[ok], sessions[pull][ok])

    def _add_to_cart(self, customers, items, sessions):
        """Put items in carts; a full cart drops its oldest entry. A customer adding several
        items in one batch gets them one after the other."""
        if len(items) == 0:
            return
        st = self.state
        order = np.argsort(customers, kind="stable")
        customers, items, sessions = customers[order], items[order], sessions[order]
        first = np.r_[True, customers[1:] != customers[:-1]]
        occ = np.arange(len(customers)) - np.maximum.accumulate(np.where(first, np.arange(len(customers)), 0))
        for r in range(int(occ.max()) + 1):
            sel = occ == r
            who, what = customers[sel], items[sel]
            free = st.cart[who] < 0
            slot = np.where(free.any(axis=1), np.argmax(free, axis=1), np.argmin(st.cart_day[who], axis=1))
            st.cart[who, slot] = what
            st.cart_day[who, slot] = self.day
        self._record(customers, items, sessions, CART)
