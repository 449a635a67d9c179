"""``banditrec evaluate --db``: the pipeline (:mod:`banditrec.evaluation.pipeline`) on a SQLite
decision log in this process: the training share read whole, the evaluated decisions streamed
a chunk of log sequence numbers at a time (:data:`CHUNK_DECISIONS`), so that memory does not
grow with the log beyond the training share and the reward model's statistics; optionally on
a shop directory's items (``--shop``). Also the objective-sensitivity table estimated from a
shop's log (``banditrec sensitivity --shop --db``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import ValidationError
from ..store import DecisionLog
from ..store.codecs import float_rows, number_lists
from ..types import Estimate, LoggedDecisions
from .pipeline import (
    DEFAULT_ESTIMATORS,
    Backend,
    Evaluation,
    Split,
    check_request,
    evaluate,
    item_features_or_one_hot,
)


def shop_index(item_ids: dict[int, str], shop) -> tuple[np.ndarray, list[str | None]]:
    """The shop's index of each log item index (-1 where the shop lacks the item), and the
    log's item ids by index (None where the log has none)."""
    n_log = 1 + max(item_ids, default=-1)
    ids = [item_ids.get(j) for j in range(n_log)]
    to_shop = np.full(n_log, -1, dtype=np.int64)
    known = [j for j, item in enumerate(ids) if item is not None]
    to_shop[known] = shop.items.lookup([ids[j] for j in known])
    return to_shop, ids


def renumber(logged: LoggedDecisions, to_shop: np.ndarray, ids: list[str | None]) -> LoggedDecisions:
    """``logged`` with its item indices mapped by ``to_shop`` (:func:`shop_index`)."""
    n_log = len(to_shop)
    used = np.unique(np.concatenate([logged.row_action, *logged.candidates]))
    missing = used[(used >= n_log) | (to_shop[np.minimum(used, n_log - 1)] < 0)]
    if len(missing):
        shown = ", ".join(repr(ids[j]) if j < n_log and ids[j] else f"index {j}" for j in missing[:3].tolist())
        raise ValidationError(
            f"the log shows {len(missing)} items the shop's catalog does not hold (e.g. {shown}); "
            "was it built from the same items file?",
            "shop",
        )
    return replace(logged, candidates=[to_shop[c] for c in logged.candidates], row_action=to_shop[logged.row_action])


def check_context(width: int, shop) -> None:
    if width != shop.context_dim:
        raise ValidationError(
            f"the log's decisions carry {width} context features, the shop's context has "
            f"{shop.context_dim}: evaluate a log served from this shop (or, for an imported log, build the shop "
            "with --context-encoding FILE, the encoding `banditrec import` wrote)",
            "shop",
        )


def on_shop(logged: LoggedDecisions, item_ids: dict[int, str], shop) -> LoggedDecisions:
    """``logged`` with its item indices translated to ``shop``'s index by item id (a log served
    from the shop keeps them; an imported or older log is mapped), and its contexts checked
    against the shop's context features."""
    check_context(logged.context.shape[1], shop)
    return renumber(logged, *shop_index(item_ids, shop))


CHUNK_DECISIONS = 32_768
"""Evaluated decisions per chunk of ``evaluate --db``: what one step of the pipeline holds in
memory (with each row's candidates: about 2 KB per logged slot at 50 candidates)."""

# the policy slot of a row is its position after the decision's pinned slots (the reader's row_slot)
_MAX_POLICY_SLOT = (
    "SELECT max(top - pinned) FROM (SELECT max(CASE WHEN s.source != 'pinned' THEN s.position END) AS top, "
    "sum(s.source = 'pinned') AS pinned FROM decisions d JOIN slots s ON s.event_id = d.event_id "
    "WHERE d.seq > ? AND d.seq <= ? GROUP BY d.seq)"
)


@dataclass(frozen=True)
class _Items:
    """What a chunk checks and maps its item indices with: the item count (None: not checked),
    and for a shop, the shop's index of each log item and the log's item ids."""

    n_items: int | None = None
    to_shop: np.ndarray | None = None
    ids: list | None = None

    def apply(self, logged: LoggedDecisions) -> LoggedDecisions:
        if self.to_shop is not None:
            return renumber(logged, self.to_shop, self.ids or [])
        if self.n_items is not None and logged.n_decisions:
            top = max((int(c.max()) for c in logged.candidates if len(c)), default=-1)
            if top >= self.n_items:
                raise ValidationError(
                    f"the item table has {self.n_items} items but decisions refer to item index {top}", "items"
                )
        return logged


@dataclass(frozen=True)
class SQLiteChunk:
    """The logged decisions with ``after_seq < seq <= until_seq``, read when loaded
    (``training``: without the analysis holdout)."""

    log: DecisionLog
    after_seq: int
    until_seq: int
    kind: str
    default_reward: float
    items: _Items
    training: bool = False

    def load(self) -> LoggedDecisions:
        logged = self.log.decisions(
            after_seq=self.after_seq,
            until_seq=self.until_seq,
            kind=self.kind,
            default_reward=self.default_reward,
            training=self.training,
        )
        return self.items.apply(logged)


class SQLiteBackend(Backend):
    """The decision log at ``db`` (``kind`` rewards, ``default_reward`` where none), its
    decisions up to the last one logged when opened, read ``chunk_decisions`` at a time (None:
    the training share and the evaluated one each in one chunk); with a
    :class:`~banditrec.shop.Shop`, its items renumbered to the shop's, whose features, cold
    flags, product types and business columns the candidates get. The log is opened once and
    read by every chunk; :meth:`close` closes it."""

    field = "db"

    def __init__(
        self,
        db,
        *,
        kind: str = "click",
        default_reward: float = 0.0,
        shop=None,
        chunk_decisions: int | None = CHUNK_DECISIONS,
    ):
        if not Path(db).exists():
            raise ValidationError(f"no decision log at {db}", "db")
        if chunk_decisions is not None and (isinstance(chunk_decisions, bool) or int(chunk_decisions) < 1):
            raise ValidationError(f"chunk_decisions must be a positive integer, got {chunk_decisions!r}", "chunk")
        self.name = self.db = str(db)
        self.kind, self.default_reward, self.chunk = kind, float(default_reward), chunk_decisions
        self._log = log = DecisionLog(db)
        try:
            log.settle_pending()
            conn = log.db.conn
            self.until_seq = int(conn.execute("SELECT coalesce(max(seq), 0) FROM decisions").fetchone()[0])
            self.n_decisions = int(
                conn.execute("SELECT count(*) FROM decisions WHERE seq <= ?", (self.until_seq,)).fetchone()[0]
            )
            first = conn.execute("SELECT context FROM decisions ORDER BY seq LIMIT 1").fetchone()
            self.context_dim = float_rows([first[0]]).shape[1] if first else 0
            if shop is not None and self.n_decisions:
                check_context(self.context_dim, shop)
                to_shop, log_ids = shop_index(log.item_ids(), shop)
                self.items = _Items(to_shop=to_shop, ids=log_ids)
                self.features, self.has_item_table = shop.items.features, True
                self.cold = shop.items.cold  # as the engine serving the shop puts them in requests
                self.policy_env = shop.policy_env()
            else:
                ids, features, _ = log.items()
                if len(ids):
                    self.features, self.has_item_table = np.asarray(features, dtype=float), True
                    self.items = _Items(n_items=len(self.features))
                else:
                    self.features = item_features_or_one_hot(np.zeros((0, 0)), max_candidate(conn, self.until_seq) + 1)
                    self.has_item_table, self.items = False, _Items()
            self._policies = log.policies()
        except BaseException:
            log.close()
            raise

    def close(self) -> None:
        self._log.close()

    def _chunk(self, after_seq: int, until_seq: int, training: bool = False) -> SQLiteChunk:
        return SQLiteChunk(self._log, after_seq, until_seq, self.kind, self.default_reward, self.items, training)

    def split(self, n_train: int) -> Split:
        conn = self._log.db.conn

        def seq_after(after: int, k: int) -> int:  # the seq of the k-th decision after ``after``
            row = conn.execute(
                "SELECT seq FROM decisions WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT 1 OFFSET ?",
                (after, self.until_seq, k - 1),
            ).fetchone()
            return self.until_seq if row is None else int(row[0])

        cut = seq_after(0, n_train) if n_train else 0

        def chunked(lo: int, until: int, training: bool = False) -> list[SQLiteChunk]:
            out = []
            while lo < until:
                hi = until if self.chunk is None else min(until, seq_after(lo, self.chunk))
                out.append(self._chunk(lo, hi, training))
                lo = hi
            return out

        # candidates train as a learner would, without the analysis holdout; its decisions,
        # served by the policy with exact propensities, stay in the evaluated share
        train = chunked(0, cut, training=True)
        chunks = chunked(cut, self.until_seq)
        top = conn.execute(_MAX_POLICY_SLOT, (cut, self.until_seq)).fetchone()[0]
        return Split(train, chunks or [self._chunk(cut, cut)], 1 if top is None else int(top) + 1)

    def logging_policies(self) -> list[str]:
        return self._policies

    def baseline_served(self) -> bool:
        conn = self._log.db.conn
        return bool(
            conn.execute(
                "SELECT EXISTS (SELECT 1 FROM decisions WHERE served = 'baseline' AND seq <= ?)", (self.until_seq,)
            ).fetchone()[0]
        )

    def min_reward(self) -> float | None:
        return self._log.db.conn.execute("SELECT min(reward) FROM rewards WHERE kind = ?", (self.kind,)).fetchone()[0]


def max_candidate(conn, until_seq: int, batch: int = 50_000) -> int:
    """The largest item index among the candidates of the decisions up to ``until_seq`` (-1
    without any), read ``batch`` decisions at a time."""
    top, cur = -1, conn.execute("SELECT candidate_index FROM decisions WHERE seq <= ? ORDER BY seq", (until_seq,))
    while rows := cur.fetchmany(batch):
        flat, _ = number_lists([r[0] for r in rows], np.int64)
        if len(flat):
            top = max(top, int(flat.max()))
    return top


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
    """Evaluate candidate policies off-policy on the decision log at ``db``.

    Parameters
    ----------
    db : str
        The decision log.
    specs : list of str
        Candidate policy specs.
    estimators, primary : tuple of str, str
        Estimators to report; the one whose lower bound decides the verdict.
    kind, default_reward : str, float
        The reward kind evaluated; the reward of a slot without one.
    train_frac : float
        Share of the decisions (oldest first) the candidates learn from.
    tune : tuple of str
        Grids of settings to choose from on the log (``docs/evaluation.md``).
    reward_model : str, optional
        The DM/DR family's model (``ridge``, ``logistic``, ``gbt``).
    shop : Shop, optional
        Build, train and re-score the candidates on the shop's items and business columns.
    on_target : callable, optional
        ``on_target(spec, test, d, items, marginals)`` sees each candidate's marginals on every
        evaluated decision (e.g. to compute its exact value in a simulator).

    Returns
    -------
    Evaluation
        Every candidate's estimates and verdict, and the report's path when ``out`` is given.

    Raises
    ------
    ValidationError
        A bad argument, or a log with nothing to evaluate.
    """
    request = check_request(
        specs,
        estimators=estimators,
        primary=primary,
        tune=tune,
        train_frac=train_frac,
        reward_model=reward_model,
        kind=kind,
        default_reward=default_reward,
        level=level,
        seed=seed,
        n_folds=n_folds,
    )
    backend = SQLiteBackend(db, kind=kind, default_reward=default_reward, shop=shop)
    try:
        return evaluate(backend, request, out=out, on_target=on_target)
    finally:
        backend.close()


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
        head = (
            f"{'sensitivity':<11} {'estimator':<9} {'reward':>9} {'95% CI':>21} "
            f"{self.objective + ' per carousel':>{max(22, len(self.objective) + 13)}}"
        )
        lines = [
            f"{self.spec} with objective {self.objective!r}, trained and estimated on the log",
            head,
            "-" * len(head),
        ]
        w = max(22, len(self.objective) + 13)
        lines.append(
            f"{'(logging)':<11} {'on-policy':<9} {self.logging.value:>9.4f} [{self.logging.lower:>9.4f}, "
            f"{self.logging.upper:>9.4f}] {self.logging_objective:>{w}.2f}"
        )
        for r in self.rows:
            e = r.estimate
            lines.append(
                f"{r.level:<11} {e.estimator:<9} {e.value:>9.4f} [{e.lower:>9.4f}, {e.upper:>9.4f}] "
                f"{r.objective:>{w}.2f}" + ("  warn" if e.warnings else "")
            )
        return "\n".join(lines)


def objective_sensitivity(
    shop, db: str, spec: str, objective: str, *, seed: int | None = 0, primary: str = "DR", train_frac: float = 0.5
) -> ObjectiveSensitivity:
    """Amazon Personalize's objective sensitivity, estimated from a shop's log: ``spec`` with the
    business column ``objective`` blended in at each level (off, low, medium, high), each trained
    on the first part of the log and estimated on the rest; beside each estimate, the
    objective's expected total per carousel under that policy (its slot marginals times the
    column) and, for comparison, under the logging policy (what it showed)."""
    from ..policies import SENSITIVITY

    columns = shop.columns
    if objective not in columns:
        raise ValidationError(
            f"objective {objective!r} is not a business column of the shop; known: "
            f"{', '.join(sorted(columns)) or 'none (numeric item columns with a value for every item)'}",
            "objective",
        )
    value = np.asarray(columns[objective], dtype=float)
    totals: dict[str, list[float]] = {}

    def record(target, test, d, items, marg):
        totals.setdefault(target, []).append(float(value[items] @ marg.sum(axis=1)))

    base, sep, body = spec.partition(":")
    specs = {}
    for level in SENSITIVITY:
        extra = f"objective={objective},sensitivity={level}" if level != "off" else ""
        specs[level] = ":".join([base, ",".join(p for p in (body, extra) if p)]) if (body or extra) else base
    result = evaluate_log(
        db,
        list(specs.values()),
        estimators=(primary,),
        primary=primary,
        train_frac=train_frac,
        seed=seed,
        shop=shop,
        on_target=record,
    )
    log = DecisionLog(db)
    try:
        logged = on_shop(log.decisions(), log.item_ids(), shop)
    finally:
        log.close()
    test = logged.take(result.n_train, logged.n_decisions)
    shown = float(np.bincount(test.row_decision, weights=value[test.row_action], minlength=test.n_decisions).mean())
    rows = [
        SensitivityRow(level, c.estimates[primary], float(np.mean(totals[c.spec])))
        for level, c in zip(specs, result.candidates)
    ]
    return ObjectiveSensitivity(objective, spec, shown, result.logging, rows)
