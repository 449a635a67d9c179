"""Reward models ``q(x, a, k)`` for the direct method and the doubly robust family: ridge,
logistic and gradient-boosted trees behind one protocol (:class:`RewardModel`), cross-fitted.

Details: docs/evaluation.md, "Reward models (`ope/reward_model.py`)".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike

from ..errors import ValidationError
from ..types import LoggedBandit

_FOLD_SALT = 0xF01D5
_PAIR_CHUNK = 1 << 20  # (row, item) pairs predicted at a time: bounds the design's memory


def decision_folds(keys: ArrayLike, n_folds: int, seed: int) -> np.ndarray:
    """Fold in ``[0, n_folds)`` of each decision key (e.g. its log sequence number).

    A splitmix64 hash of the key mixed with ``seed``: independent of the rewards, about
    balanced, and the same for a decision whatever else is in the log, so a whole log and its
    partitions cross-fit with the same folds.
    """
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise ValidationError(f"n_folds must be an integer >= 2, got {n_folds!r}", "n_folds")
    mix = np.random.SeedSequence([int(seed), _FOLD_SALT]).generate_state(1, dtype=np.uint64)[0]
    z = np.asarray(keys, dtype=np.int64).astype(np.uint64) + mix
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    fold: np.ndarray = (z % np.uint64(n_folds)).astype(np.int64)
    return fold


@dataclass(frozen=True)
class Folds:
    """Cross-fitted models: the fold of each row and, per fold, the model fitted without it."""

    fold: np.ndarray
    fitted: tuple[Any, ...]


def _pairs(target_rows: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(row, item, weight)`` of the nonzero entries of a (rows x items) matrix, row-major."""
    t = target_rows.tocsr() if sp.issparse(target_rows) else sp.csr_matrix(np.asarray(target_rows, dtype=float))
    row = np.repeat(np.arange(t.shape[0]), np.diff(t.indptr))
    return row, t.indices.astype(np.int64), t.data


def _threads(n: int) -> Any:
    """Native thread pools (OpenMP, BLAS) limited to ``n`` while a library model fits or
    predicts: its results then do not depend on the machine's core count, and it does not spin
    against other processes on a shared machine."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


def _check_threads(n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValidationError(f"n_threads must be a positive integer, got {n!r}", "n_threads")


def _binary(reward: np.ndarray) -> bool:
    return bool(((reward == 0) | (reward == 1)).all())


class RewardModel(ABC):
    """What every reward model provides; subclasses define :meth:`fit` and :meth:`q`.

    ``fit(data, rows)`` returns a fitted state (arrays or a fitted estimator);
    ``q(fitted, data, rows, items)`` is the predicted reward of ``items[j]`` in the slot and
    context of logged row ``rows[j]``. ``item_features (n_actions, p)``, where a model takes
    them, describe every item (a model that does not know an item's features cannot predict it).
    """

    name: ClassVar[str] = "model"

    @abstractmethod
    def fit(self, data: LoggedBandit, rows: np.ndarray | None = None) -> Any:
        """The fitted state on ``rows`` of ``data`` (all rows by default)."""

    @abstractmethod
    def q(self, fitted: Any, data: LoggedBandit, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted rewards of ``items[j]`` in the slot and context of row ``rows[j]``."""

    def with_item_features(self, item_features: np.ndarray | None) -> RewardModel:
        """This model using ``item_features`` (models that use none return themselves)."""
        return self

    # -- shared machinery
    def predict(
        self, fitted: Any, data: LoggedBandit, rows: np.ndarray, target_rows: Any = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``q(x_i, a_i, k_i)`` for ``rows`` and, given the target's ``(len(rows), A)``
        distribution over items in each row's slot (dense or scipy sparse),
        ``sum_a pi(a | x_i, k_i) q(x_i, a, k_i)``."""
        rows = np.asarray(rows, dtype=np.int64)
        logged = self.q(fitted, data, rows, data.action[rows])
        if target_rows is None:
            return logged, None
        row, item, weight = _pairs(target_rows)
        return logged, np.bincount(
            row, weights=weight * self.q_pairs(fitted, data, rows[row], item), minlength=len(rows)
        )

    def q_pairs(self, fitted: Any, data: LoggedBandit, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """:meth:`q` over many (row, item) pairs, a bounded chunk at a time."""
        out = np.empty(len(rows))
        for start in range(0, len(rows), _PAIR_CHUNK):
            s = slice(start, start + _PAIR_CHUNK)
            out[s] = self.q(fitted, data, rows[s], items[s])
        return out

    def fit_folds(
        self,
        data: LoggedBandit,
        *,
        n_folds: int,
        rng: np.random.Generator | None = None,
        fold: np.ndarray | None = None,
    ) -> Folds:
        """The fold of each row (folds are sets of decisions) and the model fitted without each
        fold: what :meth:`predict_folds` needs, fitted once for any number of targets.

        ``fold (n_rows,)``: given folds (e.g. from :func:`decision_folds`); else a balanced
        permutation of the decisions drawn from ``rng``.
        """
        if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer) or n_folds < 2:
            raise ValidationError(f"n_folds must be an integer >= 2, got {n_folds!r}", "n_folds")
        if fold is None:
            if data.n_decisions < n_folds:
                raise ValidationError(
                    f"cross-fitting with {n_folds} folds needs at least {n_folds} decisions, got {data.n_decisions}",
                    "n_folds",
                )
            if rng is None:
                raise ValidationError("fit_folds needs an rng or the folds", "rng")
            fold = (rng.permutation(data.n_decisions) % n_folds)[data.decision]
        else:
            fold = np.asarray(fold, dtype=np.int64)
            if fold.shape != (data.n_rows,) or (len(fold) and (fold.min() < 0 or fold.max() >= n_folds)):
                raise ValidationError(
                    f"fold must hold one integer in [0, {n_folds}) per logged row ({data.n_rows})", "fold"
                )
        fitted = []
        for f in range(n_folds):
            train = np.flatnonzero(fold != f)
            if not len(train):
                raise ValidationError(
                    f"cross-fitting needs decisions outside every fold; all {data.n_decisions} "
                    f"decisions fell in fold {f} (log more decisions)",
                    "n_folds",
                )
            fitted.append(self.fit(data, train))
        return Folds(fold, tuple(fitted))

    def fold_q(self, folds: Folds, data: LoggedBandit, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``q`` of (row, item) pairs, each from the model that did not see its row's fold."""
        rows = np.asarray(rows, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        out = np.empty(len(rows))
        which = folds.fold[rows]
        for f, fitted in enumerate(folds.fitted):
            sel = np.flatnonzero(which == f)
            if len(sel):
                out[sel] = self.q_pairs(fitted, data, rows[sel], items[sel])
        return out

    def predict_folds(
        self, folds: Folds, data: LoggedBandit, target_rows: Any = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Each row's cross-fitted ``(q_logged (n,), q_target (n,) or None)``; ``target_rows
        (n, A)`` dense or sparse as for :meth:`predict`."""
        q_logged = self.fold_q(folds, data, np.arange(data.n_rows), data.action)
        if target_rows is None:
            return q_logged, None
        row, item, weight = _pairs(target_rows)
        q = self.fold_q(folds, data, row, item)
        return q_logged, np.bincount(row, weights=weight * q, minlength=data.n_rows)

    def cross_fit(
        self, data: LoggedBandit, target_rows: Any, *, n_folds: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Cross-fitted ``(q_logged (n,), q_target (n,) or None)``; folds are sets of decisions."""
        return self.predict_folds(self.fit_folds(data, n_folds=n_folds, rng=rng), data, target_rows)


def _one_hot(index: np.ndarray, width: int) -> sp.csr_matrix:
    n = len(index)
    return sp.csr_matrix((np.ones(n), (np.arange(n), index)), shape=(n, width))


def _check_item_features(features: ArrayLike | None, n_actions: int | None = None) -> np.ndarray | None:
    if features is None:
        return None
    f = np.array(features, dtype=float)  # a copy: frozen below, the caller's array untouched
    if f.ndim != 2:
        raise ValidationError(f"item_features must have shape (n_items, p), got {f.shape}", "item_features")
    if not np.isfinite(f).all():
        i, j = np.argwhere(~np.isfinite(f))[0]
        raise ValidationError(f"item_features must be finite, found {f[i, j]} at item {i}, column {j}", "item_features")
    if n_actions is not None and len(f) < n_actions:
        raise ValidationError(f"item_features describe {len(f)} items but the log has {n_actions}", "item_features")
    f.setflags(write=False)
    return f


class ReducibleRewardModel(RewardModel):
    """A reward model whose fit is a sum over rows: partitions reduce it to :meth:`gram` sums,
    and :meth:`solve` turns the summed statistics into the fitted state."""

    @abstractmethod
    def gram(self, data: LoggedBandit, rows: np.ndarray) -> tuple[Any, np.ndarray]:
        """The fit's sufficient statistics of ``rows``, summable over partitions."""

    @abstractmethod
    def solve(self, gram: Any, xty: np.ndarray) -> Any:
        """The fitted state from summed :meth:`gram` statistics."""


@dataclass(frozen=True)
class RidgeRewardModel(ReducibleRewardModel):
    """Ridge regression ``q(x, a, k) = b_slot[k] + b_item[a] + x . theta`` (penalty ``alpha``).

    Deliberately simple and usually misspecified: the doubly robust estimators stay unbiased
    when it is wrong, the direct method does not. Its fit is ``solve(X^T X + alpha I, X^T r)``,
    a sum over rows, so partitions reduce it to :meth:`gram` sums (:meth:`solve`).
    """

    alpha: float = 1.0
    name: ClassVar[str] = "ridge"

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, (int, float)) and np.isfinite(self.alpha) and self.alpha > 0):
            raise ValidationError(f"alpha must be a positive number, got {self.alpha!r}", "alpha")

    @staticmethod
    def _design(data: LoggedBandit, rows: np.ndarray) -> Any:
        blocks = [_one_hot(data.slot[rows], data.n_slots), _one_hot(data.action[rows], data.n_actions)]
        if data.context is not None:
            blocks.append(sp.csr_matrix(data.context[rows]))
        return sp.hstack(blocks, format="csr")

    def gram(self, data: LoggedBandit, rows: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        """``(X^T X, X^T r)`` of ``rows``: what the fit needs, summable over partitions."""
        x = self._design(data, rows)
        return (x.T @ x).tocsr(), x.T @ data.reward[rows]

    def solve(self, gram: Any, xty: np.ndarray) -> np.ndarray:
        """Coefficients from summed :meth:`gram` statistics."""
        g = gram.toarray() if sp.issparse(gram) else np.array(gram, dtype=float)
        g[np.diag_indices_from(g)] += self.alpha
        coef: np.ndarray = np.linalg.solve(g, xty)
        return coef

    def fit(self, data: LoggedBandit, rows: np.ndarray | None = None) -> np.ndarray:
        """Coefficients ``[b_slot (K), b_item (A), theta (d)]`` fitted on ``rows`` (default all)."""
        rows = np.arange(data.n_rows) if rows is None else rows
        return self.solve(*self.gram(data, rows))

    def q(self, coef: np.ndarray, data: LoggedBandit, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        k, a = data.n_slots, data.n_actions
        out: np.ndarray = coef[:k][data.slot[rows]] + coef[k : k + a][items]
        if data.context is not None:
            out = out + data.context[rows] @ coef[k + a :]
        return out


@dataclass(frozen=True)
class _Constant:
    """A fitted model for training rows that all share one reward."""

    value: float


@dataclass(frozen=True, eq=False)
class LogisticRewardModel(RewardModel):
    """Logistic regression ``P(r = 1 | x, a, k) = sigmoid(b[k] + b_item[a] + x . theta + v_a . phi)``.

    ``per_slot`` fits one model per slot (Open Bandit Pipeline's per-position regression: every
    coefficient may differ by slot); otherwise one model with a slot intercept. ``v_a`` are the
    ``item_features`` when given. L2 penalty ``1 / C`` (scikit-learn's ``LogisticRegression``,
    Newton-Cholesky up to ``NEWTON_MAX_COLUMNS`` features, L-BFGS past that). Rewards outside
    {0, 1} are mapped to ``u = (r - lo) / (hi - lo)`` on the training rows' range (``lo =
    min(0, min r)``, ``hi = max(1, max r)``; 0/1 rewards unchanged) and ``u`` counts as a click
    of weight u and a miss of weight 1 - u: the fractional logit (Papke and Wooldridge 1996),
    predicting ``lo + (hi - lo) sigmoid(...)``. ``n_threads`` bounds the native threads.
    """

    C: float = 1.0
    per_slot: bool = True
    item_features: np.ndarray | None = None
    max_iter: int = 500
    n_threads: int = 1
    name: ClassVar[str] = "logistic"
    NEWTON_MAX_COLUMNS: ClassVar[int] = 2000

    def __post_init__(self) -> None:
        if not (isinstance(self.C, (int, float)) and np.isfinite(self.C) and self.C > 0):
            raise ValidationError(f"C must be a positive number, got {self.C!r}", "C")
        _check_threads(self.n_threads)
        object.__setattr__(self, "item_features", _check_item_features(self.item_features))

    def with_item_features(self, item_features: np.ndarray | None) -> RewardModel:
        return replace(self, item_features=item_features)

    def _design(self, data: LoggedBandit, rows: np.ndarray, items: np.ndarray, *, slot_column: bool) -> Any:
        blocks = [_one_hot(data.slot[rows], data.n_slots)] if slot_column else []
        blocks.append(_one_hot(items, data.n_actions))
        if data.context is not None:
            blocks.append(sp.csr_matrix(data.context[rows]))
        if self.item_features is not None:
            blocks.append(sp.csr_matrix(self.item_features[items]))
        return sp.hstack(blocks, format="csr")

    def fit(self, data: LoggedBandit, rows: np.ndarray | None = None) -> tuple[Any, ...]:
        from sklearn.linear_model import LogisticRegression

        rows = np.arange(data.n_rows) if rows is None else np.asarray(rows)
        reward = data.reward[rows]
        lo, hi = min(0.0, float(reward.min())), max(1.0, float(reward.max()))
        _check_item_features(self.item_features, data.n_actions)
        groups = [np.arange(data.n_slots)] if not self.per_slot else [[k] for k in range(data.n_slots)]
        fitted: list[Any] = [(lo, hi)]  # the reward range, then each group's model
        for slots in groups:
            sel = rows[np.isin(data.slot[rows], slots)]
            y = (data.reward[sel] - lo) / (hi - lo)
            if len(sel) == 0 or y.min() == y.max():
                fitted.append(_Constant(float(data.reward[sel][0]) if len(sel) else float(reward.mean())))
                continue
            x = self._design(data, sel, data.action[sel], slot_column=not self.per_slot)
            # u in (0, 1) is a click of weight u and a miss of weight 1 - u (the fractional logit)
            part = (y > 0) & (y < 1)
            x = sp.vstack([x, x[part]], format="csr")
            weight = np.concatenate([np.where(part, y, 1.0), 1.0 - y[part]])
            y = np.concatenate([np.where(part, 1.0, y), np.zeros(int(part.sum()))])
            solver = "newton-cholesky" if x.shape[1] <= self.NEWTON_MAX_COLUMNS else "lbfgs"
            lr = LogisticRegression(C=self.C, solver=solver, max_iter=self.max_iter)
            with _threads(self.n_threads):
                lr.fit(x, y, sample_weight=weight)
            fitted.append((lr.coef_.ravel().copy(), float(lr.intercept_[0])))
        return tuple(fitted)

    def q(self, fitted: Any, data: LoggedBandit, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows))
        slot = data.slot[rows]
        (lo, hi), fitted = fitted[0], fitted[1:]
        for g, state in enumerate(fitted):
            sel = np.arange(len(rows)) if not self.per_slot else np.flatnonzero(slot == g)
            if not len(sel):
                continue
            if isinstance(state, _Constant):
                out[sel] = state.value
                continue
            coef, intercept = state
            z = self._design(data, rows[sel], items[sel], slot_column=not self.per_slot) @ coef + intercept
            out[sel] = lo + (hi - lo) / (1.0 + np.exp(-z))
        return out


@dataclass(frozen=True, eq=False)
class GBTRewardModel(RewardModel):
    """Gradient-boosted trees on ``[slot, item, context, item features]``.

    scikit-learn's ``HistGradientBoostingClassifier`` (log loss) when the training rewards are
    all 0 or 1, ``HistGradientBoostingRegressor`` (squared error) otherwise. Slot and item are
    categorical features (the item only up to 255 items; past that the trees see items through
    ``item_features`` alone). No early stopping, ``random_state=seed`` and ``n_threads`` native
    threads: a fit is reproducible, whatever the machine's core count.
    """

    max_iter: int = 100
    learning_rate: float = 0.1
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 50
    l2_regularization: float = 1.0
    item_features: np.ndarray | None = None
    seed: int = 0
    n_threads: int = 1
    name: ClassVar[str] = "gbt"
    MAX_CATEGORIES: ClassVar[int] = 255

    def __post_init__(self) -> None:
        for name in ("max_iter", "max_leaf_nodes", "min_samples_leaf"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < (2 if name == "max_leaf_nodes" else 1):
                raise ValidationError(f"{name} must be a positive integer, got {v!r}", name)
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate <= 1):
            raise ValidationError(f"learning_rate must be in (0, 1], got {self.learning_rate!r}", "learning_rate")
        _check_threads(self.n_threads)
        object.__setattr__(self, "item_features", _check_item_features(self.item_features))

    def with_item_features(self, item_features: np.ndarray | None) -> RewardModel:
        return replace(self, item_features=item_features)

    def _item_categorical(self, data: LoggedBandit) -> bool:
        return data.n_actions <= self.MAX_CATEGORIES

    def _design(self, data: LoggedBandit, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        cols = [data.slot[rows][:, None].astype(float)]
        if self._item_categorical(data):
            cols.append(np.asarray(items, dtype=float)[:, None])
        if data.context is not None:
            cols.append(data.context[rows])
        if self.item_features is not None:
            cols.append(self.item_features[items])
        return np.hstack(cols)

    def fit(self, data: LoggedBandit, rows: np.ndarray | None = None) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        rows = np.arange(data.n_rows) if rows is None else np.asarray(rows)
        _check_item_features(self.item_features, data.n_actions)
        if not self._item_categorical(data) and self.item_features is None:
            raise ValidationError(
                f"{type(self).__name__} takes items as categories up to {self.MAX_CATEGORIES} "
                f"items; the log has {data.n_actions}, so give item_features",
                "item_features",
            )
        y = data.reward[rows]
        if y.min() == y.max():
            return _Constant(float(y[0]))
        categorical = [0, 1] if self._item_categorical(data) else [0]
        params = dict(
            max_iter=self.max_iter,
            learning_rate=self.learning_rate,
            max_leaf_nodes=self.max_leaf_nodes,
            min_samples_leaf=self.min_samples_leaf,
            l2_regularization=self.l2_regularization,
            categorical_features=categorical,
            early_stopping=False,
            random_state=self.seed,
        )
        model = HistGradientBoostingClassifier(**params) if _binary(y) else HistGradientBoostingRegressor(**params)
        with _threads(self.n_threads):
            model.fit(self._design(data, rows, data.action[rows]), y)
        return model

    def q(self, fitted: Any, data: LoggedBandit, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        if isinstance(fitted, _Constant):
            return np.full(len(rows), fitted.value)
        x = self._design(data, rows, items)
        with _threads(self.n_threads):
            out: np.ndarray = fitted.predict_proba(x)[:, 1] if hasattr(fitted, "predict_proba") else fitted.predict(x)
        return out


REWARD_MODELS: dict[str, type[RewardModel]] = {
    cls.name: cls for cls in (RidgeRewardModel, LogisticRewardModel, GBTRewardModel)
}
DEFAULT_REWARD_MODEL = "logistic"  # chosen by measured error: docs/evaluation.md


def make_reward_model(name: str | None = None, item_features: np.ndarray | None = None) -> RewardModel:
    """The reward model called ``name`` with its default settings.

    Parameters
    ----------
    name : {"ridge", "logistic", "gbt"}, optional
        Default :data:`DEFAULT_REWARD_MODEL`.
    item_features : array (n_items, d), optional
        Used by the models that take them.

    Returns
    -------
    RewardModel

    Raises
    ------
    ValidationError
        An unknown ``name``.
    """
    name = DEFAULT_REWARD_MODEL if name is None else name
    if name not in REWARD_MODELS:
        raise ValidationError(
            f"unknown reward model {name!r}; known: {', '.join(sorted(REWARD_MODELS))}", "reward_model"
        )
    return REWARD_MODELS[name]().with_item_features(item_features)


def default_reward_model() -> RewardModel:
    return make_reward_model()


__all__ = [
    "DEFAULT_REWARD_MODEL",
    "REWARD_MODELS",
    "Folds",
    "GBTRewardModel",
    "LogisticRewardModel",
    "RewardModel",
    "RidgeRewardModel",
    "decision_folds",
    "default_reward_model",
    "make_reward_model",
]
