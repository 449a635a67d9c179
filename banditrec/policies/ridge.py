"""Ridge-regression statistics shared by the linear policies: weighted, optionally discounted
(``gamma``) updates of ``A``, ``A^-1`` and ``b``, the reward scale (:class:`RewardStats`) that
exploration is measured in, and :class:`JointRidgePolicy`, the base of the policies with one
ridge model over joint (context, item) features.

Details: docs/policies.md, "Ridge statistics (`policies/ridge.py`)".
"""

from __future__ import annotations

import hashlib
import operator
from typing import Protocol, cast

import numpy as np
import scipy.sparse as sp
from scipy.linalg import cho_factor, cho_solve

from ..errors import ValidationError
from ..features import ITEM_EXTRA, joint_dim, joint_features
from .base import Policy, Request, Rows, cold_flags
from .checks import check_context, check_rows, check_weight
from .sampling import seed_grid
from .terms import FeatureNames, ScoreTerms

_OUTER_CHUNK_FLOATS = 1 << 21  # rows per chunk of grouped outer products: at most 16 MB each


# ---- checks ---------------------------------------------------------------------------------
def check_number(value, name: str, *, minimum: float = 0.0, strict: bool = False) -> None:
    """A finite real number ``>= minimum`` (``> minimum`` with ``strict``); bools are refused."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and bool(np.isfinite(value))
        and (value > minimum if strict else value >= minimum)
    )
    if not ok:
        raise ValidationError(
            f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}, got {value!r}", name
        )


def check_int(value, name: str, *, minimum: int) -> int:
    """An integer ``>= minimum`` (numpy integers accepted; bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValidationError(f"{name} must be an integer >= {minimum}, got {value!r}", name)
    return int(value)


def env_int(value, name: str, policy: str, *, minimum: int = 1) -> int:
    """A size the policy needs from the environment (``make(..., name=...)``)."""
    if value is None:
        raise ValidationError(f"{policy} needs {name} from the environment: make(..., {name}=...)", name)
    try:
        value = operator.index(value)
    except TypeError:
        raise ValidationError(f"{name} must be an integer >= {minimum}, got {value!r}", name) from None
    return check_int(value, name, minimum=minimum)


def check_items(items, m: int, policy: str) -> np.ndarray:
    """Catalog indices ``(m,)`` of the shown items, integers >= 0."""
    if items is None:
        raise ValidationError(f"{policy} keeps one model per item: update(..., items=catalog indices (m,))", "items")
    a = np.atleast_1d(np.asarray(items))
    if a.shape != (m,):
        raise ValidationError(f"items must have one entry per row ({m}), got shape {a.shape}", "items")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValidationError(f"items must hold integer catalog indices, got dtype {a.dtype}", "items")
    bad = a < 0
    if bad.any():
        i = int(np.argmax(bad))
        raise ValidationError(f"items must be catalog indices >= 0, found {a[i]} at row {i}", "items")
    return a.astype(np.int64, copy=False)


def check_candidates(request: Request) -> np.ndarray:
    """A request's catalog indices: a 1-D array of integers >= 0 (an index the policy has not
    seen yet is a cold item, not an error)."""
    items = np.asarray(request.items)
    if items.ndim != 1 or (items.size and not np.issubdtype(items.dtype, np.integer)):
        raise ValidationError(
            f"request items must be a 1-D array of catalog indices, got {items.dtype}{list(items.shape)}", "items"
        )
    bad = items < 0
    if bad.any():
        i = int(np.argmax(bad))
        raise ValidationError(f"request items must be catalog indices >= 0, found {items[i]} at candidate {i}", "items")
    return items.astype(np.int64, copy=False)


def check_gamma(value) -> None:
    """A discount factor in (0, 1]."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and bool(np.isfinite(value))
        and 0.0 < value <= 1.0
    )
    if not ok:
        raise ValidationError(f"gamma must be a number in (0, 1] (1: no discounting), got {value!r}", "gamma")


def row_discounts(m: int, gamma: float) -> tuple[np.ndarray, float]:
    """``(age weights (m,), decay)``: row ``i`` of an m-row update counts ``gamma^(m - 1 - i)``
    and the statistics before it are multiplied by ``decay = gamma^m``."""
    if gamma == 1.0:
        return np.ones(m), 1.0
    return gamma ** np.arange(m - 1, -1, -1, dtype=float), float(gamma**m)


def with_intercept(context: np.ndarray) -> np.ndarray:
    """``[1, context]`` for one context ``(d_c,)`` or row-wise for ``(m, d_c)``."""
    c = np.asarray(context, dtype=float)
    ones = np.ones(c.shape[:-1] + (1,))
    return np.concatenate([ones, c], axis=-1)


def overflow_error() -> ValidationError:
    return ValidationError(
        "update would make the model non-finite (rewards or features too large); the update was not applied", "reward"
    )


def all_finite(*arrays) -> bool:
    return all(np.isfinite(a).all() for a in arrays)


# ---- math -----------------------------------------------------------------------------------
def sherman_morrison(A_inv: np.ndarray, x: np.ndarray, w: float) -> np.ndarray:
    """``(A + w x x^T)^{-1}`` from ``A^{-1}``; works on stacks ``(..., d, d)`` with ``x (..., d)``."""
    Ax = np.einsum("...ij,...j->...i", A_inv, x)
    denom = 1.0 + w * np.einsum("...i,...i->...", x, Ax)
    return A_inv - (w / denom)[..., None, None] * (Ax[..., :, None] * Ax[..., None, :])


def spd_inverse(A: np.ndarray) -> np.ndarray:
    """Inverse of one symmetric positive definite matrix through its Cholesky factor; raises the
    overflow error when ``A`` is not numerically positive definite or the result is not finite."""
    try:
        return cho_solve(cho_factor(A), np.eye(len(A)))
    except (np.linalg.LinAlgError, ValueError):
        raise overflow_error() from None


def stacked_inverse(A: np.ndarray) -> np.ndarray:
    """Inverses of a stack ``(k, d, d)`` of positive definite matrices with one batched solve."""
    try:
        return np.linalg.solve(A, np.broadcast_to(np.eye(A.shape[-1]), A.shape))
    except np.linalg.LinAlgError:
        raise overflow_error() from None


def group_index(items: np.ndarray):
    """``(touched, groups)``: the distinct items, sorted, and each row's position among them."""
    touched, groups = np.unique(items, return_inverse=True)
    return touched, groups.reshape(-1)


def grouped_sum(groups: np.ndarray, n_groups: int, weight: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``out[g] = sum_{i: groups[i] = g} weight_i X_i`` for ``X (m, d)``: one sparse product."""
    m = len(groups)
    S = sp.csr_matrix((weight, (groups, np.arange(m))), shape=(n_groups, m))
    return np.asarray(S @ X)


def grouped_outer(groups: np.ndarray, n_groups: int, weight: np.ndarray, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``out[g] = sum_{i: groups[i] = g} weight_i X_i Y_i^T``, shape ``(n_groups, d_x, d_y)``.

    The per-row outer products are summed by a sparse (group x row) matrix, in chunks of rows
    so that memory stays bounded for large batches.
    """
    m, dx, dy = len(X), X.shape[1], Y.shape[1]
    out = np.zeros((n_groups, dx * dy))
    chunk = max(1, _OUTER_CHUNK_FLOATS // (dx * dy))
    for s in range(0, m, chunk):
        x, y = X[s : s + chunk], Y[s : s + chunk]
        outer = (x[:, :, None] * y[:, None, :]).reshape(len(x), -1)
        out += grouped_sum(groups[s : s + chunk], n_groups, weight[s : s + chunk], outer)
    return out.reshape(n_groups, dx, dy)


def ridge_step(A, A_inv, b, X, r, w, *, reg: float = 1.0, gamma: float = 1.0, block: int | None = None):
    """New ``(A, A_inv, b, theta)`` after adding weighted rows ``X (m, d)``, ``r (m,)``, ``w (m,)``.

    Never modifies its inputs; raises the overflow error if a new array is not finite. One row
    uses Sherman-Morrison, more rows re-invert through a Cholesky factor (cheaper and more
    accurate than m rank-one updates). With ``gamma < 1`` the data part ``A - reg I`` and ``b``
    decay by ``gamma^m`` and row ``i`` counts ``gamma^(m - 1 - i) w_i`` (docs/policies.md, "Ridge statistics").
    ``X`` may also be a function ``X(lo, hi)`` of rows ``lo:hi``, called ``block`` rows at a time
    (all at once without ``block``): the sums are then built without ever holding ``X`` whole.
    """
    m = len(r)
    rows_of = X if callable(X) else (lambda lo, hi: X[lo:hi])
    step = max(1, m if block is None else block)
    age, decay = row_discounts(m, gamma)
    first = np.zeros(0)  # the first row, for a one-row update
    with np.errstate(over="ignore", invalid="ignore"):
        if decay != 1.0:
            prior = reg * np.eye(len(A))
            A, b = prior + decay * (A - prior), decay * b
        A2, b2 = A, b
        for lo in range(0, m, step):
            x = rows_of(lo, min(m, lo + step))
            first = x[0] if lo == 0 else first
            xw = x * (w[lo : lo + step] * age[lo : lo + step])[:, None]
            A2 = A2 + xw.T @ x
            b2 = b2 + xw.T @ r[lo : lo + step]
        if not all_finite(A2, b2):
            raise overflow_error()
        A_inv2 = sherman_morrison(A_inv, first, w[0]) if m == 1 and decay == 1.0 else spd_inverse(A2)
        theta = A_inv2 @ b2
    if not all_finite(A_inv2, theta):
        raise overflow_error()
    return A2, A_inv2, b2, theta


LEARN_BLOCK_ROWS = 65_536
"""Rows whose joint features a batch update builds at a time: a large batch (a log's training
share) never holds its ``(m, dim)`` features whole."""


class RewardStats:
    """The reward scale: ``[sum w, sum w r, sum w r^2, min r, max r, n]`` over the rows learned
    (``n`` the undiscounted sum of the weights; min and max over the rows of weight > 0, 0
    while ``n`` is 0), the first three sums discounted like the ridge statistics (``gamma``).
    Functions of the (6,) array; a new array per update (copy-then-commit, like the model).

    :func:`RewardStats.noise_sd` is the scale every linear policy's exploration is measured in:
    LinUCB's bonus is ``alpha`` of them, Thompson sampling's posterior ``v`` of them, softmax's
    temperature ``tau`` of them.
    """

    SIZE = 6
    EMPTY = np.zeros(SIZE)

    @staticmethod
    def step(stats: np.ndarray, r: np.ndarray, w: np.ndarray, gamma: float = 1.0) -> np.ndarray:
        age, decay = row_discounts(len(r), gamma)
        we = w * age
        seen = r[w > 0]
        lo, hi, n = float(stats[3]), float(stats[4]), float(stats[5])
        if len(seen):
            lo, hi = (min(lo, seen.min()), max(hi, seen.max())) if n else (seen.min(), seen.max())
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused by the caller
            return np.array(
                [
                    decay * stats[0] + we.sum(),
                    decay * stats[1] + we @ r,
                    decay * stats[2] + we @ (r * r),
                    lo,
                    hi,
                    n + w.sum(),
                ]
            )

    @staticmethod
    def spread(stats: np.ndarray) -> float:
        """The range of the rewards seen (``max - min``); 1 before two different rewards were seen."""
        width = float(stats[4] - stats[3])
        return width if stats[5] > 0 and np.isfinite(width) and width > 0 else 1.0

    @staticmethod
    def noise_sd(stats: np.ndarray, fitted: float, df: float) -> float:
        """The standard deviation of a reward around the model,
        ``sqrt((sum w r^2 - fitted + s^2 / 4) / (max(sum w - df, 0) + 1))``: the ridge residual
        sum of squares (penalty included; ``fitted`` = ``t . c``, the solution times the
        right-hand side of the normal equations) over the residual degrees of freedom (``df``,
        the effective number of parameters, ``trace`` of the hat matrix), with one prior row of
        variance ``(s / 2)^2`` for a reward range ``s`` (the largest variance a reward of that
        range can have; 0.5 before any data): the prior's before the data, the data's after.
        A function of the model's statistics, so batch and row-by-row learning agree."""
        s = RewardStats.spread(stats)
        rss = max(float(stats[2]) - fitted, 0.0)
        return float(np.sqrt((rss + s * s / 4.0) / (max(float(stats[0]) - df, 0.0) + 1.0)))


def _merge_stats(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:class:`RewardStats` of two disjoint sets of rows (undiscounted)."""
    if not a[5]:
        return b.copy()
    if not b[5]:
        return a.copy()
    return np.array([a[0] + b[0], a[1] + b[1], a[2] + b[2], min(a[3], b[3]), max(a[4], b[4]), a[5] + b[5]])


def check_state(arrays: dict, shapes: dict[str, tuple], policy: str) -> None:
    """A snapshot's arrays must be exactly ``shapes`` (names and shapes), else raise."""
    if set(arrays) != set(shapes):
        raise ValidationError(
            f"snapshot of {policy} must hold arrays {sorted(shapes)}, got {sorted(arrays)}", "snapshot"
        )
    for k, shape in shapes.items():
        if tuple(np.shape(arrays[k])) != tuple(shape):
            raise ValidationError(
                f"snapshot array {k!r} has shape {tuple(np.shape(arrays[k]))}, this {policy} "
                f"needs {tuple(shape)} (built with another environment?)",
                "snapshot",
            )


# ---- the shared joint-feature model ---------------------------------------------------------
class RidgeKnobs(Protocol):
    """The two knobs of every ridge policy's config (:func:`check_ridge`)."""

    @property
    def reg(self) -> float: ...

    @property
    def gamma(self) -> float: ...


def check_ridge(config: RidgeKnobs) -> None:
    """The knobs every ridge policy's config has: ``reg`` > 0 (the ridge penalty) and ``gamma``
    in (0, 1] (the per-row discount). Their ``epsilon`` defaults to 0 -- they explore by their
    own means (an optimism bonus, a posterior draw, a temperature) and the serving floor is the
    engine's -- except epsilon-greedy's, which is its exploration."""
    check_number(config.reg, "reg", minimum=0.0, strict=True)
    check_gamma(config.gamma)


_JOINT_VERSION = "u=[1,v,cold]"  # the joint features' layout, in snapshot meta


def _legacy_positions(context_dim: int, item_dim: int) -> np.ndarray:
    """Where each coordinate of the joint features ``[v, vec(v c^T)]`` without intercept or
    cold flag (snapshots written before them) sits in today's ``[u, vec(u c^T)]``."""
    d_u = item_dim + ITEM_EXTRA
    own = 1 + np.arange(item_dim)
    cross = d_u + (1 + np.arange(item_dim))[:, None] * context_dim + np.arange(context_dim)[None, :]
    return np.concatenate([own, cross.ravel()])


class JointRidgePolicy(Policy):
    """Base of the policies with one ridge model over joint (context, item) features.

    Needs ``context_dim`` and ``item_dim`` from the environment; its config has ``reg`` and
    ``gamma`` (:func:`check_ridge`). Holds ``A``, ``A_inv`` (dim x dim), ``b`` and ``theta`` (dim,) with
    ``dim = joint_dim(context_dim, item_dim)``, and the reward scale ``stats``
    (:class:`RewardStats`); subclasses implement :meth:`scores` (and :meth:`distribution` when
    the slate is not epsilon-greedy over the scores).
    """

    _sigma: float | None
    _digest: bytes | None

    def __init__(self, config, *, context_dim=None, item_dim=None, **env):
        super().__init__(config, **env)
        if context_dim is None or item_dim is None:
            raise ValidationError(
                f"{self.name} needs feature sizes: make(..., context_dim=d_c, item_dim=d_i)", "context_dim"
            )
        self.context_dim, self.item_dim = int(context_dim), int(item_dim)
        self.dim = joint_dim(self.context_dim, self.item_dim)
        self.A = np.eye(self.dim) * self._ridge.reg
        self.A_inv = np.eye(self.dim) / self._ridge.reg
        self.b = np.zeros(self.dim)
        self.theta = np.zeros(self.dim)
        self.stats = RewardStats.EMPTY.copy()
        self._changed()

    @property
    def _ridge(self) -> RidgeKnobs:
        # every JointRidgePolicy's Config has reg and gamma (it calls check_ridge)
        return cast(RidgeKnobs, self.config)

    def features(self, request: Request) -> np.ndarray:
        V = np.asarray(request.item_features, dtype=float)
        return joint_features(
            check_context(request.context, self.context_dim), V, cold_flags(request.cold, len(V), "cold")
        )

    def mean(self, request: Request) -> np.ndarray:
        """The ridge estimate ``x^T theta`` of every candidate's reward, shape (n,)."""
        return self.features(request) @ self.theta

    bonus_kind = "none"  # what score_terms' bonus is (ScoreTerms.kind)

    def score_terms(self, request: Request, names: FeatureNames) -> ScoreTerms:
        """``x_i theta_i`` per joint feature (:meth:`FeatureNames.joint` names them) and
        :meth:`bonus` of every candidate: their sum is :meth:`scores`."""
        X = self.features(request)
        return ScoreTerms(names.joint(self.context_dim, self.item_dim), X * self.theta, self.bonus(X), self.bonus_kind)

    def bonus(self, X: np.ndarray) -> np.ndarray:
        """(n,) the exploration part of the scores of joint features ``X`` (n, dim); 0 here."""
        return np.zeros(len(X))

    @property
    def noise_sd(self) -> float:
        """The standard deviation of a reward around the model (:meth:`RewardStats.noise_sd`;
        the effective number of parameters is ``dim - reg trace(A^{-1})``), cached per state."""
        if self._sigma is None:
            df = self.dim - self._ridge.reg * float(np.trace(self.A_inv))
            self._sigma = RewardStats.noise_sd(self.stats, float(self.theta @ self.b), df)
        return self._sigma

    def learn(self, rows: Rows) -> None:
        C, V, r = check_rows(
            rows.context, rows.item_features, rows.reward, context_dim=self.context_dim, item_dim=self.item_dim
        )
        cold = cold_flags(rows.cold, len(r), "cold")

        def features(lo: int, hi: int) -> np.ndarray:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused by update_features
                return joint_features(C[lo:hi], V[lo:hi], None if cold is None else cold[lo:hi])

        # built LEARN_BLOCK_ROWS rows at a time: never the (m, dim) joint features of a large batch at once
        self.update_features(features, r, rows.weight)

    def update_features(self, features, reward: np.ndarray, weight: np.ndarray | None = None) -> None:
        """Ridge update from rows of joint features ``(m, dim)`` (or a function of rows ``lo:hi``
        giving theirs, built :data:`LEARN_BLOCK_ROWS` at a time), rewards ``(m,)`` and optional
        importance weights ``(m,)`` (``A += X^T W X``, ``b += X^T W r``, discounted by ``gamma``)."""
        r = np.atleast_1d(np.asarray(reward, dtype=float))
        block = None
        if callable(features):
            block, make = LEARN_BLOCK_ROWS, features

            def features(lo: int, hi: int) -> np.ndarray:
                return self._checked_features(make(lo, hi), hi - lo)

            if not np.isfinite(r).all():
                raise ValidationError("update features and rewards must be finite", "reward")
        else:
            features = self._checked_features(features, len(r))
            if not np.isfinite(r).all():
                raise ValidationError("update features and rewards must be finite", "reward")
        w = check_weight(weight, len(r))
        if len(r) == 0:
            return
        # computed on copies: a failed update keeps serving the old state, never a NaN model
        gamma = self._ridge.gamma
        new = ridge_step(self.A, self.A_inv, self.b, features, r, w, reg=self._ridge.reg, gamma=gamma, block=block)
        stats = RewardStats.step(self.stats, r, w, gamma)
        if not np.isfinite(stats).all():
            raise overflow_error()
        self.A, self.A_inv, self.b, self.theta = new
        self.stats = stats
        self.n_updates += 1
        self._changed()

    @property
    def mergeable(self) -> bool:
        """Undiscounted statistics are sums over rows: copies that learned disjoint rows merge
        (:meth:`merge`) into the model that learned them all."""
        return self._ridge.gamma == 1.0

    def learned(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What this model learned since its prior: ``(A - reg I, b, stats)``."""
        return self.A - self._ridge.reg * np.eye(self.dim), self.b, self.stats

    def merge(self, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Add what copies of this policy (same config, from the prior) learned on other rows
        (their :meth:`learned`): the model of every row, up to the order of the sums."""
        parts = [p for p in parts if p[2][5] > 0]
        if not self.mergeable:
            raise ValidationError(f"{self.name} with gamma < 1 learns in row order; it cannot merge", "gamma")
        if not parts:
            return
        A = self.A + sum(p[0] for p in parts)
        b = self.b + sum(p[1] for p in parts)
        stats = self.stats
        for part in parts:
            stats = _merge_stats(stats, part[2])
        if not all_finite(A, b, stats):
            raise overflow_error()
        A_inv = spd_inverse(A)
        theta = A_inv @ b
        if not all_finite(A_inv, theta):
            raise overflow_error()
        self.A, self.A_inv, self.b, self.theta, self.stats = A, A_inv, b, theta, stats
        self.n_updates += 1
        self._changed()

    def _checked_features(self, features, m: int) -> np.ndarray:
        X = np.atleast_2d(np.asarray(features, dtype=float))
        if X.shape[1] != self.dim or len(X) != m:
            raise ValidationError(
                f"update needs features (m, {self.dim}) and reward (m,), got {X.shape} and ({m},)",
                "features",
            )
        if not np.isfinite(X).all():
            raise ValidationError("update features and rewards must be finite", "reward")
        return X

    def _changed(self) -> None:
        """Called after the state changed (update or restore): drop anything derived from it."""
        self._digest = None
        self._sigma = None

    def state_digest(self) -> bytes:
        """A hash of the model (``theta``, ``A^{-1}`` and the reward scale, on
        :func:`~.sampling.seed_grid`, so that the same model learned on another CPU mostly hashes
        the same), cached until the next change."""
        if self._digest is None:
            h = hashlib.blake2b(digest_size=16)
            for a in (self.theta, self.A_inv, self.stats):
                h.update(seed_grid(a).tobytes())
            self._digest = h.digest()
        return self._digest

    def replay_seed(self, request: Request) -> int:
        """A Monte-Carlo seed that is a function of the model and the request only, so that
        re-scoring a logged decision with the same model reproduces its logged marginals."""
        h = hashlib.blake2b(self.state_digest(), digest_size=16)
        arrays = [
            np.asarray(request.context, dtype=float),
            np.asarray(request.items, dtype=np.int64),
            np.asarray(request.item_features, dtype=float),
        ]
        if request.cold is not None:
            arrays.append(np.asarray(request.cold, dtype=float))
        for a in arrays:
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return int.from_bytes(h.digest(), "little")

    def state(self):
        return (
            {"A": self.A, "A_inv": self.A_inv, "b": self.b, "theta": self.theta, "stats": self.stats},
            {"dim": self.dim, "joint": _JOINT_VERSION},
        )

    def set_state(self, arrays, meta):
        """Restore :meth:`state`. A snapshot written before the joint features had an intercept
        and a cold flag (its ``dim`` is ``d_i + d_c d_i``, no ``joint`` in its meta) is embedded:
        its coordinates keep their statistics, the new ones start at the prior (``reg I``, 0)."""
        arrays = dict(arrays)
        if meta.get("joint") is None and "stats" not in arrays:
            arrays = self._from_legacy(arrays, meta)
        elif meta.get("joint") != _JOINT_VERSION or meta.get("dim") != self.dim:
            raise ValidationError(
                f"snapshot is of a {meta.get('dim')}-dimensional {self.name} with features "
                f"{meta.get('joint')!r}, this one has {self.dim} dimensions and "
                f"{_JOINT_VERSION!r}",
                "snapshot",
            )
        d = self.dim
        check_state(
            arrays, {"A": (d, d), "A_inv": (d, d), "b": (d,), "theta": (d,), "stats": (RewardStats.SIZE,)}, self.name
        )
        self.A, self.A_inv, self.b = arrays["A"], arrays["A_inv"], arrays["b"]
        self.theta, self.stats = arrays["theta"], np.array(arrays["stats"], dtype=float)
        self._changed()

    def _from_legacy(self, arrays: dict, meta: dict) -> dict:
        old = self.item_dim + self.context_dim * self.item_dim
        if meta.get("dim") != old or set(arrays) != {"A", "A_inv", "b", "theta"}:
            raise ValidationError(
                f"snapshot is of a {meta.get('dim')}-dimensional {self.name}, this one has "
                f"{self.dim} dimensions ({old} before the intercept)",
                "snapshot",
            )
        check_state(arrays, {"A": (old, old), "A_inv": (old, old), "b": (old,), "theta": (old,)}, self.name)
        pos = _legacy_positions(self.context_dim, self.item_dim)
        reg, d = self._ridge.reg, self.dim
        A, A_inv = np.eye(d) * reg, np.eye(d) / reg
        A[np.ix_(pos, pos)] = arrays["A"]
        A_inv[np.ix_(pos, pos)] = arrays["A_inv"]
        b, theta = np.zeros(d), np.zeros(d)
        b[pos], theta[pos] = arrays["b"], arrays["theta"]
        return {"A": A, "A_inv": A_inv, "b": b, "theta": theta, "stats": RewardStats.EMPTY.copy()}
