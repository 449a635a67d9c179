"""LinUCB with parameters shared across items (Li et al. 2010, the shared part of Alg. 2): one
ridge regression over joint (context, item) features, an optimism bonus of ``alpha`` noise
standard deviations, and scoring that never builds the joint features.

Details: docs/policies.md, "Shared LinUCB (`policies/linucb.py`)".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ValidationError
from ..features import item_dim_of, item_vectors
from .base import Policy, PolicyConfig, Request, cold_flags, slot_counts
from .checks import check_context
from .ridge import JointRidgePolicy, check_number, check_ridge, with_intercept

_U = np.finfo(float).eps / 2  # unit roundoff
_TINY = np.finfo(float).tiny  # covers the absolute error of gradual underflow


@dataclass(frozen=True)
class LinUCBConfig(PolicyConfig):
    """``alpha``: the width of the confidence bound, in posterior standard deviations of the
    mean (docs/policies.md, "Shared LinUCB"); the default 1 was chosen on the held-out
    scenario (``docs/policies.md``), and on rewards in [0, 1] it matches Li et al.'s LinUCB
    (``bench/run.py --only synthetic``); ``reg``, ``gamma``: :func:`~.ridge.check_ridge`."""

    alpha: float = 1.0
    epsilon: float = 0.0
    reg: float = 1.0
    gamma: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_number(self.alpha, "alpha", minimum=0.0)
        check_ridge(self)


def _unsafe_rows(ranked: np.ndarray, sizes: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Rows of ``(m, n)`` scores (row ``j`` holds ``sizes[j]`` scores, then ``+inf`` padding)
    whose ranking rounding errors of at most ``bound[j]`` per score could change: two scores
    within ``2 bound`` of each other, or a score or the bound not finite.

    If scores ``a <= c`` could swap or (un)tie, then ``c - a <= 2 bound`` and so is every
    sorted neighbour gap between them; rounding is monotone, so the computed gap is within too.
    NaN sorts after ``+inf``, so a row's ``sizes[j]``-th smallest is finite iff all its scores are.
    """
    m = len(ranked)
    if ranked.shape[1] == 0:
        return ~np.isfinite(bound)
    s = np.sort(ranked, axis=1)
    with np.errstate(invalid="ignore"):  # inf - inf (padding) is NaN, never <=
        near = np.fmin.reduce(np.diff(s, axis=1), axis=1, initial=np.inf) <= 2 * bound
    top = s[np.arange(m), np.maximum(sizes - 1, 0)]
    return near | ~(np.isfinite(s[:, 0]) & np.isfinite(top) & np.isfinite(bound))


class _Blocks:
    """``theta`` and ``A^{-1}`` of one model state rearranged by (context term, item term).

    ``Q[k, (k', i, i')] = A^{-1}[idx[k, i], idx[k', i']]`` and ``T[k, i] = theta[idx[k, i]]``,
    where ``idx[k, i]`` is the joint-feature position of ``e_k v_i`` (``e = [1, c]``); the norms
    ``F[k, k'] = ||A^{-1} block (k, k')||_F`` and ``g[k] = ||T[k]||_2`` bound the rounding error.
    """

    def __init__(self, A_inv: np.ndarray, theta: np.ndarray, context_dim: int, item_dim: int):
        self.A_inv, self.theta = A_inv, theta  # the arrays these were derived from
        k, d = context_dim + 1, item_dim_of(item_dim)
        idx = np.empty((k, d), dtype=np.intp)
        idx[0] = np.arange(d)
        idx[1:] = d + np.arange(d)[None, :] * context_dim + np.arange(context_dim)[:, None]
        blocks = A_inv[idx[:, None, :, None], idx[None, :, None, :]]  # (k, k', i, i')
        self.Q = np.ascontiguousarray(blocks.reshape(k, k * d * d))
        self.T = theta[idx]
        self.F = np.sqrt(np.einsum("abij,abij->ab", blocks, blocks))
        self.g = np.sqrt(np.einsum("ki,ki->k", self.T, self.T))


class LinUCB(JointRidgePolicy):
    """Shared-parameter LinUCB; needs ``context_dim`` and ``item_dim`` from the environment."""

    name = "linucb"
    Config = LinUCBConfig
    config: LinUCBConfig
    _block_cache: _Blocks | None = None

    def _blocks(self) -> _Blocks:
        """The model's :class:`_Blocks`, cached; rebuilt when ``A_inv`` or ``theta`` is another
        array: the ridge model never changes them in place (an update or a restored state
        assigns new arrays), so that is exactly when they change, and a reader racing an
        update never keeps blocks of a replaced model."""
        c = self._block_cache
        if c is None or c.A_inv is not self.A_inv or c.theta is not self.theta:
            c = self._block_cache = _Blocks(self.A_inv, self.theta, self.context_dim, self.item_dim)
        return c

    def _items(self, request: Request) -> np.ndarray:
        """The candidates' item vectors ``[1, v, cold]``, (n, d_i + 2)."""
        V = np.asarray(request.item_features, dtype=float)
        if V.ndim != 2 or V.shape[1] != self.item_dim:
            raise ValidationError(f"item_features must have shape (n, {self.item_dim}), got {V.shape}", "item_features")
        return item_vectors(V, cold_flags(request.cold, len(V), "cold"))

    @property
    def bonus_weight(self) -> float:
        """``alpha`` times the noise standard deviation: what multiplies ``sqrt(x^T A^{-1} x)``."""
        return self.config.alpha * self.noise_sd

    bonus_kind = "ucb"

    def bonus(self, X: np.ndarray) -> np.ndarray:
        """``alpha sigma sqrt(x^T A^{-1} x)`` per row of joint features ``X`` (n, dim)."""
        var = np.einsum("ij,ij->i", X @ self.A_inv, X)
        return self.bonus_weight * np.sqrt(np.maximum(var, 0.0))

    def scores(self, request: Request) -> np.ndarray:
        c = check_context(request.context, self.context_dim)
        V = self._items(request)
        blk = self._blocks()
        k, d = self.context_dim + 1, V.shape[1]
        e = with_intercept(c)
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite scores are refused by the slate
            t = e @ blk.T  # (d,)
            B = (e @ (e @ blk.Q).reshape(k, d * d)).reshape(d, d)
            var = np.einsum("ij,ij->i", V @ B, V)  # v^T B v = x^T A^{-1} x
            return V @ t + self.bonus_weight * np.sqrt(np.maximum(var, 0.0))

    def distributions(self, requests, n_slots, min_epsilon: float = 0.0) -> list:
        """Vectorised :meth:`~banditrec.policies.base.Policy.distributions`: ``B`` and ``t`` of
        every request come from two products over the stacked contexts, and every request's
        candidates are scored by one batched product (padded to the largest request).

        Exactly the distributions of :meth:`distribution` request by request: a slate depends
        on the scores only through their ranking and ties, and a request whose batched scores
        come within a bound on the rounding difference from its own (derived below) of each
        other, or are not finite, is re-scored alone by :meth:`scores`. A blended objective
        (min-max scaling amplifies rounding) or a type cap takes the loop.
        """
        counts = slot_counts(n_slots, len(requests))
        if (
            len(requests) < 2
            or type(self).scores is not LinUCB.scores
            or type(self).distribution is not Policy.distribution
            or self.config.sensitivity != "off"
            or self.config.max_per_type
        ):
            return super().distributions(requests, counts, min_epsilon)
        m, k, d = len(requests), self.context_dim + 1, item_dim_of(self.item_dim)
        E = np.empty((m, k))
        E[:, 0] = 1.0
        try:  # every context a finite (d_c,) vector: all that the per-request checks below accept
            C = np.array([r.context for r in requests], dtype=float)
            checked = C.shape == (m, k - 1) and bool(np.isfinite(C).all())
        except (TypeError, ValueError):
            checked = False
        if checked:
            E[:, 1:] = C
        feats = []
        for j, r in enumerate(requests):  # else checked in the order the loop checks them
            if not checked:
                E[j, 1:] = check_context(check_context(r.context, self.expected_context_dim), self.context_dim)
            feats.append(self._items(r))
        sizes = np.array([len(f) for f in feats])
        n = int(sizes.max())
        items = None
        if self.value_weight is not None:  # each row's catalog items, padded with item 0
            items = np.zeros((m, n), dtype=np.intp)
            for j, r in enumerate(requests):
                items[j, : sizes[j]] = r.items
        if int(sizes.min()) == n:
            V = np.concatenate(feats).reshape(m, n, d)
        else:  # pad with zero items (their scores are replaced by +inf below)
            V = np.zeros((m, n, d))
            for j, f in enumerate(feats):
                V[j, : len(f)] = f
        scores, alone = self._stacked_scores(E, V, sizes, items)
        out = []
        for j, (request, kj, nj) in enumerate(zip(requests, counts, sizes.tolist())):
            # a near-tie (or overflow): this request's own scores
            s = self.scores(request) if alone[j] else scores[j, :nj]
            out.append(self.slate_from_scores(request, s, kj, min_epsilon))
        return out

    @np.errstate(divide="ignore", over="ignore", invalid="ignore")  # non-finite rows are re-scored alone
    def _stacked_scores(self, E, V, sizes, items):
        """``(scores (m, n), alone (m,))``: every request's scores from the stacked ``[1, c]``
        ``E`` (m, k) and padded items ``V`` (m, n, d), and which requests to re-score alone;
        ``items`` (m, n): the rows' catalog items when the policy weights scores by value."""
        (m, k), n, d, alpha = E.shape, V.shape[1], V.shape[2], self.bonus_weight
        blk = self._blocks()
        padded = int(sizes.min()) < n
        real = np.arange(n)[None, :] < sizes[:, None] if padded else True
        # [B | t] per request: B = sum_k' e_k' sum_k e_k Q[k, k'], t = e @ T
        Bt = np.empty((m, d, d + 1))
        Bt[:, :, :d] = np.matmul(E[:, None, :], (E @ blk.Q).reshape(m, k, d * d)).reshape(m, d, d)
        Bt[:, :, d] = E @ blk.T
        VBt = np.matmul(V, Bt)  # (m, n, d + 1): v^T B and v . t
        var = np.einsum("mni,mni->mn", VBt[:, :, :d], V)
        sd = np.sqrt(np.maximum(var, 0.0))
        scores = VBt[:, :, d] + alpha * sd
        # Rounding bound, for this arithmetic and for scores() alike (Higham's gamma_L, any
        # order of summation, FMA or not): each product term v_i v_i' e_k e_k' A^{-1}[..] of
        # v^T B v passes at most 2k + 2d roundings, each term v_i e_k theta[..] of v . t at
        # most k + d, so each computed value is within gamma_L times the sum of its terms'
        # magnitudes of the exact one. Those sums are at most q = ||v||^2 |e|^T F |e|
        # (|v|^T |B_kk'| |v| <= ||v||^2 ||B_kk'||_F per block) and p = ||v|| |e| . g (Cauchy-
        # Schwarz per block), with ||v||^2 <= d max_i v_i^2 =: r2 over the request. The two
        # paths' variances thus differ by at most delta = 2 gamma q, their clamped square roots
        # by at most min(sqrt(delta), delta / sd) (sd >= the row's smallest); sqrt, alpha * and
        # the final sum add at most 4 gamma (p + alpha sqrt(q)). gamma is twice gamma_L with
        # L = 2 (k + d) + 8 (slack for the rounding of the bound itself and of max(s, 0) x
        # value); the 4 (1 + alpha) sqrt(tiny) term covers gradual underflow (absolute errors
        # far below tiny).
        L = 2 * (k + d) + 8
        gamma = 2 * L * _U / (1 - L * _U)
        absE = np.abs(E)
        lam = np.einsum("mk,kl,ml->m", absE, blk.F, absE)  # q <= r2 lam
        mu = absE @ blk.g  # p <= sqrt(r2) mu
        flat = V.reshape(m, -1)
        r = np.sqrt(d) * np.maximum(flat.max(axis=1, initial=0.0), -flat.min(axis=1, initial=0.0))
        sd_min = sd.min(axis=1, initial=np.inf, where=real)
        bound = (
            r * (4 * gamma * (mu + alpha * np.sqrt(lam)))
            + 4 * (1 + alpha) * np.sqrt(_TINY)
            + np.fmin(r * (2 * alpha * np.sqrt(2 * gamma * lam)), r * r * (4 * alpha * gamma * lam) / sd_min)
        )
        ranked = scores
        unsafe = np.zeros(m, dtype=bool)
        if items is not None:  # the ranking is of max(s, 0) x value (max is 1-Lipschitz)
            unsafe = ~np.isfinite(scores).all(axis=1, where=real)
            ranked = self.value_weighted(scores, items)
            bound = bound * self.value_weight[items].max(axis=1, initial=0.0)
        if padded:
            ranked = np.where(real, ranked, np.inf)
        alone = unsafe | _unsafe_rows(ranked, sizes, bound)
        return scores, alone
