"""LinUCB with hybrid linear models (Li et al. 2010, Algorithm 2): shared features plus a
per-item effect with its own uncertainty, the items' prior estimated by empirical Bayes.

Details: docs/policies.md, "Hybrid LinUCB (`policies/hybrid.py`)".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.linalg import blas, cholesky

from ..errors import ValidationError
from ..features import joint_dim, joint_features
from .base import Request, Rows, cold_flags
from .checks import check_context, check_rows, check_weight
from .linucb import LinUCBConfig
from .peritem import PerItemPolicy
from .ridge import (
    RewardStats,
    all_finite,
    check_candidates,
    check_items,
    check_number,
    env_int,
    group_index,
    grouped_outer,
    grouped_sum,
    overflow_error,
    row_discounts,
    sherman_morrison,
    spd_inverse,
    stacked_inverse,
    with_intercept,
)
from .terms import FeatureNames, ScoreTerms

LOCAL = ("bias", "context")


class _Step(NamedTuple):
    """An update's new statistics, checked before any is committed: the ``touched`` items'
    ``A``, ``A_inv`` (t, d, d), ``B`` (t, d, k), ``b`` (t, d), and the shared ``A0``,
    ``A0_inv`` (k, k), ``b0``, ``beta`` (k,) and data sums ``ZZ`` (k, k), ``Zr`` (k,)."""

    touched: np.ndarray
    A: np.ndarray
    A_inv: np.ndarray
    B: np.ndarray
    b: np.ndarray
    A0: np.ndarray
    A0_inv: np.ndarray
    b0: np.ndarray
    beta: np.ndarray
    ZZ: np.ndarray
    Zr: np.ndarray


@dataclass(frozen=True)
class HybridConfig(LinUCBConfig):
    """``local``: each item's own features, ``bias`` (an effect per item) or ``context``;
    ``item_reg``: the ridge penalty ``rho`` of the items' own coefficients, 0 to estimate it
    from the data (``local=bias``; ``reg`` for ``local=context``) -- see docs/policies.md,
    "Hybrid LinUCB"."""

    local: str = "bias"
    item_reg: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.local not in LOCAL:
            raise ValidationError(f"local must be one of {', '.join(LOCAL)}, got {self.local!r}", "local")
        check_number(self.item_reg, "item_reg", minimum=0.0)


class HybridLinUCB(PerItemPolicy):
    """Hybrid LinUCB; needs ``context_dim`` and ``item_dim`` from the environment (and takes
    ``n_items``, the catalog size known so far).

    Attributes: shared ``A0``, ``A0_inv`` (k, k), ``b0``, ``beta`` (k,), the data sums ``ZZ``
    (k, k), ``Zr`` (k,), the items' prior ``item_prior`` (1,) = ``[rho]``; per item ``A``,
    ``A_inv`` (n_items, d, d), ``B`` (n_items, d, k), ``b`` (n_items, d).
    """

    name = "hybrid-linucb"
    Config = HybridConfig
    config: HybridConfig
    needs = frozenset({"items"})
    _shared_names = ("A0", "A0_inv", "b0", "beta", "ZZ", "Zr", "item_prior")
    _chol: tuple | None = None  # (A0_inv, its Cholesky factor) of the last scored model

    def __init__(self, config: HybridConfig, *, context_dim=None, item_dim=None, **env):
        super().__init__(config, **env)
        self.context_dim = env_int(context_dim, "context_dim", self.name)
        self.item_dim = env_int(item_dim, "item_dim", self.name)
        self.k = k = joint_dim(self.context_dim, self.item_dim)
        self.dim = d = self.context_dim + 1 if config.local == "context" else 1
        reg = config.reg
        self.A0, self.A0_inv = np.eye(k) * reg, np.eye(k) / reg
        self.b0, self.beta = np.zeros(k), np.zeros(k)
        self.ZZ, self.Zr = np.zeros((k, k)), np.zeros(k)
        rho = config.item_reg or reg
        self.item_prior = np.array([rho])
        self._stack("A", np.eye(d) * rho)
        self._stack("A_inv", np.eye(d) / rho)
        self._stack("B", np.zeros((d, k)))
        self._stack("b", np.zeros(d))

    def _meta(self) -> dict:
        return {"dim": self.dim, "k": self.k, "local": self.config.local}

    def _item_reg(self) -> float:
        return float(self.item_prior[0])

    @property
    def auto_prior(self) -> bool:
        """Whether the items' prior is estimated from the data (docs/policies.md, "Hybrid LinUCB")."""
        return self.config.item_reg == 0 and self.config.local == "bias"

    def local_features(self, context: np.ndarray) -> np.ndarray:
        """Each item's own features ``x`` for one context ``(d_c,)`` or rows ``(m, d_c)``."""
        c = np.asarray(context, dtype=float)
        return with_intercept(c) if self.config.local == "context" else np.ones(c.shape[:-1] + (1,))

    def theta(self, items) -> np.ndarray:
        """``theta_a = A_a^{-1} (b_a - B_a beta)`` for catalog indices ``items``, shape (n, d)."""
        items = np.asarray(items, dtype=np.int64)
        b, B = self._gather("b", items), self._gather("B", items)
        return np.einsum("nij,nj->ni", self._gather("A_inv", items), b - B @ self.beta)

    def _parts(self, request: Request):
        """Mean and UCB variance ``s`` of every candidate, shape (n,) each."""
        c = check_context(request.context, self.context_dim)
        x = self.local_features(c)
        idx = check_candidates(request)
        V = np.asarray(request.item_features, dtype=float)
        if V.ndim != 2 or V.shape[1] != self.item_dim:
            raise ValidationError(
                f"request item_features must have {self.item_dim} columns, got {np.shape(request.item_features)}",
                "item_features",
            )
        Z = joint_features(c, V, cold_flags(request.cold, len(V), "cold"))
        Px = self._gather("A_inv", idx) @ x  # (n, d)   A_a^{-1} x
        U = np.einsum("ndk,nd->nk", self._gather("B", idx), Px)  # (n, k)   u_a = B_a^T A_a^{-1} x
        E = Z - U
        # z.beta + x.theta_a = z.beta + (A_a^{-1} x).(b_a - B_a beta) = (z - u_a).beta + (A_a^{-1} x).b_a
        mean = E @ self.beta + np.einsum("nd,nd->n", Px, self._gather("b", idx))
        s = self._shared_quadratic(E) + Px @ x
        return mean, s

    def _shared_quadratic(self, E: np.ndarray) -> np.ndarray:
        """``e^T A0^{-1} e`` for every row of ``E``: ``||L^T e||^2`` with ``A0^{-1} = L L^T``
        (a triangular product, half the work of ``E @ A0^{-1}``; ``L`` cached per model)."""
        cached = self._chol
        if cached is None or cached[0] is not self.A0_inv:
            try:
                L = cholesky(self.A0_inv, lower=True, check_finite=False)
            except np.linalg.LinAlgError:
                L = None  # not numerically positive definite: the plain product below
            cached = self._chol = (self.A0_inv, L)
        L = cached[1]
        if L is None or not len(E):
            return np.einsum("nk,nk->n", E @ self.A0_inv, E)
        Y = blas.dtrmm(1.0, L, np.asfortranarray(E.T), side=0, lower=1, trans_a=1)  # L^T E^T
        return np.einsum("kn,kn->n", Y, Y)

    def scores(self, request: Request) -> np.ndarray:
        mean, s = self._parts(request)
        return mean + self.config.alpha * self.noise_sd * np.sqrt(np.maximum(s, 0.0))

    def score_terms(self, request: Request, names: FeatureNames) -> ScoreTerms:
        """The shared terms ``z_j beta_j`` (joint features, named as LinUCB's), then the item's own
        ``x_l theta_{a,l}`` (``own``, and ``own × ctx:...`` with ``local=context``), and the UCB
        width of :meth:`scores`: ``z . beta + x . theta_a`` is the mean of :meth:`_parts`."""
        _, s = self._parts(request)
        c = check_context(request.context, self.context_dim)
        V = np.asarray(request.item_features, dtype=float)
        Z = joint_features(c, V, cold_flags(request.cold, len(V), "cold"))
        x = self.local_features(c)
        own = names.own(self.context_dim) if self.config.local == "context" else ("own",)
        values = np.concatenate([Z * self.beta, self.theta(check_candidates(request)) * x], axis=1)
        bonus = self.config.alpha * self.noise_sd * np.sqrt(np.maximum(s, 0.0))
        return ScoreTerms((*names.joint(self.context_dim, self.item_dim), *own), values, bonus, "ucb")

    def learn(self, rows: Rows) -> None:
        """Learn from rows ``context (m, d_c)``, ``item_features (m, d_i)``, ``reward (m,)`` of
        items ``items (m,)`` (catalog indices, required) with importance weights ``weight (m,)``
        and cold flags ``cold (m,)`` (the shared features')."""
        C, V, r = check_rows(
            rows.context, rows.item_features, rows.reward, context_dim=self.context_dim, item_dim=self.item_dim
        )
        m = len(C)
        a = check_items(rows.items, m, self.name)
        w = check_weight(rows.weight, m)
        cold = cold_flags(rows.cold, m, "cold")
        if m == 0:
            return
        gamma = self.config.gamma
        stats = RewardStats.step(self.stats, r, w, gamma)
        self._ensure(int(a.max()) + 1)  # new rows at the prior: harmless if the update fails
        X = self.local_features(C)
        with np.errstate(over="ignore", invalid="ignore"):
            Z = joint_features(C, V, cold)
            if gamma < 1.0:
                new = self._discounted(a, X, Z, r, w, gamma)
            elif m == 1:
                new = self._single(a[0], X[0], Z[0], r[0], w[0])
            else:
                new = self._batch(a, X, Z, r, w)
        if not all_finite(*new[1:], stats):  # every statistic but the touched indices
            raise overflow_error()
        # every new value is checked: commit
        t = new.touched
        self.A[t], self.A_inv[t], self.B[t], self.b[t] = new.A, new.A_inv, new.B, new.b
        self.A0, self.A0_inv, self.b0, self.beta = new.A0, new.A0_inv, new.b0, new.beta
        self.ZZ, self.Zr = new.ZZ, new.Zr
        self.stats, self._sigma = stats, None
        self.n_updates += 1
        if self.auto_prior:
            self._reestimate_prior()

    def _reestimate_prior(self) -> None:
        """Empirical Bayes for ``rho`` (docs/policies.md, "Hybrid LinUCB"); rebuild when it
        moved by more than 10%."""
        old = self._item_reg()
        n_a = self.A[:, 0, 0] - old  # each item's weighted rows (x = [1])
        seen = n_a > 1e-12
        if seen.sum() < 2:
            return
        sigma2 = self.noise_sd**2
        e = (self.b[seen, 0] - self.B[seen, 0, :] @ self.beta) / n_a[seen]
        tau2 = (n_a[seen] @ (e * e) - seen.sum() * sigma2) / n_a[seen].sum()
        rho = float(np.clip(sigma2 / max(tau2, 1e-300), 1e-2, 1e4))
        if abs(np.log(rho / old)) <= np.log(1.1):
            return
        eye = np.eye(self.dim)
        with np.errstate(over="ignore", invalid="ignore"):
            A_t = self.A + (rho - old) * eye
            P_t, A0, A0_inv, b0, beta = self._assemble(A_t, self.B, self.b, self.ZZ, self.Zr)
        if not all_finite(P_t, A0, A0_inv, b0, beta):
            return  # keep the prior it has: the model stays as it was
        self.A[:], self.A_inv[:] = A_t, P_t
        self.A0, self.A0_inv, self.b0, self.beta = A0, A0_inv, b0, beta
        self.item_prior = np.array([rho])
        self._priors["A"], self._priors["A_inv"] = eye * rho, eye / rho
        self._sigma = None

    def _assemble(self, A_t, B_t, b_t, ZZ, Zr):
        """``(A_a^{-1} stack, A0, A0^{-1}, b0, beta)`` from every learned item's statistics."""
        P_t = stacked_inverse(A_t)
        A0 = self.config.reg * np.eye(self.k) + ZZ - _schur(B_t, P_t, B_t)
        b0 = Zr - _schur_b(B_t, P_t, b_t)
        if not all_finite(A0, b0):
            raise overflow_error()
        A0_inv = spd_inverse(A0)
        return P_t, A0, A0_inv, b0, A0_inv @ b0

    def set_state(self, arrays, meta):
        super().set_state(arrays, meta)
        rho, eye = self._item_reg(), np.eye(self.dim)
        self._priors["A"], self._priors["A_inv"] = eye * rho, eye / rho
        n = meta["n_items"]  # items past the snapshot's start at its prior
        self.A[n:], self.A_inv[n:] = eye * rho, eye / rho

    def _fit_terms(self) -> tuple[float, float]:
        """By block elimination ``t . c = sum_a b_a^T A_a^{-1} b_a + b0 . beta``; the effective
        number of parameters is at most ``k - reg trace(A0^{-1})`` plus the items' (the cross
        terms of ``trace(M^{-1})`` are left out, which can only overstate it)."""
        fitted, df = self._per_item_fit()
        return fitted + float(self.b0 @ self.beta), df + self.k - self.config.reg * float(np.trace(self.A0_inv))

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
        ZZ, Zr = self.ZZ + w * np.outer(z, z), self.Zr + (w * r) * z
        return _Step(
            touched=np.array([a]),
            A=A_a[None],
            A_inv=P_a[None],
            B=B_a[None],
            b=b_a[None],
            A0=A0,
            A0_inv=A0_inv,
            b0=b0,
            beta=beta,
            ZZ=ZZ,
            Zr=Zr,
        )

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
        ZwZ, Zwr = Zw.T @ Z, Zw.T @ r
        # Algorithm 2, summed over the touched items: swap each item's Schur term old -> new
        A0 = self.A0 + _schur(B_old, P_old, B_old) + ZwZ - _schur(B_t, P_t, B_t)
        b0 = self.b0 + _schur_b(B_old, P_old, b_old) + Zwr - _schur_b(B_t, P_t, b_t)
        if not all_finite(A0, b0):
            raise overflow_error()
        A0_inv = spd_inverse(A0)
        return _Step(
            touched=touched,
            A=A_t,
            A_inv=P_t,
            B=B_t,
            b=b_t,
            A0=A0,
            A0_inv=A0_inv,
            b0=b0,
            beta=A0_inv @ b0,
            ZZ=self.ZZ + ZwZ,
            Zr=self.Zr + Zwr,
        )

    def _discounted(self, a, X, Z, r, w, gamma):
        """Every statistic's data part decays by ``gamma^m``, row i counts ``gamma^(m-1-i) w_i``;
        ``A0`` and ``b0`` are rebuilt from the sums over every learned item."""
        age, decay = row_discounts(len(X), gamma)
        we = w * age
        d = self.dim
        prior = np.eye(d) * self._item_reg()
        touched = np.arange(self.n_items)
        A_t = prior + decay * (self.A - prior)
        B_t, b_t = decay * self.B, decay * self.b
        items, groups = group_index(a)
        t = len(items)
        A_t[items] += grouped_outer(groups, t, we, X, X)
        B_t[items] += grouped_outer(groups, t, we, X, Z)
        b_t[items] += grouped_sum(groups, t, we * r, X)
        Zw = Z * we[:, None]
        ZZ, Zr = decay * self.ZZ + Zw.T @ Z, decay * self.Zr + Zw.T @ r
        if not all_finite(A_t, B_t, b_t, ZZ, Zr):
            raise overflow_error()
        P_t, A0, A0_inv, b0, beta = self._assemble(A_t, B_t, b_t, ZZ, Zr)
        return _Step(
            touched=touched, A=A_t, A_inv=P_t, B=B_t, b=b_t, A0=A0, A0_inv=A0_inv, b0=b0, beta=beta, ZZ=ZZ, Zr=Zr
        )


def _schur(B: np.ndarray, P: np.ndarray, C: np.ndarray) -> np.ndarray:
    """``sum_a B_a^T P_a C_a`` over a stack: (t, d, k), (t, d, d), (t, d, l) -> (k, l)."""
    t, d, k = B.shape
    return B.reshape(t * d, k).T @ (P @ C).reshape(t * d, -1)


def _schur_b(B: np.ndarray, P: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_a B_a^T P_a b_a`` over a stack: (t, d, k), (t, d, d), (t, d) -> (k,)."""
    t, d, k = B.shape
    return B.reshape(t * d, k).T @ np.einsum("tij,tj->ti", P, b).reshape(t * d)
