"""The off-policy evaluation pipeline of ``banditrec evaluate``, whatever the log is stored in.

Candidates learn from the first ``train_frac`` of the log and are estimated off-policy on the
rest, with a safe-to-deploy verdict. A :class:`Backend` reads the log (SQLite or the Parquet
export) and hands over chunks; every other step is here, once.

Details: docs/evaluation.md, "The pipeline (`evaluation/pipeline.py`)".
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import scipy.sparse as sp

from .. import tuning
from ..errors import ValidationError
from ..offline import ImportanceScale, learn_from_log, target_pscore, train_from_log
from ..ope.estimators import ESTIMATORS, IPS, Moments, OPEWarning
from ..ope.reward_model import (
    DEFAULT_REWARD_MODEL,
    Folds,
    ReducibleRewardModel,
    RewardModel,
    decision_folds,
    make_reward_model,
)
from ..policies import make
from ..policies.ridge import JointRidgePolicy
from ..types import Estimate, LoggedBandit, LoggedDecisions
from .tasks import run_tasks

DEFAULT_ESTIMATORS = ("IPS", "SNIPS", "DR", "SNDR")
MAX_ONE_HOT_ITEMS = 200  # without item features in the log, items are one-hot up to this many


# ---- results ----------------------------------------------------------------------------------
@dataclass
class PolicyEvaluation:
    spec: str
    estimates: dict[str, Estimate]
    safe: bool
    reason: str
    gate: str | None = None  # the estimator whose lower bound decided (None: the primary)


@dataclass
class Evaluation:
    db: str
    kind: str
    n_train: int
    n_eval: int
    n_rows: int
    primary: str
    logging: Estimate
    logging_policies: list[str]
    candidates: list[PolicyEvaluation] = field(default_factory=list)
    report: Path | None = None
    reward_model: str = DEFAULT_REWARD_MODEL
    tuning: tuning.Tuning | None = None

    def table(self) -> str:
        w = max([len("logging (on-policy)")] + [len(c.spec) for c in self.candidates])
        ci = f"{self.logging.level:.0%} CI"
        head = f"{'policy':<{w}}  {'estim.':<10} {'estimate':>9} {ci:>21} {'ESS':>9} {'max w':>7}  note"
        lines = [head, "-" * len(head)]

        def row(label, e: Estimate, note=""):
            return (
                f"{label:<{w}}  {e.estimator:<10} {e.value:>9.4f} [{e.lower:>9.4f}, {e.upper:>9.4f}] "
                f"{e.ess:>9.0f} {e.max_weight:>7.2f}  {note}"
            ).rstrip()

        lines.append(row("logging (on-policy)", self.logging))
        for c in self.candidates:
            for _name, e in c.estimates.items():
                level = f"{e.level:.2%} CI" if abs(e.level - self.logging.level) > 1e-12 else ""
                lines.append(row(c.spec, e, " ".join(filter(None, ("warn" if e.warnings else "", level)))))
        lines.append("")
        for c in self.candidates:
            lines.append(f"{c.spec}: {'SAFE to deploy' if c.safe else 'not shown safe'} -- {c.reason}")
        if self.tuning is not None:
            lines += ["", *self.tuning.lines()]
        return "\n".join(lines)

    def as_json(self) -> dict:
        return {
            "db": self.db,
            "kind": self.kind,
            "n_train_decisions": self.n_train,
            "n_eval_decisions": self.n_eval,
            "n_eval_rows": self.n_rows,
            "primary_estimator": self.primary,
            "logging_policies": self.logging_policies,
            "reward_model": self.reward_model,
            "logging": _estimate_json(self.logging),
            "candidates": [
                {
                    "policy": c.spec,
                    "safe_to_deploy": c.safe,
                    "reason": c.reason,
                    "estimates": {k: _estimate_json(e) for k, e in c.estimates.items()},
                }
                for c in self.candidates
            ],
            "tuning": None if self.tuning is None else self.tuning.as_json(_estimate_json),
            "report": None if self.report is None else str(self.report),
        }


def _estimate_json(e: Estimate) -> dict:
    out = asdict(e)
    out["warnings"] = list(e.warnings)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


# ---- what was asked ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """A checked request (:func:`check_request`): ``specs`` lists the ``--policy`` specs, then
    the settings of the ``tune`` grids."""

    specs: tuple[str, ...]
    settings: tuple[str, ...]
    tune: tuple[str, ...]
    estimators: tuple[str, ...]
    primary: str
    reward_model: str
    kind: str
    default_reward: float
    train_frac: float
    level: float
    seed: int
    n_folds: int


def check_request(
    specs,
    *,
    estimators=DEFAULT_ESTIMATORS,
    primary: str = "DR",
    tune=(),
    train_frac: float = 0.5,
    reward_model: str | None = None,
    kind: str = "click",
    default_reward: float = 0.0,
    level: float = 0.95,
    seed: int | None = 0,
    n_folds: int = 2,
) -> Request:
    """Validate what evaluate was asked, before any log is read -- the one check of every
    backend. Estimators that are not sums of per-decision terms (Replay, SlatePI) are refused:
    they need a uniformly random log and a dense action distribution (use them from Python)."""
    estimators, specs, tune = tuple(estimators), list(specs), tuple(tune)
    unknown = [e for e in (*estimators, primary) if e not in ESTIMATORS]
    if unknown:
        raise ValidationError(f"unknown estimator {unknown[0]!r}; known: {', '.join(sorted(ESTIMATORS))}", "estimator")
    refused = [e for e in (*estimators, primary) if not ESTIMATORS[e].mergeable]
    if refused:
        raise ValidationError(
            f"{refused[0]} needs a uniformly random log and a dense action_dist; use it from Python", "estimator"
        )
    if primary not in estimators:
        estimators = (*estimators, primary)
    settings = tuning.expand_grids(tune)
    clash = [s for s in settings if s in specs]
    if clash:
        raise ValidationError(f"{clash[0]!r} is both a --policy and a --tune setting", "tune")
    if not specs and not settings:
        raise ValidationError("give at least one --policy or --tune grid to evaluate", "policy")
    if not 0 <= train_frac < 1:
        raise ValidationError(f"train_frac must be in [0, 1), got {train_frac!r}", "train_frac")
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise ValidationError(f"n_folds must be an integer >= 2, got {n_folds!r}", "n_folds")
    model_name = DEFAULT_REWARD_MODEL if reward_model is None else reward_model
    make_reward_model(model_name)  # an unknown name fails before the log is read
    IPS(level=level)  # a level outside (0, 1) too
    return Request(
        specs=tuple(specs + settings),
        settings=tuple(settings),
        tune=tune,
        estimators=estimators,
        primary=primary,
        reward_model=model_name,
        kind=kind,
        default_reward=float(default_reward),
        train_frac=float(train_frac),
        level=float(level),
        seed=0 if seed is None else int(seed),
        n_folds=int(n_folds),
    )


# ---- what a backend hands over ----------------------------------------------------------------
@dataclass
class Split:
    """The log split at ``n_train`` decisions: the training decisions and the evaluated ones,
    each as chunks in log order (picklable, each with ``load() -> LoggedDecisions``; a
    decision's rows in one chunk), and an upper bound of the evaluated policy slot."""

    train: list
    chunks: list
    n_slots: int


class Backend(ABC):
    """A log the pipeline can evaluate: ``name`` (as reports name it), ``field`` (the argument
    errors about it name), its decision count, the item features policies are built with
    (``has_item_table``: from the log's item table, not one-hot), the context width, and
    optionally a shop's cold flags and policy environment."""

    name: str
    field: str
    n_decisions: int
    features: np.ndarray
    has_item_table: bool
    context_dim: int
    cold: np.ndarray | None = None
    policy_env: dict | None = None

    @abstractmethod
    def split(self, n_train: int) -> Split:
        """The first ``n_train`` decisions (in log order) to train on, the rest to evaluate."""

    @abstractmethod
    def logging_policies(self) -> list[str]:
        """The policies that wrote the log, sorted."""

    def baseline_served(self) -> bool:
        """Whether a deterministic baseline served some of the decisions (apprentice mode, a
        control arm): then a slot the baseline never showed an item in has no support at all."""
        return False

    def min_reward(self) -> float | None:
        """The smallest logged reward of the evaluated kind (None: none logged)."""
        return None


def item_features_or_one_hot(features: np.ndarray, n_items: int) -> np.ndarray:
    """The item table's features; without a table, one-hot items (up to MAX_ONE_HOT_ITEMS)."""
    if len(features):
        if len(features) < n_items:
            raise ValidationError(
                f"the item table has {len(features)} items but decisions refer to item index {n_items - 1}", "items"
            )
        return np.asarray(features, dtype=float)
    if n_items > MAX_ONE_HOT_ITEMS:
        raise ValidationError(
            f"the log has no item features and {n_items} items; one-hot item features are "
            f"used up to {MAX_ONE_HOT_ITEMS} items only",
            "items",
        )
    return np.eye(n_items)


# ---- candidates -------------------------------------------------------------------------------
def candidate_env(context_dim: int, features: np.ndarray, train: LoggedDecisions | None, n_items: int) -> dict:
    """What candidate policies are built with: the dimensions, and as ``popularity`` (what
    ``popularity`` policies rank by) 1 + the rewarded rows per item in the training share."""
    popularity = np.ones(n_items)
    if train is not None:
        popularity += rewarded_rows(train, n_items)
    return {"context_dim": context_dim, "item_dim": features.shape[1], "popularity": popularity, "n_items": n_items}


def rewarded_rows(logged: LoggedDecisions, n_items: int) -> np.ndarray:
    return np.bincount(logged.row_action, weights=(logged.row_reward > 0).astype(float), minlength=n_items)


def trained_candidates(
    specs: Sequence[str],
    train: list,
    env: dict,
    features: np.ndarray,
    *,
    cold: np.ndarray | None = None,
    client=None,
    progress: bool = False,
) -> tuple[list, dict]:
    """The candidates built with ``env`` (its ``popularity`` from the training share) and
    trained on the training chunks, one chunk in memory at a time: a first pass for popularity
    and the importance weights' scale over every training row, a second to learn (in process,
    a one-chunk share is read once). With ``client``, a policy whose statistics are sums (the
    ridge family, undiscounted) learns each chunk in a fresh copy on the worker that reads it,
    and the copies merge; the others learn the chunks in order here. The same policies as
    :func:`candidate_policy` on the whole share, up to the order of the sums."""
    n_items = len(features)
    held = None  # in process, a one-chunk share is read once
    if client is None:
        firsts = []
        for chunk in train:
            logged = chunk.load()
            firsts.append(_train_stats(logged, n_items))
            held = logged if len(train) == 1 else None
    else:
        firsts = run_tasks(
            _train_pass, train, client=client, shared={"n_items": n_items}, progress=progress, desc="training share"
        )
    popularity = np.ones(n_items) + sum((f["rewarded"] for f in firsts), np.zeros(n_items))
    env = {**env, "popularity": popularity}
    policies = [candidate_policy(spec, env, None, features, cold=cold) for spec in specs]
    rows = np.concatenate([f["pscore"] for f in firsts]) if firsts else np.zeros(0)
    if not len(rows):
        return policies, env
    scale = ImportanceScale.of(rows)
    remote = (
        [] if client is None else [j for j, p in enumerate(policies) if isinstance(p, JointRidgePolicy) and p.mergeable]
    )
    if remote:
        todo = {"specs": [specs[j] for j in remote], "env": env, "features": features, "cold": cold, "scale": scale}
        parts = run_tasks(_train_chunk, train, client=client, shared=todo, progress=progress, desc="training")
        for k, j in enumerate(remote):
            cast(JointRidgePolicy, policies[j]).merge([part[k] for part in parts if part is not None])
    here = [p for j, p in enumerate(policies) if j not in remote]
    if here:
        for chunk in train:
            logged = held if held is not None else chunk.load()
            if logged.n_decisions:
                weight = scale(logged.row_pscore)
                for policy in here:
                    learn_from_log(policy, logged, features, cold=cold, weight=weight)
    return policies, env


def _train_stats(logged: LoggedDecisions, n_items: int) -> dict:
    """Training pass 1 of a chunk: its rewarded rows per item and its rows' logged marginals."""
    return {"rewarded": rewarded_rows(logged, n_items), "pscore": logged.row_pscore}


def _train_pass(chunk, shared: dict) -> dict:
    """:func:`_train_stats` as a Dask task."""
    return _train_stats(chunk.load(), shared["n_items"])


def _train_chunk(chunk, shared: dict):
    """Training pass 2 of the mergeable candidates: what a fresh copy of each learns from the
    chunk (None for a chunk without decisions)."""
    logged = chunk.load()
    if not logged.n_decisions:
        return None
    weight = shared["scale"](logged.row_pscore)
    out = []
    for spec in shared["specs"]:
        policy = cast(JointRidgePolicy, make(spec, **shared["env"]))
        learn_from_log(policy, logged, shared["features"], cold=shared["cold"], weight=weight)
        out.append(policy.learned())
    return out


def candidate_policy(
    spec: str, env: dict, train: LoggedDecisions | None, features: np.ndarray, *, cold: np.ndarray | None = None
):
    """The candidate ``spec`` built with ``env`` and trained on the log's training share
    (``cold``: the catalog's cold flags, an input of the policies, when known)."""
    try:
        policy = make(spec, **env)
    except ValidationError as exc:
        if exc.field in ("objective", "value", "max_per_type"):
            raise ValidationError(
                f"policy {spec}: {exc} -- the log's item table carries no business columns "
                "or product types, so evaluate cannot apply it",
                exc.field,
            ) from None
        raise
    if train is not None and train.n_decisions:
        train_from_log(policy, train, features, cold=cold)
    return policy


def _snapshot_bytes(policy) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        policy.save(Path(tmp) / "policy")
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir()}


def _load_policy(files: dict[str, bytes], env: dict):
    from ..policies import load

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        return load(Path(tmp) / "policy", **env)


# ---- targets and the reward model -------------------------------------------------------------
def sparse_target(logged: LoggedDecisions, per_decision: list, n_items: int) -> sp.csr_matrix:
    """(rows x catalog): each row's target distribution over its decision's candidates, in its slot."""
    starts = np.searchsorted(logged.row_decision, np.arange(logged.n_decisions + 1))
    indptr, indices, data = [0], [], []
    for d, (items, marg) in enumerate(per_decision):
        for slot in logged.row_slot[starts[d] : starts[d + 1]].tolist():
            indices.append(items)
            data.append(marg[:, slot])
            indptr.append(indptr[-1] + len(items))
    if not indices:
        return sp.csr_matrix((len(logged.row_slot), n_items))
    return sp.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), np.array(indptr)), shape=(len(logged.row_slot), n_items)
    )


def reward_model_for(name: str | None, features: np.ndarray, has_item_table: bool) -> RewardModel:
    """The reward model ``name`` for this log: with the item table's features when there is one
    (one-hot fallback features add nothing to the model's own item effects)."""
    return make_reward_model(name, features if has_item_table else None)


def row_folds(logged: LoggedDecisions, n_folds: int, seed: int | None) -> np.ndarray:
    """Each logged row's cross-fitting fold, from its decision's log sequence number."""
    return decision_folds(logged.seq, n_folds, 0 if seed is None else seed)[logged.row_decision]


@dataclass(frozen=True)
class CandidateQ:
    """The cross-fitted reward model at every logged row and at every (row, candidate) pair of
    the row's decision: predicted once, shared by every candidate policy's target term."""

    q_logged: np.ndarray
    row: np.ndarray  # row of each pair, in the order of ``sparse_target``'s entries
    items: np.ndarray
    q: np.ndarray

    @classmethod
    def of(cls, model: RewardModel, folds: Folds, data: LoggedBandit, logged: LoggedDecisions) -> CandidateQ:
        per_row = [logged.candidates[d] for d in logged.row_decision.tolist()]
        sizes = np.array([len(c) for c in per_row], dtype=np.int64)
        row = np.repeat(np.arange(len(per_row)), sizes)
        items = np.concatenate(per_row).astype(np.int64) if per_row else np.zeros(0, dtype=np.int64)
        q_logged = model.fold_q(folds, data, np.arange(data.n_rows), data.action)
        return cls(q_logged, row, items, model.fold_q(folds, data, row, items))

    def target(self, target_rows: sp.csr_matrix) -> np.ndarray:
        """``sum_a pi(a | x_i, k_i) q(x_i, a, k_i)`` per row for a target from :func:`sparse_target`."""
        if not np.array_equal(target_rows.indices, self.items):
            raise ValidationError("the target's rows do not list the decisions' candidates in log order", "candidates")
        return np.bincount(self.row, weights=target_rows.data * self.q, minlength=len(self.q_logged))


def _chunk_data(chunk, shared: dict):
    """A chunk's evaluated decisions, their rows as estimator input (None without rows) and the
    rows' folds."""
    logged = chunk.load()
    if len(logged.row_action) == 0:
        return logged, None, None
    data = logged.logged_bandit(shared["n_items"], shared["n_slots"], with_context=True)
    return logged, data, row_folds(logged, shared["n_folds"], shared["seed"])


def _reward_stats(chunk, shared: dict) -> dict:
    """Pass 1: per fold, ``X^T X`` and ``X^T y`` of a reducible reward model, else the rows'
    model inputs (neither when no estimator needs the model) -- of a bounded share of whole
    decisions when the log has more than MAX_MODEL_ROWS rows; the (item, slot) pairs logged."""
    logged, data, fold = _chunk_data(chunk, shared)
    if data is None:
        return {"n_rows": 0, "grams": None, "rows": None, "seen": np.zeros((0, 2), dtype=np.int64)}
    model = shared["model"]
    grams = rows = None
    if shared["uses_q"] and isinstance(model, ReducibleRewardModel):
        grams = [model.gram(data, np.flatnonzero(fold == f)) for f in range(shared["n_folds"])]
    elif shared["uses_q"]:
        keep = np.flatnonzero(model_sample(logged.seq, shared["model_share"], shared["seed"])[data.decision])
        rows = {
            "reward": data.reward[keep],
            "action": data.action[keep],
            "slot": data.slot[keep],
            "pscore": data.pscore[keep],
            "decision": data.decision[keep],
            "context": data.context[keep],
            "fold": fold[keep],
        }
    seen = np.unique(np.column_stack([data.action, data.slot]), axis=0)
    return {"n_rows": data.n_rows, "grams": grams, "rows": rows, "seen": seen}


MAX_MODEL_ROWS = 1_000_000
"""Rows a reward model that is not reducible (logistic, gbt) is fitted on at most: beyond it, a
uniform share of whole decisions, so that the driver's memory stays bounded on any log. Every
row is still predicted and evaluated; DR stays unbiased whatever the model's quality."""


def model_sample(seq: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Whether each decision (by log sequence number) is in the reward model's sample of
    ``share``: a hash of the number, so the same decisions whatever the chunking or backend."""
    if share >= 1.0:
        return np.ones(len(seq), dtype=bool)
    return decision_folds(seq, 1 << 30, seed + 7919) < share * (1 << 30)


def fit_reward_model(model: RewardModel, stats: list[dict], n_folds: int, n_items: int, n_slots: int) -> tuple:
    """The per-fold fitted models from pass 1: summed Gram matrices solved (reducible), or the
    gathered rows fitted by :meth:`RewardModel.fit_folds`."""
    if isinstance(model, ReducibleRewardModel):
        grams = [s["grams"] for s in stats if s["grams"] is not None]
        return tuple(
            model.solve(
                sum(part[h][0] for part in grams for h in range(n_folds) if h != f),
                sum(part[h][1] for part in grams for h in range(n_folds) if h != f),
            )
            for f in range(n_folds)
        )
    parts = [s["rows"] for s in stats if s["rows"] is not None]
    parts = [p for p in parts if len(p["decision"])]  # a chunk may have none in the model's sample
    offsets = np.cumsum([0] + [int(p["decision"].max()) + 1 for p in parts[:-1]])
    cat = {k: np.concatenate([p[k] for p in parts]) for k in ("reward", "action", "slot", "pscore", "fold")}
    data = LoggedBandit(
        reward=cat["reward"],
        action=cat["action"],
        slot=cat["slot"],
        pscore=cat["pscore"],
        decision=np.concatenate([p["decision"] + o for p, o in zip(parts, offsets)]),
        context=np.concatenate([p["context"] for p in parts]),
        n_actions=n_items,
        n_slots=n_slots,
    )
    return model.fit_folds(data, n_folds=n_folds, fold=cat["fold"]).fitted


def _chunk_moments(chunk, shared: dict) -> dict:
    """Pass 2: the chunk's evaluated decisions, the logging policy's and every candidate's
    moments for each estimator (None for a chunk without rows), and the candidates' target
    mass on (item, slot) pairs never logged."""
    logged, data, fold = _chunk_data(chunk, shared)
    names, level, seed = shared["estimators"], shared["level"], shared["seed"]
    specs, policies = shared["specs"], shared["policies"]
    if data is None:
        return {
            "n_decisions": logged.n_decisions,
            "logging": None,
            "unsupported": [0.0] * len(specs),
            "candidates": [dict.fromkeys(names) for _ in specs],
        }
    out = {
        "n_decisions": logged.n_decisions,
        "logging": IPS(level=level).partial(data, target_pscore=data.pscore),
        "unsupported": [],
        "candidates": [],
    }
    candidate_q = None
    if shared["fitted"] is not None:
        candidate_q = CandidateQ.of(shared["model"], Folds(fold, shared["fitted"]), data, logged)
    seen, on_target = shared["seen"], shared.get("on_target")
    for spec, policy in zip(specs, policies):
        if isinstance(policy, dict):  # snapshot bytes, on a Dask worker
            policy = _load_policy(policy, shared["env"])
        kept: list = []

        def keep(d, items, marg, _spec=spec, _kept=kept):
            _kept.append((items, marg))
            if on_target is not None:
                on_target(_spec, logged, d, items, marg)

        pi = target_pscore(policy, logged, shared["features"], on_decision=keep, cold=shared["cold"])
        target_rows = sparse_target(logged, kept, shared["n_items"])
        q: dict[str, Any] = (
            {}
            if candidate_q is None
            else {"q_hat_logged": candidate_q.q_logged, "q_hat_target": candidate_q.target(target_rows)}
        )
        slot_of_entry = np.repeat(logged.row_slot, np.diff(target_rows.indptr))
        out["unsupported"].append(float((target_rows.data * ~seen[target_rows.indices, slot_of_entry]).sum()))
        moments = {}
        for name in names:
            est = ESTIMATORS[name](level=level, seed=seed)
            moments[name] = est.partial(data, target_pscore=pi, **(q if est.needs_q else {}))
        out["candidates"].append(moments)
    return out


# ---- the pipeline -----------------------------------------------------------------------------
UNSUPPORTED_MAX = 0.2  # on a baseline-served log, more of a target's mass off the baseline's support: IPS decides


def baseline_verdict(estimates: dict[str, Estimate], share: float, logging: Estimate, min_reward) -> tuple[bool, str]:
    """The gate on a log a deterministic baseline served, for a target that puts ``share`` of
    its probability on (item, slot) pairs the baseline never showed: there, every estimate of
    those slots rests on the reward model alone. IPS counts only the slots where the target
    agrees with the baseline, so for rewards that are never negative it is a lower bound on
    the target's value: safe when IPS's lower bound beats the baseline's value."""
    head = f"{share:.0%} of the policy's slot probability falls where the baseline never showed that item"
    ips = estimates.get("IPS")
    if ips is None:
        return False, f"{head}; only IPS bounds the value there, and it was not estimated"
    if min_reward is not None and min_reward < 0:
        return False, f"{head}; rewards can be negative ({min_reward:g}), so IPS does not bound the value from below"
    if ips.lower > logging.value:
        return (
            True,
            f"{head}; even counting only the slots where it agrees, IPS lower bound {ips.lower:.4f} beats "
            f"the baseline's {logging.value:.4f}",
        )
    return False, (
        f"{head}; counting only the slots where it agrees (a lower bound), IPS lower bound {ips.lower:.4f} does not "
        f"beat the baseline's {logging.value:.4f}: the log cannot show the switch safe"
    )


def verdict(main: Estimate, primary: str, logging: Estimate) -> tuple[bool, str]:
    """Safe to deploy when ``primary``'s lower bound beats the logging policy's on-policy value
    and no diagnostic warns."""
    if main.warnings:
        return False, f"{primary} diagnostics warn: " + "; ".join(main.warnings)
    if main.lower > logging.value:
        return True, f"{primary} lower bound {main.lower:.4f} beats the logging policy's {logging.value:.4f}"
    return False, f"{primary} lower bound {main.lower:.4f} does not beat the logging policy's {logging.value:.4f}"


def evaluate(
    backend: Backend,
    request: Request,
    *,
    client=None,
    progress: bool = False,
    out=None,
    on_target: Callable[..., Any] | None = None,
) -> Evaluation:
    """Evaluate ``request``'s candidates on ``backend``'s log (see the module docstring).
    ``on_target(spec, decisions, d, items, marginals)`` sees each candidate's marginals on every
    evaluated decision (e.g. to compute its exact value in a simulator); in-process only."""
    if on_target is not None and client is not None:
        raise ValidationError("on_target sees the decisions in this process: run without a Dask client", "client")
    req = request
    if backend.n_decisions < 4:
        raise ValidationError(
            f"the log at {backend.name} has {backend.n_decisions} decisions; evaluation needs at least 4", backend.field
        )
    n_train = int(round(req.train_frac * backend.n_decisions))
    deterministic = backend.baseline_served()
    split = backend.split(n_train)
    features = backend.features
    n_items = len(features)
    uses_q = any(ESTIMATORS[name].needs_q for name in req.estimators)
    model = reward_model_for(req.reward_model, features, backend.has_item_table)
    n_eval_rows = (backend.n_decisions - n_train) * split.n_slots  # at most
    shared = {
        "n_items": n_items,
        "n_slots": split.n_slots,
        "seed": req.seed,
        "n_folds": req.n_folds,
        "model": model,
        "uses_q": uses_q,
        "model_share": min(1.0, MAX_MODEL_ROWS / max(n_eval_rows, 1)),
    }
    stats = run_tasks(_reward_stats, split.chunks, client=client, shared=shared, progress=progress, desc="reward model")
    if not any(s["n_rows"] for s in stats):
        raise ValidationError(f"the evaluation period of {backend.name} has no logged rows", backend.field)
    fitted = (
        fit_reward_model(model, stats, req.n_folds, n_items, split.n_slots) if uses_q else None
    )  # shared by every candidate
    seen = np.zeros((n_items, split.n_slots), dtype=bool)
    for s in stats:
        seen[s["seen"][:, 0], s["seen"][:, 1]] = True
    env = candidate_env(backend.context_dim, features, None, n_items)
    if backend.policy_env is not None:  # a shop's types and business columns; popularity from the training share
        env = {**backend.policy_env}
    policies, env = trained_candidates(
        req.specs, split.train, env, features, cold=backend.cold, client=client, progress=progress
    )
    if client is not None:
        policies = [_snapshot_bytes(p) for p in policies]
    shared.update(
        features=features,
        cold=backend.cold,
        fitted=fitted,
        seen=seen,
        env=env,
        specs=req.specs,
        policies=policies,
        estimators=req.estimators,
        level=req.level,
        on_target=on_target,
    )
    parts = run_tasks(_chunk_moments, split.chunks, client=client, shared=shared, progress=progress, desc="evaluating")
    n_train_decisions = n_train if split.train else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OPEWarning)
        logging = IPS(level=req.level).finish(Moments.total(p["logging"] for p in parts))
    result = Evaluation(
        db=backend.name,
        kind=req.kind,
        n_train=n_train_decisions,
        n_eval=sum(p["n_decisions"] for p in parts),
        n_rows=logging.n_rows,
        primary=req.primary,
        logging=logging,
        logging_policies=backend.logging_policies(),
        reward_model=req.reward_model,
    )
    for j, spec in enumerate(req.specs):
        estimates = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OPEWarning)
            for name in req.estimators:
                est = ESTIMATORS[name](level=req.level, seed=req.seed)
                estimates[name] = est.finish(Moments.total(p["candidates"][j][name] for p in parts))
        # reported, not warned on: the target only re-ranks each decision's logged candidates,
        # which the logger's exploration floor gave a positive probability in every slot, so an
        # (item, slot) pair absent from the log here is sparsity of a large catalog, not a lack
        # of support (the estimators warn on it for dense action_dists, where it can be) -- unless
        # a deterministic baseline served, which gives the pairs it never showed probability 0
        share = sum(p["unsupported"][j] for p in parts) / max(logging.n_rows, 1)
        estimates = {k: replace(e, unsupported=share) for k, e in estimates.items()}
        if deterministic and share > UNSUPPORTED_MAX:
            safe, reason = baseline_verdict(estimates, share, logging, backend.min_reward())
            result.candidates.append(PolicyEvaluation(spec, estimates, safe, reason, gate="IPS"))
        else:
            result.candidates.append(
                PolicyEvaluation(spec, estimates, *verdict(estimates[req.primary], req.primary, logging))
            )
    if req.settings:
        result.tuning = tuning.choose(
            result.candidates, list(req.settings), list(req.tune), req.primary, logging, req.level, verdict
        )
    if out is not None:
        result.report = write_report(result, Path(out))
    return result


# ---- the report -------------------------------------------------------------------------------
def write_report(result: Evaluation, out: Path) -> Path:
    """A Markdown report with the table and a plot of every estimate and interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    labels, values, lows, highs = [], [], [], []
    for c in result.candidates:
        for name, e in c.estimates.items():
            labels.append(f"{c.spec}  {name}")
            values.append(e.value)
            lows.append(e.value - e.lower)
            highs.append(e.upper - e.value)
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.5))
    y = np.arange(len(labels))
    ax.errorbar(values, y, xerr=[lows, highs], fmt="o", capsize=3)
    ax.axvline(result.logging.value, color="k", ls="--", label="logging policy (on-policy)")
    ax.axvspan(result.logging.lower, result.logging.upper, color="k", alpha=0.08)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"{result.kind} reward per decision")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "evaluate.png", dpi=110)
    plt.close(fig)
    report = out / "evaluate.md"
    notes = [
        f"- **{c.spec}** / {n}: {w}" for c in result.candidates for n, e in c.estimates.items() for w in e.warnings
    ]
    report.write_text(
        f"# Off-policy evaluation of {result.db}\n\n"
        f"Candidates learned from the first {result.n_train} decisions and were evaluated on the next "
        f"{result.n_eval} ({result.n_rows} logged slots), reward `{result.kind}` per decision. "
        f"Logging policies: {', '.join(result.logging_policies)}. Reward model of the DM/DR family: "
        f"`{result.reward_model}`, cross-fitted.\n\n"
        f"```\n{result.table()}\n```\n\n![estimates](evaluate.png)\n\n"
        + _tuning_section(result.tuning)
        + ("## Diagnostics\n\n" + "\n".join(notes) + "\n" if notes else "No diagnostic warnings.\n")
    )
    (out / "evaluate.json").write_text(json.dumps(result.as_json(), indent=2))
    return report


def _tuning_section(t: tuning.Tuning | None) -> str:
    if t is None:
        return ""
    if t.chosen:
        e = t.estimate
        assert e is not None  # a chosen setting has its estimate
        chosen = (
            f"**{t.chosen}** was chosen: {e.estimator} {e.value:.4f} [{e.lower:.4f}, {e.upper:.4f}] at "
            f"{t.level:.2%}; {'SAFE to deploy' if t.safe else 'not shown safe'} ({t.reason})."
        )
    else:
        chosen = f"No setting was chosen: {t.reason}."
    return (
        f"## Tuning\n\n{len(t.settings)} settings of `{'`, `'.join(t.grids)}` learned from the training "
        f"decisions and were estimated on the evaluated ones. Rule: {t.rule}: every setting's interval is at "
        f"{t.level:.2%}, so that all of them hold at once with {1 - (1 - t.level) * len(t.settings):.0%} "
        f"probability and the chosen one's stays "
        f"valid after the choice. {chosen}\n\n"
    )
