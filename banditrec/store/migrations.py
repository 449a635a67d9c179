"""The decision log's schema, as named transactional migrations (sqlite-utils ``Migrations``).

Never edit an applied migration: add a new one.
"""

from __future__ import annotations

import re
import warnings

from sqlite_utils import Migrations

migrations = Migrations("banditrec.log")


@migrations(name="0001_decisions_slots_rewards")
def _initial(db):
    db.executescript(
        """
        CREATE TABLE decisions (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- log order; never reused, never renumbered
            event_id TEXT NOT NULL UNIQUE,
            ts REAL NOT NULL,
            user_id TEXT NOT NULL,
            surface TEXT NOT NULL,
            policy TEXT NOT NULL,
            policy_params TEXT NOT NULL,          -- JSON object
            model_version TEXT NOT NULL,
            n_slots INTEGER NOT NULL CHECK (n_slots >= 1),
            candidates TEXT NOT NULL,             -- JSON list of item ids, in scoring order
            candidate_index TEXT NOT NULL,        -- JSON list of catalog indices, same order
            context TEXT NOT NULL,                -- JSON list of floats (full precision)
            -- the joint probability can underflow to 0 for long slates; its log cannot
            joint_propensity REAL NOT NULL CHECK (joint_propensity >= 0 AND joint_propensity <= 1),
            log_joint_propensity REAL NOT NULL CHECK (log_joint_propensity <= 0)
        );
        CREATE TABLE slots (
            event_id TEXT NOT NULL REFERENCES decisions(event_id),
            position INTEGER NOT NULL CHECK (position >= 0),
            item_id TEXT NOT NULL,
            item_index INTEGER NOT NULL CHECK (item_index >= 0),
            propensity REAL NOT NULL CHECK (propensity > 0 AND propensity <= 1),
            marginal REAL NOT NULL CHECK (marginal > 0 AND marginal <= 1),
            marginal_draws INTEGER NOT NULL DEFAULT 0 CHECK (marginal_draws >= 0),
            source TEXT NOT NULL,
            PRIMARY KEY (event_id, position)
        );
        CREATE TABLE rewards (
            event_id TEXT NOT NULL REFERENCES decisions(event_id),
            position INTEGER NOT NULL CHECK (position >= -1),   -- -1: the decision as a whole
            kind TEXT NOT NULL,
            reward REAL NOT NULL,
            ts REAL NOT NULL,
            PRIMARY KEY (event_id, position, kind)
        );
        CREATE INDEX decisions_ts ON decisions (ts);
        """
    )


@migrations(name="0002_late_rewards_events_models_items")
def _late_events_models_items(db):
    """Late-reward flag; interaction events; model versions; the item catalog.

    With ``items`` a log is self-describing: an offline evaluator can rebuild the features a
    policy saw from the log alone (``slots.item_index`` and ``decisions.candidate_index``
    index into it).
    """
    db.executescript(
        """
        -- 1: a reward that arrived after its decision's reward window; kept, never learned from
        -- by default (see DecisionLog.decisions)
        ALTER TABLE rewards ADD COLUMN late INTEGER NOT NULL DEFAULT 0 CHECK (late IN (0, 1));
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            user_id TEXT NOT NULL,
            item_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('view', 'cart', 'purchase')),
            event_id TEXT NULL REFERENCES decisions(event_id)  -- the decision it is attributed to
        );
        CREATE INDEX events_user_ts ON events (user_id, ts);
        CREATE TABLE model_versions (
            version TEXT PRIMARY KEY NOT NULL,
            policy TEXT NOT NULL,
            params TEXT NOT NULL CHECK (CASE WHEN json_valid(params) THEN json_type(params) = 'object' ELSE 0 END),
            created_ts REAL NOT NULL,
            path TEXT NULL,
            sha256 TEXT NULL CHECK (sha256 IS NULL OR length(sha256) = 64),
            n_updates INTEGER NOT NULL DEFAULT 0 CHECK (n_updates >= 0),
            trained_until_seq INTEGER NOT NULL DEFAULT 0 CHECK (trained_until_seq >= 0)
        );
        CREATE TABLE items (
            item_index INTEGER PRIMARY KEY CHECK (item_index >= 0),
            item_id TEXT NOT NULL UNIQUE,
            -- JSON list of floats (full precision)
            features TEXT NOT NULL CHECK (CASE WHEN json_valid(features) THEN json_type(features) = 'array' ELSE 0 END),
            -- JSON object of business columns (price, margin, stock, ...)
            attrs TEXT NOT NULL DEFAULT '{}' CHECK (CASE WHEN json_valid(attrs) THEN json_type(attrs) =
            'object' ELSE 0 END)
        );
        """
    )


@migrations(name="0003_decisions_shop_build")
def _shop_build(db):
    """Which shop-directory build served each decision (NULL: not served from a shop directory)."""
    db.executescript("ALTER TABLE decisions ADD COLUMN shop_build TEXT NULL;")


# Registry names before 0004: "linucb" was the per-item model and "shared-linucb" the shared one.
RENAMED_POLICIES = {"linucb": "disjoint-linucb", "shared-linucb": "linucb"}


@migrations(name="0004_policy_names")
def _policy_names(db):
    """Policy names say what each policy is: the per-item LinUCB is ``disjoint-linucb`` and the
    shared model ``linucb``. Rows logged under the old names are renamed, with a warning."""
    case = "CASE policy " + " ".join(f"WHEN '{old}' THEN '{new}'" for old, new in RENAMED_POLICIES.items()) + " END"
    where = "policy IN (" + ", ".join(f"'{old}'" for old in RENAMED_POLICIES) + ")"
    renamed = 0
    for table in ("decisions", "model_versions"):
        renamed += db.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]
        db.execute(f"UPDATE {table} SET policy = {case} WHERE {where}")
    if renamed:
        warnings.warn(
            f"{renamed} logged rows renamed their policy to the current names "
            f"({', '.join(f'{o} -> {n}' for o, n in RENAMED_POLICIES.items())})",
            DeprecationWarning,
            stacklevel=2,
        )


NULLABLE_0005 = {"slots": ("propensity", "marginal"), "decisions": ("joint_propensity", "log_joint_propensity")}


@migrations(name="0005_pending_propensities")
def _pending_propensities(db):
    """Monte-Carlo propensities computed after the decision is logged: ``slots.propensity``,
    ``slots.marginal`` and the decision's joint propensity may be NULL while the decision is
    listed in ``pending`` (with the recipe that re-derives them, when one is self-contained).

    SQLite cannot drop a NOT NULL with ALTER TABLE. Its documented procedure for a change that
    leaves the stored rows valid (removing a NOT NULL or CHECK constraint: "ALTER TABLE",
    section 7) edits the table's SQL in the schema table and bumps ``schema_version``: O(1) on
    a log of any size, where rebuilding the tables copies every row. A schema text this does not
    recognise is rebuilt instead (sqlite-utils ``transform``)."""
    edits = {}
    for table, columns in NULLABLE_0005.items():
        sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
        for column in columns:
            sql, n = re.subn(rf"(\b{column}\s+REAL)\s+NOT\s+NULL\b", r"\1", sql, flags=re.IGNORECASE)
            if n != 1:
                break
        else:
            edits[table] = sql
            continue
        db[table].transform(not_null=dict.fromkeys(columns, False))
    if edits:
        version = db.execute("PRAGMA schema_version").fetchone()[0]
        db.execute("PRAGMA writable_schema = ON")
        try:
            for table, sql in edits.items():
                db.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?", (sql, table))
            db.execute(f"PRAGMA schema_version = {int(version) + 1}")
        finally:
            db.execute("PRAGMA writable_schema = OFF")
    db.executescript(
        """
        CREATE TABLE pending (
            event_id TEXT PRIMARY KEY NOT NULL REFERENCES decisions(event_id),
            recipe BLOB NULL  -- NULL: only the serving process can complete it (see docs/policies.md)
        );
        """
    )


@migrations(name="0006_log_meta_routed_rewards")
def _routed_rewards(db):
    """Sharded serving: ``log_meta`` records the log's shard and a random id of the file, and
    ``routed_rewards`` holds rewards this node acknowledged for decisions another shard logged
    (no foreign key: the decision is in that shard's file). Compaction joins them."""
    db.executescript(
        """
        CREATE TABLE log_meta (
            key TEXT PRIMARY KEY NOT NULL,
            value TEXT NOT NULL
        );
        CREATE TABLE routed_rewards (
            event_id TEXT NOT NULL,
            position INTEGER NOT NULL CHECK (position >= -1),   -- -1: the decision as a whole
            kind TEXT NOT NULL,
            reward REAL NOT NULL,
            ts REAL NOT NULL,
            PRIMARY KEY (event_id, position, kind)
        );
        """
    )


@migrations(name="0007_candidate_sources")
def _candidate_sources(db):
    """Which candidate source proposed each candidate: a JSON list of source names in the order of
    ``candidates`` (NULL: the request brought its candidates). The ablation report reads it."""
    db.executescript("ALTER TABLE decisions ADD COLUMN candidate_sources TEXT NULL;")


@migrations(name="0008_arms_baseline_modes")
def _arms_baseline_modes(db):
    """Serving a baseline beside the policy.

    ``decisions.arm``: the user's analysis group (``main``; ``holdout``: served by the policy,
    never learned from; ``control``: served by the baseline). ``decisions.served``: what filled
    the slots, the policy or the request's baseline (apprentice mode and the control arm).
    ``decisions.shadow``: for a baseline-served decision, the slate the policy drew instead
    (JSON list of item ids). ``slots.policy_marginal``: the policy's probability that this
    slot holds this item, logged beside the baseline's propensity of 1. ``serving_modes``:
    every switch between apprentice and live serving, with who asked, why and the gate's
    figures; the newest row is the mode. ``gate_verdicts``: the safe-deploy verdicts
    ``banditrec evaluate --record`` wrote, which the switch to live reads.
    """
    db.executescript(
        """
        ALTER TABLE decisions ADD COLUMN arm TEXT NOT NULL DEFAULT 'main'
            CHECK (arm IN ('main', 'holdout', 'control'));
        ALTER TABLE decisions ADD COLUMN served TEXT NOT NULL DEFAULT 'policy'
            CHECK (served IN ('policy', 'baseline'));
        ALTER TABLE decisions ADD COLUMN shadow TEXT NULL;
        ALTER TABLE slots ADD COLUMN policy_marginal REAL NULL
            CHECK (policy_marginal IS NULL OR (policy_marginal >= 0 AND policy_marginal <= 1));
        CREATE TABLE serving_modes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            mode TEXT NOT NULL CHECK (mode IN ('apprentice', 'live')),
            actor TEXT NOT NULL,
            reason TEXT NOT NULL,
            gate TEXT NULL CHECK (gate IS NULL OR json_valid(gate))  -- the verdict it relied on
        );
        CREATE TABLE gate_verdicts (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            policy TEXT NOT NULL,        -- the candidate's registry name (linucb, ...)
            spec TEXT NOT NULL,
            safe INTEGER NOT NULL CHECK (safe IN (0, 1)),
            estimator TEXT NOT NULL,
            value REAL NOT NULL,
            lower REAL NOT NULL,
            upper REAL NOT NULL,
            baseline REAL NOT NULL,      -- the logging policy's on-policy value
            n_decisions INTEGER NOT NULL,
            reason TEXT NOT NULL
        );
        CREATE INDEX decisions_arm ON decisions (arm) WHERE arm != 'main';
        """
    )


HIDE_KINDS_0009 = ("hide", "not_interested")


@migrations(name="0009_negative_feedback_blocklist")
def _negative_feedback_blocklist(db):
    """Negative feedback and the global block list (docs/feedback.md).

    ``events`` takes the kinds ``hide`` and ``not_interested``, with the hide's ``scope``
    (``item`` or ``type``) and ``expires_ts`` (when its suppression ends; NULL for the other
    kinds); a partial index finds a user's hides without reading their views. The kind CHECK is
    widened by editing the table's SQL in place, as 0005 removes its NOT NULLs (every stored
    row still passes the wider check); a table text this does not recognise is copied into a new
    table with the wider check instead (sqlite-utils ``transform`` would keep the old check).
    ``blocklist`` holds the items no user may be shown, ``audit`` the trail of changes (this
    list's and other admin switches'), and ``log_meta`` the key ``blocklist_generation`` that
    serving processes compare to see a change."""
    sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone()[0]
    wider = ", ".join(f"'{k}'" for k in ("view", "cart", "purchase", *HIDE_KINDS_0009))
    edited, n = re.subn(
        r"CHECK\s*\(\s*kind\s+IN\s*\(\s*'view'\s*,\s*'cart'\s*,\s*'purchase'\s*\)\s*\)",
        f"CHECK (kind IN ({wider}))",
        sql,
        flags=re.IGNORECASE,
    )
    if n == 1:
        version = db.execute("PRAGMA schema_version").fetchone()[0]
        db.execute("PRAGMA writable_schema = ON")
        try:
            db.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'events'", (edited,))
            db.execute(f"PRAGMA schema_version = {int(version) + 1}")
        finally:
            db.execute("PRAGMA writable_schema = OFF")
    else:  # rebuilt with the 0002 layout and the wider check, keeping its rows and seq counter
        kinds = f"CHECK (kind IN ({wider}))"
        db.execute(
            f"""CREATE TABLE events_0009 (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            user_id TEXT NOT NULL,
            item_id TEXT NOT NULL,
            kind TEXT NOT NULL {kinds},
            event_id TEXT NULL REFERENCES decisions(event_id)  -- the decision it is attributed to
        )"""
        )
        db.execute(
            "INSERT INTO events_0009 (seq, ts, user_id, item_id, kind, event_id) "
            "SELECT seq, ts, user_id, item_id, kind, event_id FROM events"
        )
        last = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        db.execute("DROP TABLE events")
        db.execute("ALTER TABLE events_0009 RENAME TO events")
        if last is not None:
            db.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'events'", (last[0],))
        db.execute("CREATE INDEX events_user_ts ON events (user_id, ts)")
    for statement in (
        "ALTER TABLE events ADD COLUMN scope TEXT NULL CHECK (scope IS NULL OR scope IN ('item', 'type'))",
        "ALTER TABLE events ADD COLUMN expires_ts REAL NULL",
        "CREATE INDEX events_hidden ON events (user_id, expires_ts) WHERE expires_ts IS NOT NULL",
        """CREATE TABLE blocklist (
            item_id TEXT PRIMARY KEY NOT NULL,
            ts REAL NOT NULL,
            reason TEXT NOT NULL,
            actor TEXT NOT NULL
        )""",
        """CREATE TABLE audit (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            subject TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}'
                CHECK (CASE WHEN json_valid(detail) THEN json_type(detail) = 'object' ELSE 0 END)
        )""",
        "CREATE INDEX audit_action ON audit (action, seq)",
        "INSERT OR IGNORE INTO log_meta VALUES ('blocklist_generation', '0')",
    ):
        db.execute(statement)
