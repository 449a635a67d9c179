"""``banditrec ablation``: what each candidate source adds, read off a decision log.

Two tables per log:

* **The log's account.** Per source: the candidates it proposed, the policy's slots shown from
  it, the reward on those slots and its share of all reward. Every logged policy slot has one
  source, so the columns sum to the log's totals.
* **Off-policy ablation.** A target policy is trained on the first ``train_frac`` of the log,
  then estimated on the rest twice per source: served every logged candidate, and served the
  candidates without that source's (its slots fall to the remaining candidates). The
  estimate is the library's IPS or SNIPS with the logged slot marginals (as ``banditrec
  evaluate`` computes them); the difference is paired by decision (the difference of the two
  estimates' influence functions), so its interval is narrower than the two intervals apart.
  Removing candidates only moves probability onto candidates the logger could also show, so
  every row the target reaches has a logged propensity.

Decisions whose candidates came with the request (no sources logged) count in the account
as ``request`` and are left out of the ablation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from ..errors import ValidationError
from ..offline import target_pscore, train_from_log
from ..ope.estimators import IPS, SNIPS
from ..policies import make
from ..types import LoggedDecisions
from .pipeline import candidate_env, item_features_or_one_hot

REQUEST = "request"  # the source of candidates a request brought


@dataclass
class SourceAccount:
    source: str
    candidates: int  # candidates it proposed (decisions with logged sources)
    shown: int  # policy slots shown from it
    reward: float  # reward on those slots
    rate_ci: tuple[float, float]  # reward per shown slot, normal interval


@dataclass
class SourceAblation:
    source: str
    value_without: float  # estimated reward per decision without its candidates
    delta: float  # value_without - value_all
    delta_ci: tuple[float, float]
    decisions_changed: int  # evaluated decisions where it proposed at least one candidate


@dataclass
class Ablation:
    policy: str
    estimator: str
    n_train: int
    n_eval: int
    value_all: float
    value_all_ci: tuple[float, float]
    account: list[SourceAccount]
    ablation: list[SourceAblation]
    totals: dict = field(default_factory=dict)

    def table(self) -> str:
        lines = [
            "The log's account (policy slots; pinned slots left out):",
            "",
            "| source | candidates | shown | share shown | reward | share of reward | reward per slot (95% CI) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        shown, reward = self.totals["shown"], self.totals["reward"]
        for a in self.account:
            lines.append(
                f"| {a.source} | {a.candidates:,} | {a.shown:,} | {a.shown / max(shown, 1):.3f} | {a.reward:,.1f} | "
                f"{a.reward / reward if reward else 0.0:.3f} | "
                f"{a.reward / max(a.shown, 1):.4f} ({a.rate_ci[0]:.4f}, {a.rate_ci[1]:.4f}) |"
            )
        lines.append(
            f"| **total** | {self.totals['candidates']:,} | {shown:,} | 1.000 | {reward:,.1f} | 1.000 | "
            f"{reward / max(shown, 1):.4f} |"
        )
        lines += [
            "",
            f"Off-policy ablation: `{self.policy}` trained on {self.n_train:,} decisions, {self.estimator} on "
            f"{self.n_eval:,}; value = reward per decision.",
            "",
            "| without | value | change | change 95% CI | decisions it touched |",
            "|---|---:|---:|---:|---:|",
            f"| (nothing) | {self.value_all:.4f} | | ({self.value_all_ci[0]:.4f}, {self.value_all_ci[1]:.4f}) | |",
        ]
        for b in self.ablation:
            lines.append(
                f"| {b.source} | {b.value_without:.4f} | {b.delta:+.4f} | "
                f"({b.delta_ci[0]:+.4f}, {b.delta_ci[1]:+.4f}) | {b.decisions_changed:,} |"
            )
        return "\n".join(lines)

    def as_json(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def read_sources(log, logged: LoggedDecisions) -> tuple[list[np.ndarray | None], np.ndarray]:
    """Each decision's candidate sources (None: the request brought its candidates) and each
    policy row's slot source, aligned with ``logged``."""
    with log.snapshot() as conn:
        lo, hi = (int(logged.seq[0]), int(logged.seq[-1])) if logged.n_decisions else (0, -1)
        dec = dict(conn.execute("SELECT seq, candidate_sources FROM decisions WHERE seq BETWEEN ? AND ?", (lo, hi)))
        rows = conn.execute(
            "SELECT d.seq, s.source FROM decisions d JOIN slots s ON s.event_id = d.event_id "
            "WHERE d.seq BETWEEN ? AND ? AND s.source != 'pinned' ORDER BY d.seq, s.position",
            (lo, hi),
        ).fetchall()
    per_decision: list[np.ndarray | None] = []
    for d, seq in enumerate(logged.seq.tolist()):
        text = dec.get(seq)
        if text is None:
            per_decision.append(None)
            continue
        sources = np.asarray(json.loads(text), dtype=object)
        if len(sources) != len(logged.candidates[d]):
            raise ValidationError(
                f"decision {logged.event_id[d]!r} logs {len(sources)} candidate sources for "
                f"{len(logged.candidates[d])} candidates",
                "candidate_sources",
            )
        per_decision.append(sources)
    wanted = set(logged.seq.tolist())
    slot_source = np.asarray([s for seq, s in rows if seq in wanted], dtype=object)
    if len(slot_source) != len(logged.row_action):
        raise ValidationError("the log changed while it was read; read it again", "slots")
    return per_decision, slot_source


def account(logged: LoggedDecisions, per_decision, slot_source) -> tuple[list[SourceAccount], dict]:
    """The log's account per source (see the module docstring) and its totals."""
    z = NormalDist().inv_cdf(0.975)
    proposed: dict[str, int] = {}
    for d, sources in enumerate(per_decision):
        if sources is None:
            proposed[REQUEST] = proposed.get(REQUEST, 0) + len(logged.candidates[d])
            continue
        names, counts = np.unique(sources.astype(str), return_counts=True)
        for k, c in zip(names.tolist(), counts.tolist()):
            proposed[k] = proposed.get(k, 0) + c
    out = []
    reward = logged.row_reward
    for name in sorted(set(proposed) | set(slot_source.tolist())):
        mine = slot_source == name
        n = int(mine.sum())
        r = reward[mine]
        mean = float(r.mean()) if n else 0.0
        half = z * float(r.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
        out.append(SourceAccount(name, proposed.get(name, 0), n, float(r.sum()), (mean - half, mean + half)))
    totals = {"candidates": sum(proposed.values()), "shown": len(reward), "reward": float(reward.sum())}
    return out, totals


def _interval(value: float, influence: np.ndarray) -> tuple[float, float]:
    """The normal 95% interval of an estimate from its per-decision influence function."""
    n = len(influence)
    half = NormalDist().inv_cdf(0.975) * math.sqrt(float(influence.var(ddof=1)) / n) if n > 1 else math.inf
    return value - half, value + half


def _paired(a: tuple[float, np.ndarray], b: tuple[float, np.ndarray]) -> tuple[float, tuple[float, float]]:
    """``b``'s value minus ``a``'s, with the interval of the difference of their influence
    functions (the two estimates are on the same decisions)."""
    delta = b[0] - a[0]
    return delta, _interval(delta, b[1] - a[1])


def ablation(
    logged: LoggedDecisions,
    per_decision: list,
    slot_source: np.ndarray,
    features: np.ndarray,
    *,
    policy: str,
    cold: np.ndarray | None = None,
    train_frac: float = 0.5,
    estimator: str = "SNIPS",
    min_epsilon: float = 0.0,
    holdout: np.ndarray | None = None,
) -> Ablation:
    """The account and the off-policy ablation of ``logged`` (see the module docstring);
    ``holdout`` (n_decisions,) bool: the analysis holdout's decisions, which the target does
    not train on (they stay in the evaluated share)."""
    if estimator not in ("IPS", "SNIPS"):
        raise ValidationError(f"estimator must be IPS or SNIPS, got {estimator!r}", "estimator")
    if not 0 < train_frac < 1:
        raise ValidationError(f"train_frac must be in (0, 1), got {train_frac!r}", "train_frac")
    acc, totals = account(logged, per_decision, slot_source)
    with_sources = np.array([s is not None for s in per_decision], dtype=bool)
    D = logged.n_decisions
    n_train = int(D * train_frac)
    if n_train < 1 or D - n_train < 2:
        raise ValidationError(f"the log has {D} decisions: too few to train on and evaluate", "db")
    n_items = int(max(int(c.max(initial=-1)) for c in logged.candidates)) + 1
    feats = item_features_or_one_hot(features, n_items)
    train = logged.take(0, n_train)
    if holdout is not None:
        train = train.subset(~np.asarray(holdout, dtype=bool)[:n_train])
    target = make(policy, **candidate_env(logged.context.shape[1], feats, train, n_items))
    train_from_log(target, train, feats, cold=cold)
    test = logged.take(n_train, D)
    srcs = per_decision[n_train:]
    if not with_sources[n_train:].any():
        raise ValidationError("no evaluated decision logged its candidate sources (all came with the request)", "db")
    test = test.subset(with_sources[n_train:])
    srcs = [s for s in srcs if s is not None]
    est = {"IPS": IPS, "SNIPS": SNIPS}[estimator]()
    data = test.logged_bandit(n_items, int(test.row_slot.max()) + 1)

    def estimate(offered) -> tuple[float, np.ndarray]:
        pi = target_pscore(target, test, feats, min_epsilon=min_epsilon, cold=cold, offered=offered)
        return est.decision_terms(data, target_pscore=pi).value_and_influence()

    every = estimate(None)
    value_all, ci_all = every[0], _interval(*every)
    rows = []
    for name in sorted({str(x) for s in srcs for x in s.tolist()}):
        without = estimate(lambda d, _n=name: srcs[d] != _n)
        delta, ci = _paired(every, without)
        touched = sum(1 for s in srcs if (s == name).any())
        rows.append(SourceAblation(name, without[0], delta, ci, touched))
    return Ablation(policy, estimator, n_train, test.n_decisions, value_all, ci_all, acc, rows, totals)


def ablation_log(
    db,
    *,
    policy: str | None = None,
    shop=None,
    kind: str = "click",
    train_frac: float = 0.5,
    estimator: str = "SNIPS",
) -> Ablation:
    """:func:`ablation` of the decision log at ``db``; ``shop`` (a :class:`~banditrec.shop.Shop`)
    gives the item features of a log served from it; ``policy`` defaults to the spec that
    logged the most decisions."""
    from ..store import DecisionLog
    from ..store.arms import arms_of
    from .sqlite import on_shop

    log = DecisionLog(db)
    try:
        logged = log.decisions(kind=kind)
        if logged.n_decisions == 0:
            raise ValidationError(f"{db} holds no settled decisions", "db")
        per_decision, slot_source = read_sources(log, logged)
        holdout = arms_of(log, logged.seq) == "holdout"
        cold = None
        if shop is not None:
            logged = on_shop(logged, log.item_ids(), shop)
            features, cold = shop.items.features, shop.items.cold
        else:
            features = log.items()[1]
        if policy is None:
            with log.snapshot() as conn:
                policy = conn.execute(
                    "SELECT policy FROM decisions GROUP BY policy ORDER BY count(*) DESC, policy LIMIT 1"
                ).fetchone()[0]
    finally:
        log.close()
    return ablation(
        logged,
        per_decision,
        slot_source,
        features,
        policy=policy,
        cold=cold,
        train_frac=train_frac,
        estimator=estimator,
        holdout=holdout,
    )
