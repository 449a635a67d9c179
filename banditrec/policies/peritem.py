"""Per-item model state that grows with the catalog: what disjoint and hybrid LinUCB share.
An item the policy has not learned about is cold and scored with the prior, never refused.

Details: docs/policies.md, "Per-item state (`policies/peritem.py`)".
"""

from __future__ import annotations

import operator
from abc import abstractmethod
from typing import Any, cast

import numpy as np

from ..errors import ValidationError
from .base import Policy, PolicyConfig
from .ridge import RewardStats, RidgeKnobs, check_int, check_state


def env_size(value, name: str) -> int:
    """An optional size from the environment: ``None`` is 0, else an integer >= 0."""
    if value is None:
        return 0
    try:
        value = operator.index(value)
    except TypeError:
        raise ValidationError(f"{name} must be an integer >= 0, got {value!r}", name) from None
    return check_int(value, name, minimum=0)


class PerItemPolicy(Policy):
    """Base of the policies with per-item statistics.

    Subclasses call :meth:`_stack` in ``__init__`` for each per-item array with the value of an
    item without data (its prior) -- ``policy.<name>`` is then its first ``n_items`` rows, a
    view that updates write through -- and list their shared (not per-item) arrays in
    ``_shared_names``; :meth:`_gather` reads rows for any indices (cold ones get the prior),
    :meth:`_ensure` grows the stacks before an update writes rows. ``stats`` is the reward
    scale (:class:`~.ridge.RewardStats`).
    """

    _shared_names: tuple[str, ...] = ()

    def __init__(self, config: PolicyConfig, *, n_items: int | None = None, **env: Any) -> None:
        super().__init__(config, **env)
        self.n_items = env_size(n_items, "n_items")
        self._stacks: dict[str, np.ndarray] = {}
        self._priors: dict[str, np.ndarray] = {}
        self.stats = RewardStats.EMPTY.copy()
        self._sigma: float | None = None

    # ---- the stacks -------------------------------------------------------------------------
    def _stack(self, name: str, prior: np.ndarray) -> None:
        prior = np.asarray(prior, dtype=float)
        self._priors[name] = prior
        self._stacks[name] = np.broadcast_to(prior, (self.n_items,) + prior.shape).copy()

    def _capacity(self) -> int:
        return len(next(iter(self._stacks.values())))

    def _ensure(self, n: int) -> None:
        """Grow every stack to hold ``n`` items (new rows at their prior)."""
        if n <= self.n_items:
            return
        if n > self._capacity():
            cap = max(n, 2 * self._capacity(), 16)
            for name, old in self._stacks.items():
                new = np.broadcast_to(self._priors[name], (cap,) + old.shape[1:]).copy()
                new[: self.n_items] = old[: self.n_items]
                self._stacks[name] = new
        else:  # rows past the old size hold whatever prior they were allocated with
            for name, stack in self._stacks.items():
                stack[self.n_items : n] = self._priors[name]
        self.n_items = n

    def _rows(self, name: str) -> np.ndarray:
        """The first ``n_items`` rows of a stack (a view: updates write through it)."""
        return self._stacks[name][: self.n_items]

    def __getattr__(self, name: str):
        """A stack by its name (``policy.A`` is ``policy._rows("A")``)."""
        stacks = self.__dict__.get("_stacks", {})
        if name in stacks:
            return self._rows(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _gather(self, name: str, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` of a stack; indices past the learned items get the prior."""
        stack = self._stacks[name]
        inside = idx < self.n_items
        if inside.all():
            return stack[idx]
        out = np.broadcast_to(self._priors[name], (len(idx),) + stack.shape[1:]).copy()
        out[inside] = stack[idx[inside]]
        return out

    @property
    def noise_sd(self) -> float:
        """The standard deviation of a reward around the model (:meth:`~.ridge.RewardStats.noise_sd`),
        cached until the next update or restore."""
        if self._sigma is None:
            fitted, df = self._fit_terms()
            self._sigma = RewardStats.noise_sd(self.stats, fitted, df)
        return self._sigma

    @abstractmethod
    def _fit_terms(self) -> tuple[float, float]:
        """``(t . c, effective number of parameters)`` of the ridge solution (see
        :meth:`~.ridge.RewardStats.noise_sd`); O(n_items) per call, made once per state."""

    def _per_item_fit(self) -> tuple[float, float]:
        """``(sum_a b_a^T A_a^{-1} b_a, sum_a (d - reg trace(A_a^{-1})))`` over the learned items
        (an item without data adds 0 to both)."""
        P, b = self._rows("A_inv"), self._rows("b")
        seen = (P != self._priors["A_inv"]).any(axis=(1, 2))  # the sums skip items without data
        P, b = P[seen], b[seen]
        fitted = float(np.einsum("ni,nij,nj->", b, P, b))
        df = float(np.sum(P.shape[-1] - self._item_reg() * np.einsum("nii->n", P)))
        return fitted, df

    def _item_reg(self) -> float:
        """The ridge penalty of the per-item coefficients (the prior ``A_a = reg I``)."""
        return cast(RidgeKnobs, self.config).reg  # the subclasses' configs are LinUCB's (check_ridge)

    # ---- snapshots ----------------------------------------------------------------------------
    def _meta(self) -> dict:
        """What must match between a snapshot and this policy (besides the item count)."""
        return {}

    def state(self):
        arrays = {name: self._rows(name) for name in self._stacks}
        arrays.update({name: getattr(self, name) for name in self._shared_names})
        arrays["stats"] = self.stats
        return arrays, {"n_items": self.n_items, **self._meta()}

    def set_state(self, arrays, meta):
        """Restore :meth:`state`. The snapshot may know fewer items than this policy was built
        for (a catalog that grew since): those rows are restored and the others start cold;
        it may know more (items the environment no longer lists): they are kept. A snapshot
        without the reward scale (``stats``, written before it was kept) restores the model and
        restarts the noise estimate at its prior."""
        if "stats" not in arrays:  # written before the reward scale was kept: it restarts at its prior
            arrays = {**arrays, "stats": RewardStats.EMPTY.copy()}
        want = self._meta()
        got = {k: meta.get(k) for k in want}
        if got != want:
            raise ValidationError(f"snapshot is of a {self.name} with {got}, this one has {want}", "snapshot")
        n = meta.get("n_items")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValidationError(f"snapshot meta n_items must be an integer >= 0, got {n!r}", "snapshot")
        shapes = {name: (n,) + self._priors[name].shape for name in self._stacks}
        shapes.update({name: np.shape(getattr(self, name)) for name in self._shared_names})
        shapes["stats"] = (RewardStats.SIZE,)
        check_state(arrays, shapes, self.name)
        size = max(n, self.n_items)
        for name in self._stacks:  # own copies: updates write into the stacks in place
            stack = np.broadcast_to(self._priors[name], (size,) + self._priors[name].shape).copy()
            stack[:n] = np.asarray(arrays[name], dtype=float)
            self._stacks[name] = stack
        self.n_items = size
        for name in self._shared_names:
            setattr(self, name, np.array(arrays[name], dtype=float))
        self.stats = np.array(arrays["stats"], dtype=float)
        self._sigma = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the model's arrays (per-item stacks at their capacity, shared arrays)."""
        return sum(a.nbytes for a in self._stacks.values()) + sum(
            np.asarray(getattr(self, n)).nbytes for n in self._shared_names
        )
