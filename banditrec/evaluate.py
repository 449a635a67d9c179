"""Compare candidate policies with the logging policy on the log: ``banditrec evaluate``.

The log is split in time: candidate policies learn from the first ``train_frac`` of the
decisions (as they would have, had they been deployed then) and are evaluated off-policy on
the rest, where the logging policy's own value is the on-policy mean reward. For every
candidate and estimator: the estimate, its interval and diagnostics; and a verdict --
**safe to deploy** when the primary estimator's lower bound beats the logging policy's
estimate and no diagnostic warns.

The target policy's probabilities come from re-scoring each logged decision (its context and
candidate list are in the log) with the candidate policy; the doubly robust family gets a
cross-fitted reward model (``reward_model``: ridge, logistic or gbt) whose target term is
computed over each decision's candidates only, so a large catalog costs nothing extra. Folds
hash each decision's log sequence number (:func:`~banditrec.ope.reward_model.decision_folds`),
so ``evaluate --parquet`` cross-fits with the very same folds. ``tune`` grids choose a
policy's hyper-parameters (:mod:`banditrec.tuning`). See docs/evaluation.md.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from . import tuning
from .errors import ValidationError
from .offline import target_pscore, train_from_log
from .ope import ESTIMATORS, IPS, Estimate, OPEWarning
from .ope.reward_model import DEFAULT_REWARD_MODEL, Folds, RewardModel, decision_folds, make_reward_model
from .policies import make
from .store import DecisionLog
from .types import LoggedBandit, LoggedDecisions

DEFAULT_ESTIMATORS = ("IPS", "SNIPS", "DR", "SNDR")
MAX_ONE_HOT_ITEMS = 200  # without item features in the log, items are one-hot up to this many


@dataclass
class PolicyEvaluation:
    spec: str
    estimates: dict[str, Estimate]
    safe: bool
    reason: str


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
            return (f"{label:<{w}}  {e.estimator:<10} {e.value:>9.4f} [{e.lower:>9.4f}, {e.upper:>9.4f}] "
                    f"{e.ess:>9.0f} {e.max_weight:>7.2f}  {note}").rstrip()

        lines.append(row("logging (on-policy)", self.logging))
        for c in self.candidates:
            for name, e in c.estimates.items():
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
            "db": self.db, "kind": self.kind, "n_train_decisions": self.n_train, "n_eval_decisions": self.n_eval,
            "n_eval_rows": self.n_rows, "primary_estimator": self.primary, "logging_policies": self.logging_policies,
            "reward_model": self.reward_model, "logging": _estimate_json(self.logging),
            "candidates": [
                {"policy": c.spec, "safe_to_deploy": c.safe, "reason": c.reason,
                 "estimates": {k: _estimate_json(e) for k, e in c.estimates.items()}}
                for c in self.candidates
            ],
            "tuning": None if self.tuning is None else self.tuning.as_json(_estimate_json),
            "report": None if self.report is None else str(self.report),
        }


def _estimate_json(e: Estimate) -> dict:
    out = asdict(e)
    out["warnings"] = list(e.warnings)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def item_features_or_one_hot(features: np.ndarray, n_items: int) -> np.ndarray:
    """The item table's features; without a table, one-hot items (up to MAX_ONE_HOT_ITEMS)."""
    if len(features):
        if len(features) < n_items:
            raise ValidationError(f"the item table has {len(features)} items but decisions refer to item index "
                                  f"{n_items - 1}", "items")
        return np.asarray(features, dtype=float)
    if n_items > MAX_ONE_HOT_ITEMS:
        raise ValidationError(f"the log has no item features and {n_items} items; one-hot item features are "
                              f"used up to {MAX_ONE_HOT_ITEMS} items only", "items")
    return np.eye(n_items)


def on_shop(logged: LoggedDecisions, item_ids: dict[int, str], shop) -> LoggedDecisions:
    """``logged`` with its item indices translated to ``shop``'s index by item id (a log served
    from the shop keeps them; an imported or older log is mapped), and its contexts checked
    against the shop's context features."""
    if logged.context.shape[1] != shop.context_dim:
        raise ValidationError(
            f"the log's decisions carry {logged.context.shape[1]} context features, the shop's context has "
            f"{shop.context_dim}: evaluate a log served from this shop (or, for an imported log, build the shop "
            "with --context-encoding FILE, the encoding `banditrec import` wrote)", "shop")
    n_log = 1 + max(item_ids, default=-1)
    ids = [item_ids.get(j) for j in range(n_log)]
    to_shop = np.full(n_log, -1, dtype=np.int64)
    known = [j for j, item in enumerate(ids) if item is not None]
    to_shop[known] = shop.items.lookup([ids[j] for j in known])
    used = np.unique(np.concatenate([logged.row_action, *logged.candidates]))
    missing = used[(used >= n_log) | (to_shop[np.minimum(used, n_log - 1)] < 0)]
    if len(missing):
        shown = ", ".join(repr(ids[j]) if j < n_log and ids[j] else f"index {j}" for j in missing[:3].tolist())
        raise ValidationError(f"the log shows {len(missing)} items the shop's catalog does not hold (e.g. {shown}); "
                              "was it built from the same items file?", "shop")
    return replace(logged, candidates=[to_shop[c] for c in logged.candidates], row_action=to_shop[logged.row_action])


def _item_features(log: DecisionLog, logged: LoggedDecisions) -> tuple[np.ndarray, bool]:
    """The features policies are built with, and whether the log has an item table."""
    n_items = 1 + max([int(c.max()) for c in logged.candidates if len(c)] + [0])
    ids, features, _ = log.items()
    return item_features_or_one_hot(np.asarray(features, dtype=float) if len(ids) else np.zeros((0, 0)),
                                    n_items), bool(len(ids))


def _decisions(logged: LoggedDecisions, lo: int, hi: int) -> LoggedDecisions:
    """Decisions ``lo <= d < hi`` of ``logged`` (in log order) with their rows."""
    rows = slice(*np.searchsorted(logged.row_decision, [lo, hi]).tolist())
    return LoggedDecisions(
        event_id=logged.event_id[lo:hi], seq=logged.seq[lo:hi], context=logged.context[lo:hi],
        candidates=logged.candidates[lo:hi], row_decision=logged.row_decision[rows] - lo,
        row_slot=logged.row_slot[rows], row_action=logged.row_action[rows], row_pscore=logged.row_pscore[rows],
        row_reward=logged.row_reward[rows], decision_reward=logged.decision_reward[lo:hi],
        row_propensity=None if logged.row_propensity is None else logged.row_propensity[rows],
        n_slots=None if logged.n_slots is None else logged.n_slots[lo:hi],
    )


def _sparse_target(logged: LoggedDecisions, per_decision: list, n_items: int) -> sp.csr_matrix:
    """(rows x catalog): each row's target distribution over its decision's candidates, in its slot."""
    starts = np.searchsorted(logged.row_decision, np.arange(logged.n_decisions + 1))
    indptr, indices, data = [0], [], []
    for d, (items, marg) in enumerate(per_decision):
        for slot in logged.row_slot[starts[d]:starts[d + 1]].tolist():
            indices.append(items)
            data.append(marg[:, slot])
            indptr.append(indptr[-1] + len(items))
    if not indices:
        return sp.csr_matrix((len(logged.row_slot), n_items))
    return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.array(indptr)),
                         shape=(len(logged.row_slot), n_items))


def _unsupported(logged: LoggedDecisions, target_rows: sp.csr_matrix, n_items: int) -> float:
    """Mean target mass per row on items never logged in that row's slot (estimators'
    ``Estimate.unsupported``, computed from the sparse target rows)."""
    n_slots = int(logged.row_slot.max()) + 1
    seen = np.zeros((n_items, n_slots), dtype=bool)
    seen[logged.row_action, logged.row_slot] = True
    slot_of_entry = np.repeat(logged.row_slot, np.diff(target_rows.indptr))
    unseen = ~seen[target_rows.indices, slot_of_entry]
    return float((target_rows.data * unseen).sum() / max(len(logged.row_slot), 1))


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
    row: np.ndarray  # row of each pair, in the order of ``_sparse_target``'s entries
    items: np.ndarray
    q: np.ndarray

    @classmethod
    def of(cls, model: RewardModel, folds: Folds, data: LoggedBandit, logged: LoggedDecisions) -> "CandidateQ":
        per_row = [logged.candidates[d] for d in logged.row_decision.tolist()]
        sizes = np.array([len(c) for c in per_row], dtype=np.int64)
        row = np.repeat(np.arange(len(per_row)), sizes)
        items = np.concatenate(per_row).astype(np.int64) if per_row else np.zeros(0, dtype=np.int64)
        q_logged = model.fold_q(folds, data, np.arange(data.n_rows), data.action)
        return cls(q_logged, row, items, model.fold_q(folds, data, row, items))

    def target(self, target_rows: sp.csr_matrix) -> np.ndarray:
        """``sum_a pi(a | x_i, k_i) q(x_i, a, k_i)`` per row for a target from :func:`_sparse_target`."""
        if not np.array_equal(target_rows.indices, self.items):
            raise ValidationError("the target's rows do not list the decisions' candidates in log order",
                                  "candidates")
        return np.bincount(self.row, weights=target_rows.data * self.q, minlength=len(self.q_logged))


def verdict(main: Estimate, primary: str, logging: Estimate) -> tuple[bool, str]:
    """Safe to deploy when ``primary``'s lower bound beats the logging policy's on-policy value
    and no diagnostic warns."""
    if main.warnings:
        return False, f"{primary} diagnostics warn: " + "; ".join(main.warnings)
    if main.lower > logging.value:
        return True, f"{primary} lower bound {main.lower:.4f} beats the logging policy's {logging.value:.4f}"
    return False, f"{primary} lower bound {main.lower:.4f} does not beat the logging policy's {logging.value:.4f}"


def check_request(estimators, primary: str, specs, tune, train_frac: float, *, refused_names) -> tuple:
    """Validate what evaluate was asked (both backends): the estimators (with ``primary``) and
    the candidate specs, tuning settings appended."""
    unknown = [e for e in (*estimators, primary) if e not in ESTIMATORS]
    if unknown:
        raise ValidationError(f"unknown estimator {unknown[0]!r}; known: {', '.join(sorted(ESTIMATORS))}", "estimator")
    refused = [e for e in (*estimators, primary) if e in refused_names]
    if refused:
        raise ValidationError(f"{refused[0]} needs a uniformly random log and a dense action_dist; use it from "
                              "Python", "estimator")
    if primary not in estimators:
        estimators = (*estimators, primary)
    settings = tuning.expand_grids(tune)
    specs = list(specs)
    clash = [s for s in settings if s in specs]
    if clash:
        raise ValidationError(f"{clash[0]!r} is both a --policy and a --tune setting", "tune")
    if not specs and not settings:
        raise ValidationError("give at least one --policy or --tune grid to evaluate", "policy")
    if not 0 <= train_frac < 1:
        raise ValidationError(f"train_frac must be in [0, 1), got {train_frac!r}", "train_frac")
    return tuple(estimators), specs + settings, settings


def candidate_env(context_dim: int, features: np.ndarray, train: LoggedDecisions | None, n_items: int) -> dict:
    """What candidate policies are built with: the dimensions, and as ``popularity`` (what
    ``popularity`` policies rank by) 1 + the rewarded rows per item in the training share."""
    popularity = np.ones(n_items)
    if train is not None:
        popularity += np.bincount(train.row_action, weights=(train.row_reward > 0).astype(float), minlength=n_items)
    return {"context_dim": context_dim, "item_dim": features.shape[1], "popularity": popularity, "n_items": n_items}


def candidate_policy(spec: str, env: dict, train: LoggedDecisions | None, features: np.ndarray, *,
                     cold: np.ndarray | None = None):
    """The candidate ``spec`` built with ``env`` and trained on the log's training share
    (``cold``: the catalog's cold flags, an input of the policies, when known)."""
    try:
        policy = make(spec, **env)
    except ValidationError as exc:
        if exc.field in ("objective", "value", "max_per_type"):
            raise ValidationError(f"policy {spec}: {exc} -- the log's item table carries no business columns "
                                  "or product types, so evaluate cannot apply it", exc.field) from None
        raise
    if train is not None and train.n_decisions:
        train_from_log(policy, train, features, cold=cold)
    return policy


def evaluate_log(
    db: str,
    specs: list[str],
    *,
    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS,
    primary: str = "DR",
    kind: str = "click",
    default_reward: float = 0.0,
    train_frac: float = 0.5,
    level: float = 0.95,
    seed: int | None = 0,
    out: str | Path | None = None,
    tune: tuple[str, ...] = (),
    reward_model: str | None = None,
    n_folds: int = 2,
    shop=None,
    on_target=None,
) -> Evaluation:
    """Evaluate each policy ``spec`` and every setting of the ``tune`` grids on the log at
    ``db`` (see the module docstring); ``reward_model`` names the DM/DR family's model. With a
    :class:`~banditrec.shop.Shop`, the candidates are built, trained and re-scored on the shop's
    item features, product types and business columns. ``on_target(spec, test, d, items,
    marginals)`` sees each candidate's marginals on every evaluated decision (e.g. to compute
    its exact value in a simulator)."""
    estimators, all_specs, settings = check_request(estimators, primary, specs, tune, train_frac,
                                                    refused_names=("Replay", "SlatePI"))
    model_name = DEFAULT_REWARD_MODEL if reward_model is None else reward_model
    make_reward_model(model_name)  # an unknown name fails before the log is read
    if not Path(db).exists():
        raise ValidationError(f"no decision log at {db}", "db")
    log = DecisionLog(db)
    try:
        full = log.decisions(kind=kind, default_reward=default_reward)
        if full.n_decisions < 4:
            raise ValidationError(f"the log at {db} has {full.n_decisions} decisions; evaluation needs at least 4",
                                  "db")
        if shop is not None:
            full = on_shop(full, log.item_ids(), shop)
            features, has_items = shop.items.features, True
            cold = shop.items.cold  # as the engine serving the shop puts them in requests
        else:
            cold = None
            features, has_items = _item_features(log, full)
        logging_policies = log.policies()
    finally:
        log.close()
    n_train = int(round(train_frac * full.n_decisions))
    train = _decisions(full, 0, n_train) if n_train else None
    test = _decisions(full, n_train, full.n_decisions)
    n_items, n_slots = len(features), int(test.row_slot.max()) + 1
    data = test.logged_bandit(n_items, n_slots, with_context=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OPEWarning)
        logging = IPS(level=level).estimate(data, target_pscore=data.pscore)
    result = Evaluation(db=str(db), kind=kind, n_train=0 if train is None else train.n_decisions,
                        n_eval=test.n_decisions, n_rows=data.n_rows, primary=primary, logging=logging,
                        logging_policies=logging_policies, reward_model=model_name)
    env = candidate_env(test.context.shape[1], features, train, n_items)
    if shop is not None:  # the shop's types and business columns; popularity from the training share, as above
        env = {**shop.policy_env(), "popularity": env["popularity"]}
    candidate_q = None
    if any(ESTIMATORS[name].needs_q for name in estimators):  # fitted once: shared by every candidate
        model = reward_model_for(model_name, features, has_items)
        folds = model.fit_folds(data, n_folds=n_folds, fold=row_folds(test, n_folds, seed))
        candidate_q = CandidateQ.of(model, folds, data, test)
    for spec in all_specs:
        policy = candidate_policy(spec, env, train, features, cold=cold)
        kept: list = []

        def keep(d, items, marg, _spec=spec):
            kept.append((items, marg))
            if on_target is not None:
                on_target(_spec, test, d, items, marg)

        pi = target_pscore(policy, test, features, on_decision=keep, cold=cold)
        target_rows = _sparse_target(test, kept, n_items)
        q = {} if candidate_q is None else {"q_hat_logged": candidate_q.q_logged,
                                            "q_hat_target": candidate_q.target(target_rows)}
        estimates = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OPEWarning)
            for name in estimators:
                est = ESTIMATORS[name](level=level, seed=seed)
                estimates[name] = est.estimate(data, target_pscore=pi, **(q if est.needs_q else {}))
        # reported, not warned on: the target only re-ranks each decision's logged candidates,
        # which the logger's exploration floor gave a positive probability in every slot, so an
        # (item, slot) pair absent from the log here is sparsity of a large catalog, not a lack
        # of support (the estimators warn on it for dense action_dists, where it can be)
        share = _unsupported(test, target_rows, n_items)
        estimates = {k: replace(e, unsupported=share) for k, e in estimates.items()}
        result.candidates.append(PolicyEvaluation(spec, estimates, *verdict(estimates[primary], primary, logging)))
    if settings:
        result.tuning = tuning.choose(result.candidates, settings, list(tune), primary, logging, level, verdict)
    if out is not None:
        result.report = write_report(result, Path(out))
    return result


@dataclass
class SensitivityRow:
    level: str
    estimate: Estimate
    objective: float  # the objective column's expected total per carousel under the blended policy


@dataclass
class ObjectiveSensitivity:
    objective: str
    spec: str
    logging_objective: float
    logging: Estimate
    rows: list[SensitivityRow]

    def table(self) -> str:
        head = (f"{'sensitivity':<11} {'estimator':<9} {'reward':>9} {'95% CI':>21} "
                f"{self.objective + ' per carousel':>{max(22, len(self.objective) + 13)}}")
        lines = [f"{self.spec} with objective {self.objective!r}, trained and estimated on the log", head,
                 "-" * len(head)]
        w = max(22, len(self.objective) + 13)
        lines.append(f"{'(logging)':<11} {'on-policy':<9} {self.logging.value:>9.4f} [{self.logging.lower:>9.4f}, "
                     f"{self.logging.upper:>9.4f}] {self.logging_objective:>{w}.2f}")
        for r in self.rows:
            e = r.estimate
            lines.append(f"{r.level:<11} {e.estimator:<9} {e.value:>9.4f} [{e.lower:>9.4f}, {e.upper:>9.4f}] "
                         f"{r.objective:>{w}.2f}" + ("  warn" if e.warnings else ""))
        return "\n".join(lines)


def objective_sensitivity(shop, db: str, spec: str, objective: str, *, seed: int | None = 0,
                          primary: str = "DR", train_frac: float = 0.5) -> ObjectiveSensitivity:
    """Amazon Personalize's objective sensitivity, estimated from a shop's log: ``spec`` with the
    business column ``objective`` blended in at each level (off, low, medium, high), each trained
    on the first part of the log and estimated on the rest; beside each estimate, the
    objective's expected total per carousel under that policy (its slot marginals times the
    column) and, for comparison, under the logging policy (what it showed)."""
    from .policies import SENSITIVITY

    columns = shop.columns
    if objective not in columns:
        raise ValidationError(f"objective {objective!r} is not a business column of the shop; known: "
                              f"{', '.join(sorted(columns)) or 'none (numeric item columns with a value for every item)'}",
                              "objective")
    value = np.asarray(columns[objective], dtype=float)
    totals: dict[str, list[float]] = {}

    def record(target, test, d, items, marg):
        totals.setdefault(target, []).append(float(value[items] @ marg.sum(axis=1)))

    base, sep, body = spec.partition(":")
    specs = {}
    for level in SENSITIVITY:
        extra = f"objective={objective},sensitivity={level}" if level != "off" else ""
        specs[level] = ":".join([base, ",".join(p for p in (body, extra) if p)]) if (body or extra) else base
    result = evaluate_log(db, list(specs.values()), estimators=(primary,), primary=primary, train_frac=train_frac,
                          seed=seed, shop=shop, on_target=record)
    log = DecisionLog(db)
    try:
        logged = on_shop(log.decisions(), log.item_ids(), shop)
    finally:
        log.close()
    test = _decisions(logged, result.n_train, logged.n_decisions)
    shown = float(np.bincount(test.row_decision, weights=value[test.row_action], minlength=test.n_decisions).mean())
    rows = [SensitivityRow(level, c.estimates[primary], float(np.mean(totals[c.spec])))
            for level, c in zip(specs, result.candidates)]
    return ObjectiveSensitivity(objective, spec, shown, result.logging, rows)


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
    notes = [f"- **{c.spec}** / {n}: {w}" for c in result.candidates for n, e in c.estimates.items() for w in e.warnings]
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
    chosen = (f"**{t.chosen}** was chosen: {t.estimate.estimator} {t.estimate.value:.4f} "
              f"[{t.estimate.lower:.4f}, {t.estimate.upper:.4f}] at {t.level:.2%}; "
              f"{'SAFE to deploy' if t.safe else 'not shown safe'} ({t.reason}).") if t.chosen else \
        f"No setting was chosen: {t.reason}."
    return (f"## Tuning\n\n{len(t.settings)} settings of `{'`, `'.join(t.grids)}` learned from the training "
            f"decisions and were estimated on the evaluated ones. Rule: {t.rule}: every setting's interval is at "
            f"{t.level:.2%}, so that all of them hold at once with {1 - (1 - t.level) * len(t.settings):.0%} "
            f"probability and the chosen one's stays "
            f"valid after the choice. {chosen}\n\n")
