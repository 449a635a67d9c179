"""Filling carousel slots: sequential epsilon-greedy sampling without replacement, with exact
conditional and marginal propensities (a dynamic programme over ranks).

Details: docs/policies.md, "Filling slots with exact propensities (`policies/slate.py`)".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from ..errors import ValidationError

_CACHE_MAX_CELLS = 20_000  # cache tables up to 160 KB each; larger ones are computed per call


@lru_cache(maxsize=256)
def _rank_slot_marginals_cached(n: int, eps: tuple[float, ...]) -> np.ndarray:
    return _rank_slot_marginals(n, eps)


def _rank_slot_marginals(n: int, eps: tuple[float, ...]) -> np.ndarray:
    n_slots = len(eps)
    out = np.zeros((n, n_slots))
    # State (t, c): ranks 0..t-1 are all shown, rank t is not, and c further shown items
    # form a uniformly random c-subset of ranks t+1..n-1 (random picks are exchangeable).
    states: dict[tuple[int, int], float] = {(0, 0): 1.0}
    for k in range(n_slots):
        e = eps[k]
        remaining = n - k
        point = np.zeros(n)
        ramp = np.zeros(n + 1)  # difference array for "every rank > t gets the same mass"
        nxt: dict[tuple[int, int], float] = {}
        for (t, c), p in states.items():
            m = n - t - 1  # ranks after t
            p_top = (1.0 - e) + e / remaining  # rank t: greedy pick, or drawn uniformly
            point[t] += p * p_top
            if m > 0 and c < m:
                each = p * e / remaining * (1.0 - c / m)
                ramp[t + 1] += each
                ramp[n] -= each
                key = (t, c + 1)
                nxt[key] = nxt.get(key, 0.0) + p * e * (remaining - 1) / remaining
            # rank t taken: the fully-shown prefix grows over the run of shown ranks after it
            at_least = 1.0  # P(run length >= l)
            for run in range(c + 1):
                at_least_next = at_least * (c - run) / (m - run) if run < c else 0.0
                p_run = at_least - at_least_next
                if p_run > 0.0:
                    t2 = t + 1 + run
                    if t2 < n:
                        key = (t2, c - run)
                        nxt[key] = nxt.get(key, 0.0) + p * p_top * p_run
                at_least = at_least_next
                if at_least == 0.0:
                    break
        out[:, k] = point + np.cumsum(ramp[:n])
        states = nxt
    out.setflags(write=False)
    return out


def rank_slot_marginals(n: int, epsilon) -> np.ndarray:
    """Exact ``M[r, k]`` = P(the item ranked ``r`` is shown in slot ``k``).

    For per-slot epsilon-greedy filling without replacement over a strict ranking of ``n``
    candidates; ``epsilon`` has one rate per slot. Columns sum to 1, rows to at most 1.
    The result is cached and read-only.
    """
    eps = tuple(float(e) for e in np.asarray(epsilon, dtype=float).ravel())
    if len(eps) > n:
        raise ValidationError(f"cannot fill {len(eps)} slots from {n} candidates", "slots")
    if n * len(eps) > _CACHE_MAX_CELLS:
        return _rank_slot_marginals(int(n), eps)
    return _rank_slot_marginals_cached(int(n), eps)


def tie_averaged(by_rank: np.ndarray, sorted_scores: np.ndarray) -> np.ndarray:
    """``(D, n, K)``: for each row of ``sorted_scores`` ``(D, n)`` (descending), the rank
    marginals ``by_rank`` ``(n, K)`` with the rows of each run of equal scores replaced by
    their mean. Tied candidates are exchangeable when ties split evenly, so each gets the
    average over the ranks its group occupies. A row without ties is ``by_rank`` bit for bit."""
    D, n = sorted_scores.shape
    out = np.broadcast_to(by_rank, (D, n, by_rank.shape[1])).copy()
    new_group = np.ones((D, n), dtype=bool)
    new_group[:, 1:] = sorted_scores[:, 1:] != sorted_scores[:, :-1]
    if new_group.all():
        return out
    flat = out.reshape(D * n, -1)
    starts = np.flatnonzero(new_group.ravel())  # every row starts a group: none spans two rows
    sizes = np.diff(np.r_[starts, D * n])
    flat[:] = np.repeat(np.add.reduceat(flat, starts, axis=0) / sizes[:, None], sizes, axis=0)
    return out


@dataclass(frozen=True)
class SlateSample:
    """One sampled slate: candidate positions per slot and the probabilities logged with it."""

    index: np.ndarray  # (K,) positions into the candidate array
    propensity: np.ndarray  # (K,) conditional P(item | earlier slots)
    marginal: np.ndarray  # (K,) P(slot k holds this item)
    joint: float  # product of the conditionals (may underflow to 0 for long slates)
    log_joint: float  # sum of the log conditionals
    marginal_draws: int = 0  # Monte-Carlo draws behind ``marginal``; 0 when exact
    served: np.ndarray | None = None  # a sampled ranking's scores: what complete() needs, what explanations split

    @property
    def pending(self) -> bool:
        """Whether Monte-Carlo values were left for later (NaN): a :meth:`SlateDistribution.draw`."""
        return bool(np.isnan(self.log_joint) or np.isnan(self.marginal).any() or np.isnan(self.propensity).any())


class _Ranking(NamedTuple):
    """Candidates in descending score order (ties in candidate order), each sorted position's
    tie group, and the groups' sizes."""

    order: np.ndarray
    group: np.ndarray
    sizes: np.ndarray


@runtime_checkable
class SlateDistribution(Protocol):
    """What :meth:`Policy.distribution <banditrec.policies.Policy.distribution>` returns: the
    distribution of the slates a policy would show for one request, over ``n_candidates``
    candidates and ``n_slots`` slots. The engine and :func:`sample_slates` sample it; off-policy
    evaluation reads its marginals and conditionals; studies that rank without exploring take
    :meth:`greedy`.

    Implemented by :class:`EpsilonGreedySlate`, :class:`~banditrec.policies.sampling.SequentialSlate`
    (and its :class:`~banditrec.policies.sampling.PlackettLuceSlate`),
    :class:`~banditrec.policies.sampling.SampledRankingSlate` and
    :class:`~banditrec.policies.vw.VWSlate`.
    """

    @property
    def n_candidates(self) -> int:
        """The number of candidates ``n``."""
        ...

    @property
    def n_slots(self) -> int:
        """The number of slots ``K`` a slate fills."""
        ...

    def sample(self, rng: np.random.Generator, marginals: bool = True) -> SlateSample:
        """One slate drawn with ``rng`` (its only source of randomness), with the probabilities
        logged with it; ``marginals=False`` may leave the marginals NaN (simulations that never
        log them)."""
        ...

    def marginals(self) -> np.ndarray:
        """``(n, K)``: P(slot k holds candidate j)."""
        ...

    def draw(self, rng: np.random.Generator) -> SlateSample:
        """The slate :meth:`sample` would draw from ``rng`` (the same draws), with only what is
        exact and cheap: Monte-Carlo propensities are NaN, left for :meth:`complete`. What the
        request path logs."""
        ...

    def complete(self, sample: SlateSample) -> SlateSample:
        """``sample`` (from :meth:`draw`) with its NaN propensities filled in: exactly what
        :meth:`sample` returns for the same draws. Must run before the policy's model changes."""
        ...

    def conditionals(self, index) -> np.ndarray:
        """``(K,)``: P(slot k holds ``index[k]`` | ``index[:k]`` in the earlier slots)."""
        ...

    def greedy(self) -> SlateDistribution:
        """The distribution without its uniform exploration: epsilon-greedy over fixed scores
        becomes the deterministic ranking (epsilon 0 in every slot). A distribution whose
        randomness is the policy's model (posterior draws, Plackett-Luce, Vowpal Wabbit's
        sampling, type-capped sequential filling) returns itself."""
        ...


class EpsilonGreedySlate:
    """The slate distribution of a score-based policy over one request's candidates.

    Parameters
    ----------
    scores : (n,) float
        Higher is better. Ties split the greedy share evenly.
    epsilon : (K,) float in [0, 1]
        Exploration rate of each slot; 1 everywhere is uniform sampling without replacement.
    """

    def __init__(self, scores, epsilon):
        scores = np.asarray(scores, dtype=float)
        eps = np.asarray(epsilon, dtype=float)
        if scores.ndim != 1 or eps.ndim != 1:
            raise ValidationError("scores and epsilon must be 1-D", "scores")
        if not np.isfinite(scores).all():
            raise ValidationError("policy scores must be finite", "scores")
        if len(eps) and not (eps.min() >= 0.0 and eps.max() <= 1.0):  # NaN fails both comparisons
            raise ValidationError(f"epsilon must be in [0, 1], got {eps.tolist()}", "epsilon")
        if len(eps) > len(scores):
            raise ValidationError(f"cannot fill {len(eps)} slots from {len(scores)} candidates", "slots")
        self.scores = scores
        self.epsilon = eps
        self._order = None  # candidates by descending score (stable), and whether two tie
        self._tied = None
        self._rank = None

    @property
    def n_candidates(self) -> int:
        return len(self.scores)

    @property
    def n_slots(self) -> int:
        return len(self.epsilon)

    def greedy(self) -> EpsilonGreedySlate:
        """The same scores with no exploration in any slot: the ranking itself (ties still
        split evenly)."""
        return EpsilonGreedySlate(self.scores, np.zeros(self.n_slots))

    def slot_pmf(self, shown: np.ndarray, k: int) -> np.ndarray:
        """P(candidate | earlier slots) for slot ``k``; ``shown`` is a boolean mask of shown ones."""
        avail = ~shown
        n_left = self.n_candidates - k
        masked = np.where(avail, self.scores, -np.inf)
        top = avail & (self.scores == masked.max())
        e = self.epsilon[k]
        return (e / n_left) * avail + ((1.0 - e) / top.sum()) * top

    def _sorted(self) -> np.ndarray:
        """Candidates in descending score order (ties in candidate order); sets ``_tied``."""
        if self._order is None:
            order = np.argsort(-self.scores, kind="stable")
            s = self.scores[order]
            self._tied = bool((s[1:] == s[:-1]).any())
            self._order = order
        return self._order

    def _ranking(self) -> _Ranking:
        """Candidates in descending score order, each sorted position's tie group, group sizes."""
        if self._rank is None:
            order = self._sorted()
            s = self.scores[order]
            new_group = np.r_[True, s[1:] != s[:-1]]
            group = np.cumsum(new_group) - 1
            sizes = np.bincount(group)
            self._rank = _Ranking(order, group, sizes)
        return self._rank

    def sample(self, rng: np.random.Generator, marginals: bool = True) -> SlateSample:
        """Draw a slate; O(n log n) once for the ranking, then O(1) per slot (ties aside).

        Each slot uses one uniform draw ``u``: ``u < eps_k`` picks uniformly among the
        candidates not yet shown, otherwise uniformly among the best remaining tie group. The
        logged propensity is the mixture probability of the item, as in :meth:`slot_pmf`.

        Without ties (the served case: real-valued scores) a shorter path does the same
        arithmetic on the same draws -- same slate, propensities and marginals, bit for bit
        (``tests/banditrec/policies/test_sampling.py`` checks it against the general path): the greedy pick is
        the best unshown rank, and the swap-removed list of unshown candidates is kept as its
        few changed cells over the identity instead of as lists of length n.
        """
        return self._sample_u(rng.random(self.n_slots).tolist())

    def draw(self, rng: np.random.Generator) -> SlateSample:
        """:meth:`sample`: every propensity here is exact and cheap."""
        return self.sample(rng)

    def complete(self, sample: SlateSample) -> SlateSample:
        """``sample`` itself: nothing is left for later."""
        return sample

    def _sample_u(self, uniforms: list) -> SlateSample:
        """:meth:`sample` given its ``n_slots`` uniform draws."""
        order = self._sorted()
        if not self._tied:
            return self._sample_strict(uniforms, order)
        ranking = self._ranking()
        return self._sample_general(uniforms, ranking.order, ranking.group, ranking.sizes)

    @property
    def tied(self) -> bool:
        """Whether two candidates tie in score."""
        self._sorted()
        return self._tied

    def _sample_strict(self, uniforms: list, order_a: np.ndarray) -> SlateSample:
        """:meth:`sample` when no two scores tie (every tie group has one candidate)."""
        n, n_slots = self.n_candidates, self.n_slots
        remaining: dict[int, int] = {}  # position -> candidate, where it differs from the identity
        where: dict[int, int] = {}  # candidate -> position, likewise
        shown: set[int] = set()
        top = 0  # first rank not yet shown
        index, prop, rank_of = [0] * n_slots, [0.0] * n_slots, [0] * n_slots
        eps = self.epsilon.tolist()
        greedy_ranks = None  # rank of each candidate, built only if an exploring slot needs it
        for k, u in enumerate(uniforms):
            e, left = eps[k], n - k
            while int(order_a[top]) in shown:
                top += 1
            if u < e:
                j = min(int(u / e * left), left - 1)
                i = remaining.get(j, j)
                if greedy_ranks is None:
                    greedy_ranks = np.empty(n, dtype=np.int64)
                    greedy_ranks[order_a] = np.arange(n)
                r = int(greedy_ranks[i])
            else:
                r, i = top, int(order_a[top])
            prop[k] = e / left + ((1.0 - e) if r == top else 0.0)
            index[k], rank_of[k] = i, r
            shown.add(i)
            last_pos = left - 1  # swap-remove i: the last unshown candidate takes its position
            last = remaining.get(last_pos, last_pos)
            if last != i:
                pos = where.get(i, i)
                remaining[pos] = last
                where[last] = pos
        index_arr = np.array(index, dtype=np.int64)
        prop_arr = np.array(prop)
        table = (
            _rank_slot_marginals_cached(n, tuple(eps))
            if n * n_slots <= _CACHE_MAX_CELLS
            else _rank_slot_marginals(n, tuple(eps))
        )  # what rank_slot_marginals returns, without re-checking
        marg = table.ravel().take([r * n_slots + k for k, r in enumerate(rank_of)])
        log_joint = float(np.log(prop_arr).sum())
        return SlateSample(
            index=index_arr, propensity=prop_arr, marginal=marg, joint=float(np.exp(log_joint)), log_joint=log_joint
        )

    def _sample_general(self, uniforms: list, order_a, group_a, sizes_a) -> SlateSample:
        """:meth:`sample` with ties: greedy picks are uniform within the best unshown tie group."""
        n, n_slots = self.n_candidates, self.n_slots
        group_of_a = np.empty(n, dtype=np.int64)
        group_of_a[order_a] = group_a
        order, group, sizes, group_of = order_a.tolist(), group_a.tolist(), sizes_a.tolist(), group_of_a.tolist()
        remaining = list(range(n))  # candidates not shown, with swap-remove
        where = list(range(n))
        shown = [False] * n
        shown_in_group = [0] * len(sizes)
        top = 0  # first sorted position not yet shown
        index, prop = [0] * n_slots, [0.0] * n_slots
        eps = self.epsilon.tolist()
        for k, u in enumerate(uniforms):
            e, left = eps[k], n - k
            while shown[order[top]]:
                top += 1
            g = group[top]
            n_top = sizes[g] - shown_in_group[g]
            if u < e:
                i = remaining[min(int(u / e * left), left - 1)]
            else:
                pick = min(int((u - e) / (1.0 - e) * n_top), n_top - 1)
                r = top
                while True:  # the pick-th unshown candidate of the top tie group
                    if not shown[order[r]]:
                        if pick == 0:
                            break
                        pick -= 1
                    r += 1
                i = order[r]
            prop[k] = e / left + ((1.0 - e) / n_top if group_of[i] == g else 0.0)
            index[k] = i
            shown[i] = True
            shown_in_group[group_of[i]] += 1
            last = remaining.pop()  # swap-remove i from remaining
            if last != i:
                remaining[where[i]] = last
                where[last] = where[i]
        index_arr = np.array(index, dtype=np.int64)
        prop_arr = np.array(prop)
        marg = self.marginals()[index_arr, np.arange(n_slots)]
        log_joint = float(np.log(prop_arr).sum())
        return SlateSample(
            index=index_arr, propensity=prop_arr, marginal=marg, joint=float(np.exp(log_joint)), log_joint=log_joint
        )

    def conditionals(self, index) -> np.ndarray:
        """Conditional propensities of a given slate (candidate positions per slot)."""
        index = np.asarray(index, dtype=np.int64)
        shown = np.zeros(self.n_candidates, dtype=bool)
        out = np.empty(len(index))
        for k, i in enumerate(index):
            out[k] = self.slot_pmf(shown, k)[i]
            shown[i] = True
        return out

    def marginals(self) -> np.ndarray:
        """Exact (n, K) matrix of P(slot k holds candidate j).

        Items tied in score are exchangeable, so each gets the mean of the rank marginals
        over the ranks its tie group occupies.
        """
        ranks = rank_slot_marginals(self.n_candidates, self.epsilon)
        ranking = self._ranking()
        order, sizes = ranking.order, ranking.sizes
        by_rank = ranks if len(sizes) == len(order) else tie_averaged(ranks, self.scores[order][None, :])[0]
        out = np.empty_like(by_rank)
        out[order] = by_rank
        return out


def sample_slates(
    dists: list[SlateDistribution], rng: np.random.Generator, *, defer: bool = False
) -> list[SlateSample]:
    """``[d.sample(rng) for d in dists]`` (``defer``: ``d.draw(rng)``), the same samples from
    the same draws, with the untied :class:`EpsilonGreedySlate` s of one shape sampled
    together (a batch of decisions).

    Every epsilon-greedy slate takes its ``n_slots`` uniforms from ``rng`` in list order, so
    the whole batch's uniforms are one draw, handed out in that order (a Generator's doubles
    do not depend on how a run of them is split into calls); slates with ties, and any batch
    holding another kind of distribution, take their own path one by one. Within a shape
    ``(n, epsilon)``, each slot is one vectorised step over the group: the same arithmetic as
    :meth:`EpsilonGreedySlate.sample` on the same numbers, so the same slates, propensities
    and marginals bit for bit (``tests/banditrec/policies/test_sampling.py``).
    """
    slates = [d for d in dists if type(d) is EpsilonGreedySlate]
    if len(slates) < len(dists):
        return [d.draw(rng) if defer else d.sample(rng) for d in dists]
    sizes = [d.n_slots for d in slates]
    flat = rng.random(sum(sizes))
    starts = np.concatenate(([0], np.cumsum(sizes))).tolist()
    out: list = [None] * len(dists)
    groups: dict[tuple, list[int]] = {}
    for j, d in enumerate(slates):
        if d.tied:
            out[j] = d._sample_u(flat[starts[j] : starts[j + 1]].tolist())
        else:
            groups.setdefault((d.n_candidates, tuple(d.epsilon.tolist())), []).append(j)
    for (_n, eps), members in groups.items():
        if len(members) == 1:
            j = members[0]
            out[j] = slates[j]._sample_u(flat[starts[j] : starts[j + 1]].tolist())
            continue
        order = np.stack([slates[j]._sorted() for j in members])
        u = np.stack([flat[starts[j] : starts[j + 1]] for j in members])
        for j, sample in zip(members, _sample_strict_group(order, u, eps)):
            out[j] = sample
    return out


def _sample_strict_group(order: np.ndarray, u: np.ndarray, eps: tuple) -> list[SlateSample]:
    """:meth:`EpsilonGreedySlate._sample_strict` for B slates at once: ``order`` (B, n) each
    slate's candidates by descending score, ``u`` (B, K) their uniforms, one epsilon per slot.
    The swap-removed lists of unshown candidates are rows of one (B, n) array."""
    B, n = order.shape
    K = len(eps)
    rows = np.arange(B)
    rank = np.empty_like(order)
    rank[rows[:, None], order] = np.arange(n)
    remaining = np.tile(np.arange(n), (B, 1))
    where = remaining.copy()
    shown = np.zeros((B, n), dtype=bool)
    top = np.zeros(B, dtype=np.int64)
    index = np.empty((B, K), dtype=np.int64)
    rank_of = np.empty((B, K), dtype=np.int64)
    prop = np.empty((B, K))
    for k, e in enumerate(eps):
        left = n - k
        while True:  # the first rank not yet shown (at most k steps)
            stale = shown[rows, order[rows, top]]
            if not stale.any():
                break
            top += stale
        uk = u[:, k]
        explore = uk < e
        i = order[rows, top]
        if explore.any():
            with np.errstate(divide="ignore", invalid="ignore"):  # e == 0 explores nowhere
                j = np.minimum((uk / e * left), left - 1)
            j = np.where(explore, j, 0).astype(np.int64)  # int() of a non-negative: truncation
            i = np.where(explore, remaining[rows, j], i)
        r = rank[rows, i]
        prop[:, k] = e / left + np.where(r == top, 1.0 - e, 0.0)
        index[:, k], rank_of[:, k] = i, r
        shown[rows, i] = True
        last = remaining[:, left - 1]  # swap-remove i: the last unshown candidate takes its place
        pos = where[rows, i]
        remaining[rows, pos] = last
        where[rows, last] = pos
    table = _rank_slot_marginals_cached(n, eps) if n * K <= _CACHE_MAX_CELLS else _rank_slot_marginals(n, eps)
    marg = table[rank_of, np.arange(K)]
    logs = np.log(prop)
    out = []
    for b in range(B):
        log_joint = float(logs[b].sum())
        out.append(
            SlateSample(
                index=index[b],
                propensity=prop[b],
                marginal=marg[b],
                joint=float(np.exp(log_joint)),
                log_joint=log_joint,
            )
        )
    return out
