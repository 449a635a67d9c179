"""Slate distributions whose marginals have no small closed form (sequential, Plackett-Luce,
Thompson-ranked): Rao-Blackwellised Monte Carlo marginals, honest standard errors for rare
cells, and a Monte Carlo stream seeded from the distribution's inputs.

Details: docs/policies.md, "Monte Carlo slates (`policies/sampling.py`)".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import numpy as np

from ..errors import ValidationError
from .slate import EpsilonGreedySlate, SlateSample, rank_slot_marginals, tie_averaged

DEFAULT_DRAWS = 256
RECIPE_MAGIC = b"BRSEQ1"  # a SequentialSlate recipe (SequentialSlate.recipe)


def honest_se(mean: np.ndarray, sd: np.ndarray, n: int, lo, hi) -> np.ndarray:
    """Standard error of Monte-Carlo means of ``n`` terms each in ``[lo, hi]`` (broadcast), given
    their ``mean`` and ``sd`` (ddof=1): the population standard deviation of the terms with two
    pseudo-terms at ``lo`` and two at ``hi`` added, over ``sqrt(n)`` (docs/policies.md, "Monte
    Carlo slates"). At most ``(hi - lo) / (2 sqrt(n))``, as the spread of values in ``[lo, hi]`` is."""
    mean, sd = np.asarray(mean, dtype=float), np.asarray(sd, dtype=float)
    lo, hi = np.broadcast_to(lo, mean.shape), np.broadcast_to(hi, mean.shape)
    center = (n * mean + 2.0 * (lo + hi)) / (n + 4.0)
    ss = max(n - 1, 0) * sd * sd + n * (mean - center) ** 2 + 2.0 * (lo - center) ** 2 + 2.0 * (hi - center) ** 2
    return np.sqrt(np.maximum(ss, 0.0) / (n + 4.0) / n)


SEED_GRID_BITS = 30


def seed_grid(a) -> np.ndarray:
    """``a`` (floats) rounded to ``SEED_GRID_BITS`` significant bits, as int64 (mantissa,
    exponent) pairs, with magnitudes under ``2**-40`` of the largest taken as 0: what a
    Monte-Carlo seed hashes instead of the raw bytes, so that values which differ only in their
    last bits, as one computation does on two CPUs or BLAS kernels, give the same stream
    (unless a value sits that close to a rounding boundary: a chance of 2^-22 per value and
    ulp of difference)."""
    a = np.asarray(a, dtype=float)
    top = float(np.abs(a).max(initial=0.0))
    a = np.where(np.abs(a) < top * 2.0**-40, 0.0, a)  # rounding noise around 0, e.g. after cancellation
    m, e = np.frexp(a)
    q = np.rint(m * 2.0**SEED_GRID_BITS).astype(np.int64)
    carry = np.abs(q) == 2**SEED_GRID_BITS  # 1 - ulp rounds up to 1: the same point as 1
    return np.stack([np.where(carry, q // 2, q), e + carry])


def _content_seed(*arrays) -> int:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return int.from_bytes(h.digest(), "little")


def _check_epsilon(epsilon, n: int) -> np.ndarray:
    eps = np.asarray(epsilon, dtype=float)
    if eps.ndim != 1 or not np.isfinite(eps).all() or ((eps < 0) | (eps > 1)).any():
        raise ValidationError(f"epsilon must be a 1-D array in [0, 1], got {np.asarray(epsilon).tolist()}", "epsilon")
    if len(eps) > n:
        raise ValidationError(f"cannot fill {len(eps)} slots from {n} candidates", "slots")
    return eps


def _check_draws(draws) -> int:
    if isinstance(draws, bool) or not isinstance(draws, int | np.integer) or draws < 2:
        raise ValidationError(f"draws must be an integer >= 2, got {draws!r}", "draws")
    return int(draws)


def _lift_onto(mean: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """``mean`` with every column that has a cell below ``bound`` lifted onto the bounds (see
    :meth:`SequentialSlate.marginals`); other columns are returned as they are, bit for bit."""
    low = (mean < bound).any(axis=0)
    if not low.any():
        return mean
    out = mean.copy()
    b = bound[:, low]
    excess = np.maximum(mean[:, low] - b, 0.0)
    total = excess.sum(axis=0)  # > 0: the bounds of a column sum to less than its mass, 1
    scale = np.where(total > 0, np.maximum(1.0 - b.sum(axis=0), 0.0) / np.where(total > 0, total, 1.0), 0.0)
    out[:, low] = b + excess * scale
    return out


def with_marginals(dist, index: np.ndarray, cond: np.ndarray) -> SlateSample:
    """The slate ``index`` with its conditionals ``cond`` and ``dist``'s Monte-Carlo marginals
    of its slots (:func:`slate_sample`): what ``complete`` gives for a slate whose conditionals
    were exact at decision time."""
    marg = dist.marginals()[index, np.arange(len(index))]
    return slate_sample(index, cond, marg, draws=dist.draws, marginal_draws=dist.marginal_draws)


def slate_sample(
    index: np.ndarray, cond: np.ndarray, marginal: np.ndarray | None, *, draws: int, marginal_draws: int
) -> SlateSample:
    """A sampled slate with exact conditionals and Monte-Carlo marginals (``None``: NaN, for
    simulations that never log or divide by them).

    Positivity guard: an item the policy just showed has a positive probability; if no
    sampled prefix allowed it in its slot (it was in every one, or a type cap was met on every
    draw), its own path's conditional over ``draws + 1`` paths is logged rather than an
    impossible 0. That value is not unbiased; it is rare, and only ever for such cells.
    """
    log_joint = float(np.log(cond).sum())
    if marginal is None:
        marg, marginal_draws = np.full(len(index), np.nan), 0
    else:
        marg = np.array(marginal, dtype=float)
        zero = marg <= 0
        marg[zero] = cond[zero] / (draws + 1)
    return SlateSample(
        index=index,
        propensity=cond,
        marginal=marg,
        joint=float(np.exp(log_joint)),
        log_joint=log_joint,
        marginal_draws=marginal_draws,
    )


class SequentialSlate:
    """Sequential slot filling without replacement, optionally capped per product type.

    Parameters
    ----------
    values : (n,) float
        ``kind="greedy"``: scores (higher is better). ``kind="weights"``: non-negative weights.
    epsilon : (K,) float in [0, 1]
        Uniform-exploration share of each slot (the serving floor included).
    types : (n,) int, optional
        Product type of each candidate; with ``max_per_type = M > 0`` a slate shows at most M
        candidates of any type.
    draws : int
        Prefixes sampled for the Monte-Carlo marginals of slots 1..K-1.
    seed : int, optional
        Seed of the Monte-Carlo stream; by default derived from the inputs.
    """

    types: np.ndarray | None

    def __init__(
        self,
        values,
        epsilon,
        *,
        kind: str = "weights",
        types=None,
        max_per_type: int = 0,
        draws: int = DEFAULT_DRAWS,
        seed: int | None = None,
    ):
        values = np.asarray(values, dtype=float)
        if values.ndim != 1 or len(values) == 0:
            raise ValidationError(f"values must be a non-empty 1-D array, got shape {values.shape}", "scores")
        if kind not in ("greedy", "weights"):
            raise ValidationError(f"kind must be 'greedy' or 'weights', got {kind!r}", "kind")
        if not np.isfinite(values).all():
            raise ValidationError("policy scores/weights must be finite", "scores")
        if kind == "weights" and (values < 0).any():
            i = int(np.argmax(values < 0))
            raise ValidationError(f"weights must be >= 0, found {float(values[i])!r} at candidate {i}", "weights")
        self.values = values
        self.kind = kind
        self.epsilon = _check_epsilon(epsilon, len(values))
        self.draws = _check_draws(draws)
        if isinstance(max_per_type, bool) or not isinstance(max_per_type, int | np.integer) or max_per_type < 0:
            raise ValidationError(f"max_per_type must be an integer >= 0, got {max_per_type!r}", "max_per_type")
        self.max_per_type = int(max_per_type)
        if self.max_per_type:
            if types is None:
                raise ValidationError("a per-type cap needs each candidate's product type", "types")
            types = np.asarray(types)
            if types.shape != values.shape or not np.issubdtype(types.dtype, np.integer) or (types < 0).any():
                raise ValidationError(
                    f"types must be non-negative integers, one per candidate ({len(values)})", "types"
                )
            _, self.types = np.unique(types, return_inverse=True)
            self.n_types = int(self.types.max()) + 1
            if self.n_types * self.max_per_type < len(self.epsilon):
                raise ValidationError(
                    f"cannot fill {len(self.epsilon)} slots with at most {self.max_per_type} per product type "
                    f"from {self.n_types} types",
                    "max_per_type",
                )
        else:
            self.types, self.n_types = None, 0
        self._seed = self._seed_given = None if seed is None else int(seed)
        self._marg: np.ndarray | None = None
        self._se: np.ndarray | None = None

    @property
    def seed(self) -> int:
        """Seed of the Monte-Carlo stream: the one given, else a hash of the inputs (computed
        when first needed: a decision that defers its marginals never needs it)."""
        if self._seed is None:
            self._seed = _content_seed(
                seed_grid(self.values),
                self.epsilon,
                np.array([self.max_per_type, self.draws]),
                np.zeros(0) if self.types is None else self.types,
                np.frombuffer(self.kind.encode(), np.uint8),
            )
        return self._seed

    @property
    def n_candidates(self) -> int:
        return len(self.values)

    @property
    def n_slots(self) -> int:
        return len(self.epsilon)

    @property
    def marginal_draws(self) -> int:
        """Monte-Carlo prefixes behind the marginals; 0 when they are exact (one slot)."""
        return self.draws if self.n_slots > 1 else 0

    def greedy(self) -> SequentialSlate:
        """Itself (see :meth:`SlateDistribution.greedy <banditrec.policies.slate.SlateDistribution.greedy>`):
        Plackett-Luce sampling is the policy's model; a type-capped score ranking
        (``kind="greedy"``) keeps its exploration too, as the sensitivity study always ranked it."""
        return self

    # ---- the one vectorised step ----------------------------------------------------------
    def _pmf(self, shown: np.ndarray, counts: np.ndarray | None, k: int) -> np.ndarray:
        """(N, n) slot-k probabilities given N prefixes (``shown`` (N, n), ``counts`` (N, T))."""
        eligible = ~shown
        if counts is not None:
            eligible &= counts[:, self.types] < self.max_per_type
        n_elig = eligible.sum(axis=1, keepdims=True)
        if (n_elig == 0).any():
            raise ValidationError(f"no candidate is eligible for slot {k} under the per-type cap", "max_per_type")
        uniform = eligible / n_elig
        if self.kind == "greedy":
            masked = np.where(eligible, self.values, -np.inf)
            top = eligible & (self.values == masked.max(axis=1, keepdims=True))
            g = top / top.sum(axis=1, keepdims=True)
        else:
            w = np.where(eligible, self.values, 0.0)
            total = w.sum(axis=1, keepdims=True)
            g = np.where(total > 0, w / np.where(total > 0, total, 1.0), uniform)
        e = self.epsilon[k]
        return (1.0 - e) * g + e * uniform

    def _run(self, rng: np.random.Generator, n_paths: int, collect: bool):
        """Sample ``n_paths`` slates; returns (index (N, K), conditional (N, K), pmf mean/std per slot)."""
        n, K = self.n_candidates, self.n_slots
        shown = np.zeros((n_paths, n), dtype=bool)
        counts = np.zeros((n_paths, self.n_types), dtype=np.int64) if self.max_per_type else None
        index = np.empty((n_paths, K), dtype=np.int64)
        cond = np.empty((n_paths, K))
        mean = np.empty((n, K)) if collect else None
        sd = np.empty((n, K)) if collect else None
        rows = np.arange(n_paths)
        for k in range(K):
            pmf = self._pmf(shown, counts, k)
            if collect:
                assert mean is not None and sd is not None  # allocated when collecting
                mean[:, k] = pmf.mean(axis=0)
                sd[:, k] = pmf.std(axis=0, ddof=1) if n_paths > 1 else 0.0
            cum = np.cumsum(pmf, axis=1)
            u = rng.random(n_paths) * cum[:, -1]
            pick = np.minimum((cum <= u[:, None]).sum(axis=1), n - 1)
            # rounding can land on a zero-probability tail item: step back to the last positive one
            bad = pmf[rows, pick] <= 0
            if bad.any():
                last_pos = n - 1 - np.argmax(pmf[:, ::-1] > 0, axis=1)
                pick = np.where(bad, last_pos, pick)
            index[:, k] = pick
            cond[:, k] = pmf[rows, pick]
            shown[rows, pick] = True
            if counts is not None:
                assert self.types is not None  # counted only under a per-type cap
                np.add.at(counts, (rows, self.types[pick]), 1)
        return index, cond, mean, sd

    # ---- the protocol ---------------------------------------------------------------------
    def _weights_moments(self, rng: np.random.Generator, n_paths: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation over sampled prefixes of every slot's probabilities, for
        uncapped weights, without materialising them: with ``R`` the (N, n) 0/1 matrix of items
        still available, ``W = R w`` and ``c`` each prefix's uniform share, the mean of
        ``R * ((1 - e) w / W + c)`` over prefixes is ``((1 - e) w * (R^T (1/W)) + R^T c) / N``,
        and likewise the second moment: matrix-vector products instead of (N, n) passes."""
        n, K = self.n_candidates, self.n_slots
        w = self.values
        avail = np.ones((n_paths, n))
        rows = np.arange(n_paths)
        mean, second = np.empty((n, K)), np.empty((n, K))
        for k in range(K):
            e, left = self.epsilon[k], n - k
            total = avail @ w
            z = total > 0
            inv = np.where(z, 1.0 / np.where(z, total, 1.0), 0.0)
            c = ((1.0 - e) * ~z + e) / left
            # the five per-prefix sums every moment needs, as one matrix product
            s_inv, s_c, s_inv2, s_invc, s_c2 = (avail.T @ np.stack([inv, c, inv * inv, inv * c, c * c], axis=1)).T
            mean[:, k] = ((1.0 - e) * w * s_inv + s_c) / n_paths
            second[:, k] = ((1.0 - e) ** 2 * w * w * s_inv2 + 2.0 * (1.0 - e) * w * s_invc + s_c2) / n_paths
            if k == K - 1:
                break
            p = avail * ((1.0 - e) * inv[:, None] * w[None, :] + c[:, None])
            cum = np.cumsum(p, axis=1)
            u = rng.random(n_paths) * cum[:, -1]
            pick = np.minimum((cum <= u[:, None]).sum(axis=1), n - 1)
            bad = p[rows, pick] <= 0
            if bad.any():
                pick = np.where(bad, n - 1 - np.argmax(p[:, ::-1] > 0, axis=1), pick)
            avail[rows, pick] = 0.0
        var = np.maximum(second - mean * mean, 0.0) * (n_paths / max(n_paths - 1, 1))
        return mean, np.sqrt(var)

    def marginals(self) -> np.ndarray:
        """(n, K) P(slot k holds candidate j): exact for slot 0, Rao-Blackwellised MC after.

        Without a type cap, a column with a cell below :meth:`marginal_bounds` (an item that
        was in every sampled prefix, say) is lifted onto the bounds: such cells become their
        bound and the column's other cells give up the lifted mass in proportion to their
        excess over their own bounds, so every cell stays at or above its bound and the
        column still sums to 1. Columns with no such cell are the plain average.
        """
        if self._marg is None:
            rng = np.random.default_rng(self.seed)
            if self.kind == "weights" and not self.max_per_type:
                mean, sd = self._weights_moments(rng, self.draws)
            else:
                _, _, mean, sd = self._run(rng, self.draws, collect=True)
            if not self.max_per_type and self.n_slots > 1:  # slot 0 is exact already
                mean[:, 1:] = _lift_onto(mean[:, 1:], self.marginal_bounds()[:, 1:])
            self._marg, self._se = mean, honest_se(mean, sd, self.draws, 0.0, 1.0)
            self._se[:, 0] = 0.0
            self._marg.setflags(write=False)
        return self._marg

    def marginal_bounds(self) -> np.ndarray:
        """(n, K) lower bounds on the true marginals, positive wherever ``epsilon`` is, for a
        slate without a type cap (zeros with one).

        ``P(j in slot k) >= P(j not in slots < k) * min_s P(j | prefix s)`` and
        ``P(j not in slots < k) >= (1 - M[j, 0]) * prod_{0<t<k} (1 - max_s P(j | prefix s))``,
        with ``M[j, 0]`` exact and the per-slot extremes over every prefix without ``j``: for
        weights, ``w_j`` over ``w_j`` plus the ``n - t - 1`` smallest (for the max) or largest
        (for the min) other weights (``1 / (n - t)`` where those are all 0), mixed with
        ``eps_t / (n - t)``; for the greedy kind 1 and 0 before mixing.
        """
        n, K = self.n_candidates, self.n_slots
        out = np.zeros((n, K))
        if self.max_per_type:
            return out
        eps = self.epsilon
        left = n - np.arange(K)  # candidates left at slot t
        if self.kind == "weights":
            w = self.values
            order = np.argsort(w, kind="stable")
            pos = np.empty(n, dtype=np.int64)
            pos[order] = np.arange(n)
            cum = np.r_[0.0, np.cumsum(w[order])]

            def smallest_others(m):  # (n, K): sum of the m[t] smallest weights other than j's
                m = np.broadcast_to(m, (n, K))
                own = pos[:, None] < m  # j is among the m smallest: take one more, minus w_j
                return np.where(own, cum[np.minimum(m + 1, n)] - w[:, None], cum[m])

            small = smallest_others(left - 1)
            large = cum[n] - w[:, None] - smallest_others(n - left)  # the left - 1 largest others
            with np.errstate(divide="ignore", invalid="ignore"):  # all weights left 0: uniform
                g_max = np.where(w[:, None] + small > 0, w[:, None] / (w[:, None] + small), 1.0 / left)
                g_min = np.where(w[:, None] + large > 0, w[:, None] / (w[:, None] + large), 1.0 / left)
        else:
            g_max, g_min = np.ones((n, K)), np.zeros((n, K))
        p_max = (1.0 - eps) * g_max + eps / left
        p_min = (1.0 - eps) * g_min + eps / left
        first = self._pmf(np.zeros((1, n), dtype=bool), None, 0)[0]  # slot 0, exact
        absent = np.cumprod(np.c_[1.0 - first, 1.0 - p_max[:, 1 : K - 1]], axis=1)  # P(j not in slots < k), k >= 1
        out[:, 0] = first
        out[:, 1:] = np.clip(absent, 0.0, 1.0) * p_min[:, 1:]
        return out

    def marginal_se(self) -> np.ndarray:
        """(n, K) standard error of :meth:`marginals` (0 for slot 0)."""
        self.marginals()
        assert self._se is not None  # marginals() computes it
        return self._se

    def conditionals(self, index) -> np.ndarray:
        """Exact conditional propensities of a given slate (candidate positions per slot)."""
        index = np.asarray(index, dtype=np.int64)
        if index.shape != (self.n_slots,):
            raise ValidationError(f"a slate has {self.n_slots} positions, got shape {index.shape}", "index")
        shown = np.zeros((1, self.n_candidates), dtype=bool)
        counts = np.zeros((1, self.n_types), dtype=np.int64) if self.max_per_type else None
        out = np.empty(self.n_slots)
        for k, i in enumerate(index.tolist()):
            out[k] = self._pmf(shown, counts, k)[0, i]
            shown[0, i] = True
            if counts is not None:
                assert self.types is not None  # counted only under a per-type cap
                counts[0, self.types[i]] += 1
        return out

    def sample(self, rng: np.random.Generator, marginals: bool = True) -> SlateSample:
        """Draw a slate with its exact conditionals and, unless ``marginals=False`` (NaN, for
        simulations that never log or divide by them), its Monte-Carlo marginals."""
        sample = self.draw(rng)
        return self.complete(sample) if marginals else sample

    def draw(self, rng: np.random.Generator) -> SlateSample:
        """A slate with its exact conditionals; the Monte-Carlo marginals NaN (see :meth:`complete`)."""
        if self.kind == "weights" and not self.max_per_type:
            index, cond = self._draw_weights(rng)
        else:
            paths, conds, _, _ = self._run(rng, 1, collect=False)
            index, cond = paths[0], conds[0]
        return slate_sample(index, cond, None, draws=self.draws, marginal_draws=self.marginal_draws)

    def _draw_weights(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_run` for one path of uncapped weights: the same operations on the same numbers
        (so the same slate and conditionals, bit for bit), on 1-D arrays kept across slots."""
        n, K = self.n_candidates, self.n_slots
        w = self.values.copy()  # where(eligible, values, 0), updated in place as items are shown
        eligible = np.ones(n)
        index = np.empty(K, dtype=np.int64)
        cond = np.empty(K)
        for k in range(K):
            uniform = eligible / (n - k)
            total = w.sum()
            g = w / total if total > 0 else uniform
            e = self.epsilon[k]
            pmf = (1.0 - e) * g + e * uniform
            cum = np.cumsum(pmf)
            u = rng.random() * cum[-1]
            pick = min(int(np.count_nonzero(cum <= u)), n - 1)
            if pmf[pick] <= 0:  # rounding landed on a zero-probability tail item
                pick = n - 1 - int(np.argmax(pmf[::-1] > 0))
            index[k], cond[k] = pick, pmf[pick]
            w[pick] = 0.0
            eligible[pick] = 0.0
        return index, cond

    def complete(self, sample: SlateSample) -> SlateSample:
        """``sample`` with the marginals of its slots (:meth:`marginals`)."""
        return with_marginals(self, sample.index, sample.propensity) if sample.pending else sample

    def recipe(self) -> bytes:
        """What :func:`from_recipe` needs to rebuild this distribution, bit for bit: its
        values, epsilon, types, cap, draws and seed when one was given (else it is the same
        hash of the same inputs); a few bytes per candidate."""
        types = np.zeros(0, dtype=np.int64) if self.types is None else self.types.astype(np.int64)
        head = json.dumps(
            {
                "kind": self.kind,
                "n": self.n_candidates,
                "k": self.n_slots,
                "types": len(types),
                "max_per_type": self.max_per_type,
                "draws": self.draws,
                "seed": None if self._seed_given is None else str(self._seed_given),
            }
        ).encode()
        return b"".join(
            [
                RECIPE_MAGIC,
                len(head).to_bytes(4, "little"),
                head,
                self.values.tobytes(),
                self.epsilon.tobytes(),
                types.tobytes(),
            ]
        )


def from_recipe(recipe: bytes) -> SequentialSlate:
    """The :class:`SequentialSlate` whose :meth:`~SequentialSlate.recipe` is ``recipe``."""
    if not recipe.startswith(RECIPE_MAGIC):
        raise ValidationError(f"not a sequential-slate recipe (starts {bytes(recipe[:8])!r})", "recipe")
    at = len(RECIPE_MAGIC)
    size = int.from_bytes(recipe[at : at + 4], "little")
    head = json.loads(recipe[at + 4 : at + 4 + size])
    body = np.frombuffer(recipe, dtype=np.uint8, offset=at + 4 + size)
    n, k, t = head["n"], head["k"], head["types"]
    if len(body) != 8 * (n + k + t):
        raise ValidationError(f"a recipe for {n} candidates and {k} slots has {len(body)} bytes of arrays", "recipe")
    values = body[: 8 * n].view(np.float64)
    eps = body[8 * n : 8 * (n + k)].view(np.float64)
    types = body[8 * (n + k) :].view(np.int64) if t else None
    return SequentialSlate(
        values.copy(),
        eps.copy(),
        kind=head["kind"],
        types=None if types is None else types.copy(),
        max_per_type=head["max_per_type"],
        draws=head["draws"],
        seed=None if head["seed"] is None else int(head["seed"]),
    )


class PlackettLuceSlate(SequentialSlate):
    """Sampling without replacement proportional to ``weights`` (Plackett-Luce), each slot
    mixed with ``eps_k`` uniform exploration. Softmax policies pass ``exp(score / tau)``;
    Vowpal Wabbit policies their PMF."""

    def __init__(
        self,
        weights,
        epsilon,
        *,
        draws: int = DEFAULT_DRAWS,
        seed: int | None = None,
        types=None,
        max_per_type: int = 0,
    ):
        super().__init__(
            weights, epsilon, kind="weights", types=types, max_per_type=max_per_type, draws=draws, seed=seed
        )


class SampledRankingSlate:
    """Thompson sampling over a slate: a posterior score draw ranks the candidates, then each
    slot is epsilon-greedy over that ranking.

    Parameters
    ----------
    draw_scores : callable ``(rng, size) -> (size, n)``
        Posterior samples of the candidates' scores.
    epsilon : (K,) float in [0, 1]
    draws : int
        Posterior draws behind marginals and propensities.
    seed : int, optional
        Seed of that Monte-Carlo stream; pass one derived from the policy state (e.g. a hash of
        the posterior mean and covariance and the request) so re-scoring reproduces it.
    """

    def __init__(
        self,
        draw_scores: Callable[[np.random.Generator, int], np.ndarray],
        epsilon,
        *,
        n_candidates: int,
        draws: int = DEFAULT_DRAWS,
        seed: int | None = None,
    ):
        self.draw_scores = draw_scores
        self._n = int(n_candidates)
        self.epsilon = _check_epsilon(epsilon, self._n)
        self.draws = _check_draws(draws)
        self.seed = seed
        self._scores: np.ndarray | None = None
        self._marg: np.ndarray | None = None
        self._se: np.ndarray | None = None

    @property
    def n_candidates(self) -> int:
        return self._n

    def greedy(self) -> SampledRankingSlate:
        """Itself: the posterior draw that ranks the candidates is the policy's model (see
        :meth:`SlateDistribution.greedy <banditrec.policies.slate.SlateDistribution.greedy>`)."""
        return self

    @property
    def n_slots(self) -> int:
        return len(self.epsilon)

    @property
    def marginal_draws(self) -> int:
        return self.draws

    def _draws(self) -> np.ndarray:
        if self._scores is None:
            s = np.asarray(self.draw_scores(np.random.default_rng(self.seed), self.draws), dtype=float)
            if s.shape != (self.draws, self._n) or not np.isfinite(s).all():
                raise ValidationError(
                    f"draw_scores must return finite scores of shape {(self.draws, self._n)}, got {s.shape}", "scores"
                )
            self._scores = s
        return self._scores

    def marginals(self) -> np.ndarray:
        """(n, K): the exact epsilon-greedy rank marginals averaged over posterior draws."""
        if self._marg is None:
            per_draw = self._rank_marginals(self._draws())  # (draws, n, K)
            self._marg = per_draw.mean(axis=0)
            # a cell's term is by_rank[rank, k] for some rank, or an average of tied ranks' terms:
            # its range is that column's
            by_rank = rank_slot_marginals(self._n, self.epsilon)
            self._se = honest_se(
                self._marg, per_draw.std(axis=0, ddof=1), self.draws, by_rank.min(axis=0), by_rank.max(axis=0)
            )
            self._marg.setflags(write=False)
        return self._marg

    def marginal_se(self) -> np.ndarray:
        self.marginals()
        assert self._se is not None  # marginals() computes it
        return self._se

    def _rank_marginals(self, s: np.ndarray) -> np.ndarray:
        """(draws, n, K) the exact epsilon-greedy marginals given each row of scores ``s``
        (draws, n); tied scores split the greedy share evenly, as the sampler does."""
        order = np.argsort(-s, axis=1, kind="stable")
        by_rank = tie_averaged(rank_slot_marginals(self._n, self.epsilon), np.take_along_axis(s, order, axis=1))
        out = np.empty_like(by_rank)
        np.put_along_axis(out, order[:, :, None], by_rank, axis=1)
        return out

    def _path_probabilities(self, index: np.ndarray, s: np.ndarray | None = None) -> np.ndarray:
        """(draws, K) P(slot k gets index[k] | earlier slots, draw j) along a given slate."""
        s = self._draws() if s is None else s
        n_draws = len(s)
        shown = np.zeros((n_draws, self._n), dtype=bool)
        out = np.empty((n_draws, self.n_slots))
        for k, i in enumerate(index.tolist()):
            masked = np.where(shown, -np.inf, s)
            top = masked == masked.max(axis=1, keepdims=True)
            e, left = self.epsilon[k], self._n - k
            out[:, k] = e / left + (1.0 - e) * top[:, i] / top.sum(axis=1)
            shown[:, i] = True
        return out

    def conditionals(self, index) -> np.ndarray:
        """Conditional propensities of a slate: ratios of Monte-Carlo joint probabilities
        ``P(a_0..a_k) / P(a_0..a_{k-1})``, each an average over the posterior draws; 0 after a
        prefix no draw reaches (without exploration a slate can have probability 0)."""
        index = np.asarray(index, dtype=np.int64)
        if index.shape != (self.n_slots,):
            raise ValidationError(f"a slate has {self.n_slots} positions, got shape {index.shape}", "index")
        joint = np.cumprod(self._path_probabilities(index), axis=1).mean(axis=0)
        prefix = np.r_[1.0, joint[:-1]]
        return np.where(prefix > 0, joint / np.where(prefix > 0, prefix, 1.0), 0.0)

    def sample(self, rng: np.random.Generator, marginals: bool = True) -> SlateSample:
        """Draw a slate (a fresh posterior draw from ``rng``) with Monte-Carlo propensities;
        ``marginals=False`` leaves the marginals NaN (simulations that never log them)."""
        sample = self.draw(rng)
        if not marginals:
            paths = self._path_probabilities(sample.index)
            joint = np.cumprod(paths, axis=1).mean(axis=0)
            if (joint > 0).all():
                cond = joint / np.r_[1.0, joint[:-1]]
                log_joint = float(np.log(cond).sum())
                return SlateSample(
                    index=sample.index,
                    propensity=cond,
                    marginal=np.full(self.n_slots, np.nan),
                    joint=float(np.exp(log_joint)),
                    log_joint=log_joint,
                    marginal_draws=0,
                    served=sample.served,
                )
        return self.complete(sample)

    def draw(self, rng: np.random.Generator) -> SlateSample:
        """The slate ranked by one posterior draw from ``rng``, epsilon-greedy per slot; every
        propensity NaN (Monte Carlo over posterior draws: :meth:`complete`), the draw kept."""
        scores = np.asarray(self.draw_scores(rng, 1), dtype=float).reshape(-1)
        if scores.shape != (self._n,) or not np.isfinite(scores).all():
            raise ValidationError(f"draw_scores must return finite scores for {self._n} candidates", "scores")
        index = EpsilonGreedySlate(scores, self.epsilon).sample(rng).index
        nan = np.full(self.n_slots, np.nan)
        return SlateSample(
            index=index, propensity=nan, marginal=nan.copy(), joint=np.nan, log_joint=np.nan, served=scores
        )

    def complete(self, sample: SlateSample) -> SlateSample:
        """``sample`` (from :meth:`draw`) with Monte-Carlo conditionals and marginals."""
        if not sample.pending:
            return sample
        index, scores = sample.index, sample.served
        if scores is None:
            raise ValidationError("a Thompson-sampling slate completes from its own posterior draw", "served")
        paths = self._path_probabilities(index)
        marg = self.marginals()[index, np.arange(self.n_slots)].copy()
        joint = np.cumprod(paths, axis=1).mean(axis=0)
        if (joint <= 0).any() or (marg <= 0).any():
            # positivity guard (no exploration floor and no posterior draw like this one): add
            # the served draw itself to the Monte-Carlo average rather than log an impossible 0
            own = self._path_probabilities(index, scores[None, :])
            joint = (np.cumprod(paths, axis=1).sum(axis=0) + np.cumprod(own, axis=1)[0]) / (self.draws + 1)
            own_marg = self._rank_marginals(scores[None, :])[0][index, np.arange(self.n_slots)]
            marg = np.where(marg > 0, marg, own_marg / (self.draws + 1))
        cond = joint / np.r_[1.0, joint[:-1]]
        log_joint = float(np.log(cond).sum())
        return SlateSample(
            index=index,
            propensity=cond,
            marginal=marg.copy(),
            joint=float(np.exp(log_joint)),
            log_joint=log_joint,
            marginal_draws=self.draws,
            served=scores,  # the draw that ranked the slate (explanations split it)
        )
