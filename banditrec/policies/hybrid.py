"""LinUCB with hybrid linear models (Li et al. 2010, Algorithm 2).

The expected reward of showing item ``a`` is ``z^T beta + x^T theta_a``: ``z`` are features
shared by all items -- here the joint (context, item) features ``[v, vec(v x^T)]`` of
:func:`banditrec.features.joint_features` (k = d_i + d_c d_i) -- and ``x = [1, context]``
(d = d_c + 1) the item's own, disjoint ones. With ``reg`` in place of the paper's identity
the statistics are Algorithm 2's:

    A0 = reg I_k,  b0 = 0;   per item  A_a = reg I_d,  B_a = 0 (d x k),  b_a = 0
    on a row (a, z, x, r) with weight w:
        A0 += B_a^T A_a^{-1} B_a          b0 += B_a^T A_a^{-1} b_a
        A_a += w x x^T     B_a += w x z^T     b_a += w r x
        A0 += w z z^T - B_a^T A_a^{-1} B_a    b0 += w r z - B_a^T A_a^{-1} b_a
    beta = A0^{-1} b0,   theta_a = A_a^{-1} (b_a - B_a beta)
    s = z^T A0^{-1} z - 2 z^T A0^{-1} B_a^T A_a^{-1} x + x^T A_a^{-1} x
        + x^T A_a^{-1} B_a A0^{-1} B_a^T A_a^{-1} x
    score(a) = z^T beta + x^T theta_a + alpha sqrt(s)

**What it is.** Stack the row features as ``phi = [z, onehot(a) (x) x]`` (k + n_items d).
The weighted ridge problem ``min sum_i w_i (r_i - phi_i^T t)^2 + reg |t|^2`` has the normal
matrix ``M = [[reg I + Z^T W Z, B^T], [B, blockdiag(A_a)]]`` with ``B`` the stacked ``B_a``.
Eliminating the item blocks leaves the Schur complement ``A0 = reg I + Z^T W Z - sum_a B_a^T
A_a^{-1} B_a`` and ``b0 = Z^T W r - sum_a B_a^T A_a^{-1} b_a`` -- exactly what Algorithm 2
accumulates (each row swaps its item's old term for the new one). So ``(beta, theta_a)`` is the
ridge solution ``M^{-1} [Z^T W r; b_a...]`` and ``s = phi^T M^{-1} phi`` by the block inverse:
the hybrid model is LinUCB on ``phi`` computed without ever forming ``M``.

**Updates.** One row updates ``A_a^{-1}`` by Sherman-Morrison, and also ``A0^{-1}``: with
``u = B_a^T A_a^{-1} x`` and ``q = x^T A_a^{-1} x`` (before the row), the two ``A0`` steps
above add up to the rank-one change ``A0 += w (z - u)(z - u)^T / (1 + w q)``. A batch groups
rows by item (sparse sums of ``x x^T``, ``x z^T``, ``r x`` per touched item), re-inverts the
touched ``A_a`` in one batched solve and ``A0`` through its Cholesky factor.

**Scoring** a request's n candidates is batched: with ``u_a = B_a^T A_a^{-1} x``, the mean is
``(z - u_a)^T beta + x^T A_a^{-1} b_a`` and ``s = (z - u_a)^T A0^{-1} (z - u_a) + x^T A_a^{-1} x``
(the paper's terms, regrouped).

Memory is allocated up front: ``8 * n_items * (2 d^2 + d k + d)`` bytes for the per-item
stacks (3.2 MB for 1,000 items with d_c = d_i = 6) plus O(k^2) shared. Updates are checked in
full before the touched items' rows are written in place (see :mod:`.disjoint` on threads).
"""

from __future__ import annotations

import numpy as np

from ..errors import ValidationError
from ..features import joint_dim, joint_features
from .base import Policy, Request
from .linucb import LinUCBConfig  # alpha, epsilon, reg: the same knobs as every LinUCB
from .checks import check_context, check_rows, check_weight
from .ridge import (all_finite, check_candidates, check_items, check_state, env_int, group_index, grouped_outer,
                    grouped_sum, overflow_error, sherman_morrison, spd_inverse, stacked_inverse, with_intercept)


class HybridLinUCB(Policy):
    """Hybrid LinUCB; needs ``n_items``, ``context_dim`` and ``item_dim`` from the environment.

    Attributes: shared ``A0``, ``A0_inv`` (k, k), ``b0``, ``beta`` (k,); per item ``A``,
    ``A_inv`` (n_items, d, d), ``B`` (n_items, d, k), ``b`` (n_items, d).
    """

    name = "hybrid-linucb"
    Config = LinUCBConfig

    def __init__(self, config: LinUCBConfig, *, n_items=None, context_dim=None, item_dim=None, **env):
        super().__init__(config, **env)
        self.n_items = env_int(n_items, "n_items", self.name)
        self.context_dim = env_int(context_dim, "context_dim", self.name)
        self.item_dim = env_int(item_dim, "item_dim", self.name)
        self.k = k = joint_dim(self.context_dim, self.item_dim)
        self.dim = d = self.context_dim + 1
        reg = config.reg
        self.A0, self.A0_inv = np.eye(k) * reg, np.eye(k) / reg
        self.b0, self.beta = np.zeros(k), np.zeros(k)
        self.A = np.repeat((np.eye(d) * reg)[None], self.n_items, axis=0)
        self.A_inv = np.repeat((np.eye(d) / reg)[None], self.n_items, axis=0)
        self.B = np.zeros((self.n_items, d, k))
        self.b = np.zeros((self.n_items, d))

    @property
    def nbytes(self) -> int:
        """Bytes held by the model's arrays."""
        return sum(a.nbytes for a in (self.A0, self.A0_inv, self.b0, self.beta, self.A, self.A_inv, self.B, self.b))

    def theta(self, items) -> np.ndarray:
        """``theta_a = A_a^{-1} (b_a - B_a beta)`` for catalog indices ``items``, shape (n, d)."""
        items = np.asarray(items)
        return np.einsum("nij,nj->ni", self.A_inv[items], self.b[items] - self.B[items] @ self.beta)

    def _parts(self, request: Request):
        """Mean and UCB variance ``s`` of every candidate, shape (n,) each."""
        x = with_intercept(check_context(request.context, self.context_dim))
        idx = check_candidates(request, self.n_items)
        Z = joint_features(request.context, request.item_features)
        if Z.shape[1] != self.k:
            raise ValidationError(f"request item_features must have {self.item_dim} columns, got "
                                  f"{np.shape(request.item_features)}", "item_features")
        Px = self.A_inv[idx] @ x  # (n, d)   A_a^{-1} x
        U = np.einsum("ndk,nd->nk", self.B[idx], Px)  # (n, k)   u_a = B_a^T A_a^{-1} x
        E = Z - U
        # z.beta + x.theta_a = z.beta + (A_a^{-1} x).(b_a - B_a beta) = (z - u_a).beta + (A_a^{-1} x).b_a
        mean = E @ self.beta + np.einsum("nd,nd->n", Px, self.b[idx])
        s = np.einsum("nk,nk->n", E @ self.A0_inv, E) + Px @ x
        return mean, s

    def scores(self, request: Request) -> np.ndarray:
        mean, s = self._parts(request)
        return mean + self.config.alpha * np.sqrt(np.maximum(s, 0.0))

    def update(self, context: np.ndarray, item_features: np.ndarray, reward: np.ndarray, *,
               items: np.ndarray | None = None, weight: np.ndarray | None = None) -> None:
        """Learn from rows ``context (m, d_c)``, ``item_features (m, d_i)``, ``reward (m,)`` of
        items ``items (m,)`` (catalog indices, required) with importance weights ``weight (m,)``."""
        C, V, r = check_rows(context, item_features, reward, context_dim=self.context_dim, item_dim=self.item_dim)
        m = len(C)
        a = check_items(items, m, self.n_items, self.name)
        w = check_weight(weight, m)
        if m == 0:
            return
        X = with_intercept(C)
        with np.errstate(over="ignore", invalid="ignore"):
            Z = joint_features(C, V)
            new = self._single(a[0], X[0], Z[0], r[0], w[0]) if m == 1 else self._batch(a, X, Z, r, w)
        if not all_finite(*new):
            raise overflow_error()
        touched, A_t, P_t, B_t, b_t, A0, A0_inv, b0, beta = new
        # every new value is checked: commit
        self.A[touched], self.A_inv[touched], self.B[touched], self.b[touched] = A_t, P_t, B_t, b_t
        self.A0, self.A0_inv, self.b0, self.beta = A0, A0_inv, b0, beta
        self.n_updates += 1

    def _single(self, a, x, z, r, w):
        """One row, Algorithm 2 step by step; Sherman-Morrison for A_a^{-1} and A0^{-1}."""
        P, Ba, ba = self.A_inv[a], self.B[a], self.b[a]
        Px = P @ x
        A0 = self.A0 + Ba.T @ (P @ Ba)
        b0 = self.b0 + Ba.T @ (P @ ba)
        A_a = self.A[a] + w * np.outer(x, x)
        B_a = Ba + w * np.outer(x, z)
        b_a = ba + (w * r) * x
        P_a = sherman_morrison(P, x, w)
        A0 = A0 + w * np.outer(z, z) - B_a.T @ (P_a @ B_a)
        b0 = b0 + (w * r) * z - B_a.T @ (P_a @ b_a)
        # the net change of A0 is rank one: w (z - u)(z - u)^T / (1 + w x^T A_a^{-1} x)
        e = z - Ba.T @ Px
        A0_inv = sherman_morrison(self.A0_inv, e, w / (1.0 + w * (x @ Px)))
        beta = A0_inv @ b0
        return (np.array([a]), A_a[None], P_a[None], B_a[None], b_a[None], A0, A0_inv, b0, beta)

    def _batch(self, a, X, Z, r, w):
        """Many rows: grouped sums per touched item, batched solves; the same statistics."""
        touched, groups = group_index(a)
        t = len(touched)
        P_old, B_old, b_old = self.A_inv[touched], self.B[touched], self.b[touched]
        A_t = self.A[touched] + grouped_outer(groups, t, w, X, X)
        B_t = B_old + grouped_outer(groups, t, w, X, Z)
        b_t = b_old + grouped_sum(groups, t, w * r, X)
        Zw = Z * w[:, None]
        if not all_finite(A_t, B_t, b_t, Zw):
            raise overflow_error()
        P_t = stacked_inverse(A_t)
        # Algorithm 2, summed over the touched items: swap each item's Schur term old -> new
        A0 = (self.A0 + np.einsum("tdk,tdl->kl", B_old, P_old @ B_old) + Zw.T @ Z
              - np.einsum("tdk,tdl->kl", B_t, P_t @ B_t))
        b0 = (self.b0 + np.einsum("tdk,td->k", B_old, np.einsum("tij,tj->ti", P_old, b_old)) + Zw.T @ r
              - np.einsum("tdk,td->k", B_t, np.einsum("tij,tj->ti", P_t, b_t)))
        if not all_finite(A0, b0):
            raise overflow_error()
        A0_inv = spd_inverse(A0)
        return (touched, A_t, P_t, B_t, b_t, A0, A0_inv, b0, A0_inv @ b0)

    # ---- snapshots ----------------------------------------------------------------------
    def _shapes(self):
        n, d, k = self.n_items, self.dim, self.k
        return {"A0": (k, k), "A0_inv": (k, k), "b0": (k,), "beta": (k,),
                "A": (n, d, d), "A_inv": (n, d, d), "B": (n, d, k), "b": (n, d)}

    def state(self):
        arrays = {name: getattr(self, name) for name in self._shapes()}
        return arrays, {"n_items": self.n_items, "dim": self.dim, "k": self.k}

    def set_state(self, arrays, meta):
        n, d, k = self.n_items, self.dim, self.k
        if (meta.get("n_items"), meta.get("dim"), meta.get("k")) != (n, d, k):
            raise ValidationError(f"snapshot is of a {self.name} with (n_items, d, k) = ({meta.get('n_items')}, "
                                  f"{meta.get('dim')}, {meta.get('k')}), this one has ({n}, {d}, {k})", "snapshot")
        check_state(arrays, self._shapes(), self.name)
        for name in self._shapes():  # own copies: updates write into the per-item stacks in place
            setattr(self, name, np.array(arrays[name], dtype=float))
