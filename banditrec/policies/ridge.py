"""Ridge-regression statistics shared by the linear policies.

Every linear policy keeps, for one or many weight vectors, the statistics of a weighted ridge
regression

    A = reg * I + sum_i w_i x_i x_i^T,    b = sum_i w_i r_i x_i,    theta = A^{-1} b

and updates them from logged rows ``(x_i, r_i)`` with importance weights ``w_i`` (each row
counts ``w_i`` times). One new row updates ``A^{-1}`` by Sherman-Morrison,

    (A + w x x^T)^{-1} = A^{-1} - w (A^{-1} x)(A^{-1} x)^T / (1 + w x^T A^{-1} x),

a batch re-inverts the new ``A`` (a Cholesky factor for one matrix, a batched solve for a stack).
Updates are computed on copies and committed only when every new array is finite, so a failed
update leaves the model serving what it served before, never a NaN.

This module holds the math they share (the input checks are in :mod:`.checks`), and :class:`JointRidgePolicy`, the base of
the policies with one ridge model over joint (context, item) features
(:func:`banditrec.features.joint_features`): shared-parameter LinUCB, epsilon-greedy, softmax and
linear Thompson sampling differ only in how they turn that model into a slate.
"""

from __future__ import annotations

import hashlib
import operator

import numpy as np
import scipy.sparse as sp
from scipy.linalg import cho_factor, cho_solve

from ..errors import ValidationError
from ..features import joint_dim, joint_features
from .checks import check_context, check_rows, check_weight
from .base import Policy, Request
from .sampling import seed_grid

_OUTER_CHUNK_FLOATS = 1 << 21  # rows per chunk of grouped outer products: at most 16 MB each


# ---- checks ---------------------------------------------------------------------------------
def check_number(value, name: str, *, minimum: float = 0.0, strict: bool = False) -> None:
    """A finite real number ``>= minimum`` (``> minimum`` with ``strict``); bools are refused."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
          and bool(np.isfinite(value)) and (value > minimum if strict else value >= minimum))
    if not ok:
        raise ValidationError(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}, "
                              f"got {value!r}", name)


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


def check_items(items, m: int, n_items: int, policy: str) -> np.ndarray:
    """Catalog indices ``(m,)`` of the shown items, integers in ``[0, n_items)``."""
    if items is None:
        raise ValidationError(f"{policy} keeps one model per item: update(..., items=catalog indices (m,))",
                              "items")
    a = np.atleast_1d(np.asarray(items))
    if a.shape != (m,):
        raise ValidationError(f"items must have one entry per row ({m}), got shape {a.shape}", "items")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValidationError(f"items must hold integer catalog indices, got dtype {a.dtype}", "items")
    bad = (a < 0) | (a >= n_items)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValidationError(f"items must be catalog indices in [0, {n_items}), found {a[i]} at row {i}", "items")
    return a.astype(np.int64, copy=False)


def check_candidates(request: Request, n_items: int) -> np.ndarray:
    """A request's catalog indices, checked against a catalog of ``n_items``."""
    items = np.asarray(request.items)
    if items.ndim != 1 or (items.size and not np.issubdtype(items.dtype, np.integer)):
        raise ValidationError(f"request items must be a 1-D array of catalog indices, got {items.dtype}"
                              f"{list(items.shape)}", "items")
    bad = (items < 0) | (items >= n_items)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValidationError(f"request items must be catalog indices in [0, {n_items}), found {items[i]} at "
                              f"candidate {i}", "items")
    return items


def with_intercept(context: np.ndarray) -> np.ndarray:
    """``[1, context]`` for one context ``(d_c,)`` or row-wise for ``(m, d_c)``."""
    c = np.asarray(context, dtype=float)
    ones = np.ones(c.shape[:-1] + (1,))
    return np.concatenate([ones, c], axis=-1)


def overflow_error() -> ValidationError:
    return ValidationError("update would make the model non-finite (rewards or features too large); "
                           "the update was not applied", "reward")


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


def grouped_outer(groups: np.ndarray, n_groups: int, weight: np.ndarray, X: np.ndarray,
                  Y: np.ndarray) -> np.ndarray:
    """``out[g] = sum_{i: groups[i] = g} weight_i X_i Y_i^T``, shape ``(n_groups, d_x, d_y)``.

    The per-row outer products are summed by a sparse (group x row) matrix, in chunks of rows
    so that memory stays bounded for large batches.
    """
    m, dx, dy = len(X), X.shape[1], Y.shape[1]
    out = np.zeros((n_groups, dx * dy))
    chunk = max(1, _OUTER_CHUNK_FLOATS // (dx * dy))
    for s in range(0, m, chunk):
        x, y = X[s:s + chunk], Y[s:s + chunk]
        outer = (x[:, :, None] * y[:, None, :]).reshape(len(x), -1)
        out += grouped_sum(groups[s:s + chunk], n_groups, weight[s:s + chunk], outer)
    return out.reshape(n_groups, dx, dy)


def ridge_step(A, A_inv, b, X, r, w):
    """New ``(A, A_inv, b, theta)`` after adding weighted rows ``X (m, d)``, ``r (m,)``, ``w (m,)``.

    Never modifies its inputs; raises the overflow error if a new array is not finite. One row
    uses Sherman-Morrison, more rows re-invert through a Cholesky factor (cheaper and more
    accurate than m rank-one updates).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        Xw = X * w[:, None]
        A2 = A + Xw.T @ X
        b2 = b + Xw.T @ r
        if not all_finite(A2, b2):
            raise overflow_error()
        A_inv2 = sherman_morrison(A_inv, X[0], w[0]) if len(X) == 1 else spd_inverse(A2)
        theta = A_inv2 @ b2
    if not all_finite(A_inv2, theta):
        raise overflow_error()
    return A2, A_inv2, b2, theta


def check_state(arrays: dict, shapes: dict[str, tuple], policy: str) -> None:
    """A snapshot's arrays must be exactly ``shapes`` (names and shapes), else raise."""
    if set(arrays) != set(shapes):
        raise ValidationError(f"snapshot of {policy} must hold arrays {sorted(shapes)}, got {sorted(arrays)}",
                              "snapshot")
    for k, shape in shapes.items():
        if tuple(np.shape(arrays[k])) != tuple(shape):
            raise ValidationError(f"snapshot array {k!r} has shape {tuple(np.shape(arrays[k]))}, this {policy} "
                                  f"needs {tuple(shape)} (built with another environment?)", "snapshot")


# ---- the shared joint-feature model ---------------------------------------------------------
class JointRidgePolicy(Policy):
    """Base of the policies with one ridge model over joint (context, item) features.

    Needs ``context_dim`` and ``item_dim`` from the environment; its config needs ``reg``.
    Holds ``A``, ``A_inv`` (dim x dim), ``b`` and ``theta`` (dim,) with
    ``dim = item_dim + context_dim * item_dim``; subclasses implement :meth:`scores` (and
    :meth:`distribution` when the slate is not epsilon-greedy over the scores).
    """

    def __init__(self, config, *, context_dim=None, item_dim=None, **env):
        super().__init__(config, **env)
        if context_dim is None or item_dim is None:
            raise ValidationError(
                f"{self.name} needs feature sizes: make(..., context_dim=d_c, item_dim=d_i)", "context_dim"
            )
        self.context_dim, self.item_dim = int(context_dim), int(item_dim)
        self.dim = joint_dim(self.context_dim, self.item_dim)
        self.A = np.eye(self.dim) * config.reg
        self.A_inv = np.eye(self.dim) / config.reg
        self.b = np.zeros(self.dim)
        self.theta = np.zeros(self.dim)
        self._digest = None

    def features(self, request: Request) -> np.ndarray:
        return joint_features(check_context(request.context, self.context_dim), request.item_features)

    def mean(self, request: Request) -> np.ndarray:
        """The ridge estimate ``x^T theta`` of every candidate's reward, shape (n,)."""
        return self.features(request) @ self.theta

    def update(self, context: np.ndarray, item_features: np.ndarray, reward: np.ndarray, *,
               items: np.ndarray | None = None, weight: np.ndarray | None = None) -> None:
        C, V, r = check_rows(context, item_features, reward, context_dim=self.context_dim, item_dim=self.item_dim)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused by update_features
            X = joint_features(C, V)
        self.update_features(X, r, weight)

    def update_features(self, features: np.ndarray, reward: np.ndarray, weight: np.ndarray | None = None) -> None:
        """Ridge update from rows of joint features ``(m, dim)``, rewards ``(m,)`` and optional
        importance weights ``(m,)`` (``A += X^T W X``, ``b += X^T W r``)."""
        X = np.atleast_2d(np.asarray(features, dtype=float))
        r = np.atleast_1d(np.asarray(reward, dtype=float))
        if X.shape[1] != self.dim or len(X) != len(r):
            raise ValidationError(
                f"update needs features (m, {self.dim}) and reward (m,), got {X.shape} and {r.shape}",
                "features",
            )
        if not (np.isfinite(X).all() and np.isfinite(r).all()):
            raise ValidationError("update features and rewards must be finite", "reward")
        w = check_weight(weight, len(r))
        if len(X) == 0:
            return
        # computed on copies: a failed update keeps serving the old state, never a NaN model
        self.A, self.A_inv, self.b, self.theta = ridge_step(self.A, self.A_inv, self.b, X, r, w)
        self.n_updates += 1
        self._changed()

    def _changed(self) -> None:
        """Called after the state changed (update or restore): drop anything derived from it."""
        self._digest = None

    def state_digest(self) -> bytes:
        """A hash of the model (``theta`` and ``A^{-1}`` on :func:`~.sampling.seed_grid`, so that
        the same model learned on another CPU mostly hashes the same), cached until the next change."""
        if self._digest is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(seed_grid(self.theta).tobytes())
            h.update(seed_grid(self.A_inv).tobytes())
            self._digest = h.digest()
        return self._digest

    def replay_seed(self, request: Request) -> int:
        """A Monte-Carlo seed that is a function of the model and the request only, so that
        re-scoring a logged decision with the same model reproduces its logged marginals."""
        h = hashlib.blake2b(self.state_digest(), digest_size=16)
        for a in (np.asarray(request.context, dtype=float), np.asarray(request.items, dtype=np.int64),
                  np.asarray(request.item_features, dtype=float)):
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return int.from_bytes(h.digest(), "little")

    def state(self):
        return {"A": self.A, "A_inv": self.A_inv, "b": self.b, "theta": self.theta}, {"dim": self.dim}

    def set_state(self, arrays, meta):
        if meta.get("dim") != self.dim or set(arrays) != {"A", "A_inv", "b", "theta"}:
            raise ValidationError(f"snapshot is of a {meta.get('dim')}-dimensional {self.name}, this one has "
                                  f"{self.dim} dimensions", "snapshot")
        d = self.dim
        check_state(arrays, {"A": (d, d), "A_inv": (d, d), "b": (d,), "theta": (d,)}, self.name)
        self.A, self.A_inv, self.b = arrays["A"], arrays["A_inv"], arrays["b"]
        self.theta = arrays["theta"]
        self._changed()
