"""Import and export of decision logs: CSV / Parquet / VW text / DSJSON out, OBD and mapped CSV in.

The VW tests run the real Vowpal Wabbit 9.11 on the exported files: it must parse every
example with its label on the right action, and learn the item that always pays.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import sys

import numpy as np
import pyarrow.parquet as pq  # the `parquet` extra, installed by `make test`: missing, this fails, never skips
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vowpalwabbit import Workspace

from banditrec.cli import main
from banditrec.errors import ValidationError
from banditrec.store import DecisionLog
from banditrec.store import export as store_export
from banditrec.store.exchange import export_log, import_file
from banditrec.store.export import SCHEMA_VERSION, MissingDependencyError, export_csv, export_parquet
from banditrec.store.importer import ImportFailedError, import_csv, import_obd
from banditrec.store.vw import export_dsjson, export_vw, vw_escape
from banditrec.types import Decision, Reward, Slot

# ---- helpers ---------------------------------------------------------------------------------


def write(
    log,
    event_id,
    items,
    props,
    margs,
    *,
    candidates,
    cand_index,
    context=(),
    ts=1.0,
    user="u",
    policy="pol",
    model_version="m0",
    surface="home",
    params=None,
    sources=None,
    draws=None,
    joint=None,
    log_joint=None,
):
    """Log one decision whose slots show ``items``; ``cand_index[j]`` is candidate j's catalog index."""
    slots = tuple(
        Slot(
            position=k,
            item_id=it,
            propensity=p,
            marginal=m,
            source="cf" if sources is None else sources[k],
            marginal_draws=0 if draws is None else draws[k],
        )
        for k, (it, p, m) in enumerate(zip(items, props, margs))
    )
    joint = float(np.prod(props)) if joint is None else joint
    log_joint = float(np.log(props).sum()) if log_joint is None else log_joint
    d = Decision(
        event_id=event_id,
        user_id=user,
        slots=slots,
        joint_propensity=joint,
        log_joint_propensity=log_joint,
        policy=policy,
        model_version=model_version,
        candidates=tuple(candidates),
        ts=ts,
    )
    index_of = dict(zip(candidates, cand_index))
    log.write_decision(
        d,
        policy_params={"epsilon": 0.1} if params is None else params,
        candidate_index=cand_index,
        slot_index=[index_of[i] for i in items],
        context=context,
        surface=surface,
    )


def tables(log) -> list[list[tuple]]:
    """Every row of the log's decision tables, floats as hex so that -0.0 and last bits count."""

    def cell(v):
        return float(v).hex() if isinstance(v, float) else v

    out = []
    for sql in (
        "SELECT * FROM decisions ORDER BY seq",
        "SELECT * FROM slots ORDER BY event_id, position",
        "SELECT * FROM rewards ORDER BY event_id, position, kind",
    ):
        out.append([tuple(cell(v) for v in row) for row in log.db.execute(sql).fetchall()])
    return out


def uniform_log(n_decisions=400, n_slots=2, good="i2", seed=0, ctx_dim=3):
    """Uniform random slates of ``n_slots`` from 5 candidates; ``good`` always earns a click.

    Without replacement, every candidate's marginal in every slot is 1/5, while the conditional
    in slot k is 1/(5 - k).
    """
    rng = np.random.default_rng(seed)
    cands = ["i0", "i1", "i2", "i3", "i4"]
    log = DecisionLog()
    for e in range(n_decisions):
        shown = list(rng.permutation(cands)[:n_slots])
        props = [1 / (5 - k) for k in range(n_slots)]
        write(
            log,
            f"e{e}",
            shown,
            props,
            [0.2] * n_slots,
            candidates=cands,
            cand_index=list(range(5)),
            context=rng.normal(size=ctx_dim).tolist(),
            ts=1_700_000_000.0 + e,
        )
        for k, item in enumerate(shown):
            log.record_reward(Reward(f"e{e}", 1.0 if item == good else 0.0, position=k))
    return log, cands


def vw_examples(text: str) -> list[list[str]]:
    return [block.split("\n") for block in text.strip("\n").split("\n\n")]


def logged_rows(log) -> list[tuple]:
    """(event_id, position, item_id, marginal, click reward or None) per logged slot, in export order."""
    return log.db.execute(
        "SELECT s.event_id, s.position, s.item_id, s.marginal, r.reward FROM decisions d "
        "JOIN slots s ON s.event_id = d.event_id LEFT JOIN rewards r ON r.event_id = s.event_id "
        "AND r.position = s.position AND r.kind = 'click' ORDER BY d.seq, s.position"
    ).fetchall()


# ---- export -> import round trip -------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)
_prob = st.floats(min_value=5e-324, max_value=1.0)
_any = st.floats(allow_nan=False, allow_infinity=False)
_reward = st.floats(min_value=-1e12, max_value=1e12)


@st.composite
def logs(draw):
    """A log of random decisions exercising every stored field, returned with its reward window."""
    window = draw(st.none() | st.floats(min_value=0, max_value=10))
    log = DecisionLog(reward_window_s=window)
    catalog = draw(st.lists(_text, min_size=1, max_size=6, unique=True))
    index = draw(st.lists(st.integers(0, 10**6), min_size=len(catalog), max_size=len(catalog), unique=True))
    events = draw(
        st.lists(st.text(min_size=1, max_size=8).filter(lambda s: "\x00" not in s), min_size=1, max_size=4, unique=True)
    )
    width = draw(st.integers(0, 3))
    for event_id in events:
        cands = draw(st.permutations(list(range(len(catalog)))))[: draw(st.integers(1, len(catalog)))]
        k = draw(st.integers(1, min(3, len(cands))))
        shown = cands[:k]
        props = [draw(_prob) for _ in range(k)]
        joint = draw(st.floats(0, 1))
        write(
            log,
            event_id,
            [catalog[i] for i in shown],
            props,
            [draw(_prob) for _ in range(k)],
            candidates=[catalog[i] for i in cands],
            cand_index=[index[i] for i in cands],
            context=[draw(_any) for _ in range(draw(st.integers(0, width)))],
            ts=draw(_any),
            user=draw(_text),
            policy=draw(_text),
            model_version=draw(_text),
            surface=draw(_text),
            params=draw(st.dictionaries(_text, _any, max_size=2)),
            sources=[draw(_text) for _ in range(k)],
            draws=[draw(st.integers(0, 10**9)) for _ in range(k)],
            joint=joint,
            log_joint=draw(st.floats(max_value=0, allow_infinity=False)),
        )
        for position in [None, *range(k)]:
            for kind in draw(st.lists(st.sampled_from(["click", "buy", "a:b,c"]), unique=True, max_size=2)):
                log.record_reward(Reward(event_id, draw(_reward), position=position, kind=kind, ts=draw(_any)))
    return log, window


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs())
def test_csv_round_trip_is_bit_exact(tmp_path_factory, drawn):
    """Every stored number, string and late flag comes back: export -> import into an empty log
    with the same reward window gives identical tables (floats compared by their bits)."""
    src, window = drawn
    path = tmp_path_factory.mktemp("rt") / "log.csv"
    export_csv(src, path, candidates=True)
    dst = DecisionLog(reward_window_s=window)
    got = import_csv(path, dst)
    assert got.decisions == src.count("decisions") and got.slots == src.count("slots")
    assert got.rewards == src.count("rewards")
    assert tables(dst) == tables(src)


def test_export_columns_and_missing_rewards(make_log, tmp_path):
    log = make_log(reward_window_s=10.0)
    write(
        log,
        "e1",
        ["a", "b"],
        [0.5, 0.25],
        [0.5, 0.3],
        candidates=["a", "b", "c"],
        cand_index=[7, 8, 9],
        context=[0.1, -2.0],
        ts=100.0,
    )
    assert log.record_reward(Reward("e1", 1.0, position=1, ts=105.0)) == "recorded"
    assert log.record_reward(Reward("e1", 3.0, position=0, kind="buy", ts=200.0)) == "late"
    assert log.record_reward(Reward("e1", 2.0, kind="buy", ts=101.0)) == "recorded"
    result = export_csv(log, tmp_path / "x.csv")
    rows = list(csv.DictReader(open(tmp_path / "x.csv", newline="")))
    assert result.rows == 2 and result.decisions == 1
    assert list(rows[0]) == [
        "event_id",
        "seq",
        "ts",
        "user_id",
        "surface",
        "policy",
        "model_version",
        "policy_params",
        "position",
        "item_id",
        "item_index",
        "propensity",
        "marginal",
        "marginal_draws",
        "source",
        "n_candidates",
        "joint_propensity",
        "log_joint_propensity",
        "arm",
        "served",
        "context_0",
        "context_1",
        "reward:buy",
        "reward_ts:buy",
        "reward_late:buy",
        "decision_reward:buy",
        "decision_reward_ts:buy",
        "reward:click",
        "reward_ts:click",
        "reward_late:click",
        "decision_reward:click",
        "decision_reward_ts:click",
    ]
    first, second = rows
    assert (first["item_id"], first["item_index"], first["propensity"], first["marginal"]) == ("a", "7", "0.5", "0.5")
    assert second["n_candidates"] == "3" and second["propensity"] == "0.25" and second["marginal"] == "0.3"
    # a reward that was never recorded is an empty cell, not a 0
    assert first["reward:click"] == "" and second["reward:click"] == "1.0" and second["reward_late:click"] == "0"
    assert first["reward:buy"] == "3.0" and first["reward_late:buy"] == "1" and second["reward:buy"] == ""
    assert first["decision_reward:buy"] == second["decision_reward:buy"] == "2.0"


def test_parquet_export_matches_the_log_and_carries_the_schema_version(log, tmp_path):
    p = 1 / 3 + 1e-15
    write(
        log,
        "e1",
        ["a", "b"],
        [p, 0.25],
        [p, 1e-300],
        candidates=["a", "b", "c"],
        cand_index=[0, 1, 2],
        context=[np.pi, -0.0],
        ts=1.5,
    )
    write(log, "e2", ["c"], [1.0], [1.0], candidates=["c", "a"], cand_index=[2, 0], context=[2.0], ts=2.5)
    log.record_reward(Reward("e1", 1.0, position=1, ts=3.0))
    result = export_parquet(log, tmp_path / "x.parquet", candidates=True)
    table = pq.read_table(tmp_path / "x.parquet")
    assert result.rows == table.num_rows == 3
    meta = table.schema.metadata
    assert meta[b"banditrec.schema_version"] == str(SCHEMA_VERSION).encode()
    assert json.loads(meta[b"banditrec.kinds"]) == ["click"]
    cols = table.to_pydict()
    assert cols["event_id"] == ["e1", "e1", "e2"] and cols["position"] == [0, 1, 0]
    assert cols["propensity"] == [p, 0.25, 1.0] and cols["marginal"] == [p, 1e-300, 1.0]
    assert cols["context_0"] == [np.pi, np.pi, 2.0]
    assert [math.copysign(1, v) for v in cols["context_1"][:2]] == [-1, -1] and cols["context_1"][2] is None
    assert cols["reward:click"] == [None, 1.0, None] and cols["reward_late:click"] == [None, False, None]
    assert json.loads(cols["candidate_index"][2]) == [2, 0] and cols["n_candidates"] == [3, 3, 2]
    assert str(table.schema.field("seq").type) == "int64" and str(table.schema.field("ts").type) == "double"


def test_parquet_without_pyarrow_names_the_extra(make_log, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'banditrec\[parquet\]'"):
        export_parquet(make_log(), tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_unknown_formats_are_validation_errors(make_log, tmp_path):
    with pytest.raises(ValidationError, match="unknown export format 'xml'"):
        export_log(make_log(), tmp_path / "x", "xml")
    (tmp_path / "a.csv").write_text("position,item_id,propensity\n0,a,0.5\n")
    with pytest.raises(ValidationError, match="unknown import format 'json'"):
        import_file(tmp_path / "a.csv", make_log(), "json")


# ---- Vowpal Wabbit -----------------------------------------------------------------------------


def test_vw_text_export_is_parsed_and_learned_by_vw(tmp_path):
    """VW reads every exported example with the label on the shown item, cost = -reward and
    probability = the slot's marginal; after learning, its pmf favours the item that always pays."""
    log, cands = uniform_log()
    result = export_vw(log, tmp_path / "x.vw")
    examples = vw_examples((tmp_path / "x.vw").read_text())
    expected = logged_rows(log)
    assert result.rows == len(examples) == len(expected) == 800
    fresh = ["shared |User c0:0.3 c1:-0.2 c2:1.0"] + [f"|Action id={c}" for c in cands]
    with Workspace("--cb_explore_adf --quiet --random_seed 3") as vw:
        before = vw.predict(fresh)
        for lines, (_event_id, _position, item, marginal, reward) in zip(examples, expected):
            assert lines[0].startswith("shared |User ") and len(lines) == 1 + len(cands)
            parsed = vw.parse(lines)
            assert len(parsed) == 1 + len(cands)  # the shared line did not become an action
            labels = [ex.get_label().costs for ex in parsed[1:]]
            chosen = cands.index(item)
            assert [len(c) for c in labels] == [int(j == chosen) for j in range(len(cands))]
            label = labels[chosen][0]
            assert label.probability == np.float32(marginal) > 0  # the marginal, not 1/(5-k)
            assert label.cost == -reward
            vw.learn(parsed)
            vw.finish_example(parsed)
        after = vw.predict(fresh)
    assert len(after) == len(cands)
    assert int(np.argmax(after)) == cands.index("i2") and after[2] > before[2]


def test_dsjson_export_is_parsed_and_learned_by_vw(tmp_path):
    log, cands = uniform_log(good="i4")
    result = export_dsjson(log, tmp_path / "x.json")
    lines = (tmp_path / "x.json").read_text().splitlines()
    expected = logged_rows(log)
    assert result.rows == len(lines) == len(expected)
    fresh = json.dumps(
        {
            "a": [1, 2, 3, 4, 5],
            "c": {"User": {"c0": 0.3, "c1": -0.2, "c2": 1.0}, "_multi": [{"Action": {"id": c}} for c in cands]},
        }
    )
    with Workspace("--dsjson --cb_explore_adf --quiet --random_seed 3") as vw:
        before = vw.predict(fresh)
        for line, (event_id, position, item, marginal, reward) in zip(lines, expected):
            obj = json.loads(line)
            chosen = cands.index(item)
            assert obj["_labelIndex"] == chosen and obj["_label_Action"] == chosen + 1 == obj["a"][0]
            assert sorted(obj["a"]) == [1, 2, 3, 4, 5] and obj["p"] == [obj["_label_probability"]] == [marginal]
            assert obj["_label_cost"] == -reward and obj["EventId"] == f"{event_id}/{position}"
            assert obj["Timestamp"].startswith("2023-11-14T") and obj["Version"] == "1"
            parsed = vw.parse(line)
            assert len(parsed) == 1 + len(cands)  # shared example + one per candidate
            labels = [ex.get_label().costs for ex in parsed[1:]]
            assert [len(c) for c in labels] == [int(j == chosen) for j in range(len(cands))]
            assert labels[chosen][0].probability == np.float32(marginal) > 0
            assert labels[chosen][0].cost == -reward
            vw.learn(parsed)
            vw.finish_example(parsed)
        after = vw.predict(fresh)
    assert int(np.argmax(after)) == cands.index("i4") and after[4] > before[4]


def test_no_probability_vw_would_read_as_zero_is_exported(log, tmp_path):
    write(log, "e1", ["a", "b"], [0.5, 0.5], [0.5, 1e-50], candidates=["a", "b"], cand_index=[0, 1])
    log.record_reward(Reward("e1", 1.0, position=1))
    assert np.float32(1e-50) == 0  # what VW would have read
    for fn in (export_vw, export_dsjson):
        with pytest.raises(ValidationError, match=r"event 'e1', position 1: marginal propensity 1e-50"):
            fn(log, tmp_path / "x")
        assert not (tmp_path / "x").exists()  # no half-written file
    result = export_vw(log, tmp_path / "x.vw", min_probability=1e-6)
    assert result.clipped == 1
    with Workspace("--cb_explore_adf --quiet") as vw:
        probs = []
        for lines in vw_examples((tmp_path / "x.vw").read_text()):
            parsed = vw.parse(lines)
            probs += [c.probability for ex in parsed for c in ex.get_label().costs if c.probability >= 0]
            vw.finish_example(parsed)
    # VW's text float parser is not always correctly rounded (it reads 1e-06 a few float32 ulps low)
    assert probs == pytest.approx([0.5, 1e-6], rel=1e-6) and min(probs) > 0
    with pytest.raises(ValidationError, match="min_probability"):
        export_vw(log, tmp_path / "y.vw", min_probability=1e-40)


def test_vw_export_refuses_a_reward_kind_the_log_lacks(tmp_path):
    log, _ = uniform_log(n_decisions=2)
    with pytest.raises(ValidationError, match="no 'purchase' rewards; it has 'click'"):
        export_vw(log, tmp_path / "x.vw", kind="purchase")


@given(st.text(), st.text())
def test_vw_escape_keeps_ids_distinct_and_safe(a, b):
    ea, eb = vw_escape(a), vw_escape(b)
    assert not any(c in ea for c in " \t\n\r|:")
    assert (ea == eb) == (a == b)


def test_awkward_item_ids_stay_distinct_actions_in_vw(log, tmp_path):
    cands = ["a b", "a_b", "x|y", "k:v", "50%"]
    write(log, "e1", ["a_b", "k:v"], [0.2, 0.25], [0.2, 0.2], candidates=cands, cand_index=list(range(5)))
    export_vw(log, tmp_path / "x.vw")
    export_dsjson(log, tmp_path / "x.json")
    with Workspace("--cb_explore_adf --quiet") as vw, Workspace("--dsjson --cb_explore_adf --quiet") as vd:
        for parsed, w in [(vw.parse(lines), vw) for lines in vw_examples((tmp_path / "x.vw").read_text())] + [
            (vd.parse(line), vd) for line in (tmp_path / "x.json").read_text().splitlines()
        ]:
            assert len(parsed) == 6
            labelled = [j for j, ex in enumerate(parsed[1:]) if ex.get_label().costs]
            assert labelled in ([1], [3])
            w.finish_example(parsed)


# ---- Open Bandit Dataset -----------------------------------------------------------------------

OBD_USERS = [("81ce", "03a5", "7bc9", "2d0f"), ("cef3", "03a5", "c2e4", "2d0f"), ("81ce", "6ff5", "7bc9", "9b2d")]


def obd_csv(rows, n_items=6) -> str:
    """An OBD-layout CSV (with the unnamed leading index column the real files have)."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(
        [
            "",
            "timestamp",
            "item_id",
            "position",
            "click",
            "propensity_score",
            *[f"user_feature_{j}" for j in range(4)],
            *[f"user-item_affinity_{i}" for i in range(n_items)],
        ]
    )
    for i, (ts, item, position, click, pscore, user) in enumerate(rows):
        w.writerow(
            [
                i,
                ts,
                item,
                position,
                click,
                pscore,
                *OBD_USERS[user],
                *[repr(0.5 * user + 0.125 * j) for j in range(n_items)],
            ]
        )
    return out.getvalue()


# impression A: user 0, positions in file order 2, 1, 3; B: user 1; C: user 1 again at the same
# time (a position repeats, so it is a new impression); D: user 2
OBD_ROWS = [
    ("2019-11-24 00:00:01.000000+00:00", 4, 2, 0, 0.16666666666666666, 0),
    ("2019-11-24 00:00:01.000000+00:00", 1, 1, 1, 0.16666666666666666, 0),
    ("2019-11-24 00:00:01.000000+00:00", 0, 3, 0, 0.16666666666666666, 0),
    ("2019-11-24 00:00:02.500000+00:00", 5, 1, 0, 0.2, 1),
    ("2019-11-24 00:00:02.500000+00:00", 3, 2, 1, 0.0123, 1),
    ("2019-11-24 00:00:02.500000+00:00", 2, 3, 1, 0.5, 1),
    ("2019-11-24 00:00:02.500000+00:00", 0, 1, 0, 0.25, 1),
    ("2019-11-24 00:00:02.500000+00:00", 1, 2, 0, 0.75, 1),
    ("2019-11-24 00:00:02.500000+00:00", 2, 3, 0, 1.0, 1),
    ("2019-11-24 00:00:09+00:00", 3, 1, 1, 0.3, 2),
    ("2019-11-24 00:00:09+00:00", 5, 2, 0, 0.3, 2),
    ("2019-11-24 00:00:09+00:00", 0, 3, 0, 0.3, 2),
]


def test_obd_csv_imports_to_the_expected_logged_bandit(log, tmp_path):
    path = tmp_path / "all.csv"
    path.write_text(obd_csv(OBD_ROWS))
    result = import_obd(path, log, slots=None)
    assert (result.decisions, result.slots, result.rewards, result.n_items) == (4, 12, 12, 6)
    assert (result.first_line, result.last_line) == (2, 13)
    got = log.decisions()
    assert got.event_id == ["all:2", "all:5", "all:8", "all:11"]
    data = got.logged_bandit(n_actions=6, n_slots=3)
    # rows come back in (decision, slot) order: impression A sorted by position
    np.testing.assert_array_equal(data.decision, np.repeat([0, 1, 2, 3], 3))
    np.testing.assert_array_equal(data.slot, [0, 1, 2] * 4)
    np.testing.assert_array_equal(data.action, [1, 4, 0, 5, 3, 2, 0, 1, 2, 3, 5, 0])
    np.testing.assert_array_equal(data.reward, [1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0])
    assert data.pscore.tolist() == [0.16666666666666666] * 3 + [0.2, 0.0123, 0.5, 0.25, 0.75, 1.0] + [0.3] * 3
    # conditional = the OBD propensity too; candidates = every item
    props = log.db.execute("SELECT propensity FROM slots ORDER BY rowid").fetchall()
    assert sorted(p for (p,) in props) == sorted(data.pscore.tolist())
    assert all((c == np.arange(6)).all() for c in got.candidates)
    # one-hot user features in sorted category order, then the affinities
    names = result.context_names
    assert names[:6] == (
        "user_feature_0=81ce",
        "user_feature_0=cef3",
        "user_feature_1=03a5",
        "user_feature_1=6ff5",
        "user_feature_2=7bc9",
        "user_feature_2=c2e4",
    )
    assert names[6:8] == ("user_feature_3=2d0f", "user_feature_3=9b2d")
    assert names[8:] == tuple(f"user-item_affinity_{i}" for i in range(6))
    np.testing.assert_array_equal(got.context[0], [1, 0, 1, 0, 1, 0, 1, 0, *(0.125 * np.arange(6))])
    np.testing.assert_array_equal(got.context[3], [1, 0, 0, 1, 1, 0, 0, 1, *(1.0 + 0.125 * np.arange(6))])
    ts = log.db.execute("SELECT ts, policy, policy_params FROM decisions ORDER BY seq").fetchall()
    assert [t for t, _, _ in ts] == [1574553601.0, 1574553602.5, 1574553602.5, 1574553609.0]
    assert ts[0][1] == "obd" and json.loads(ts[0][2])["context_encoding"] == result.encoding_id


def test_obd_grouping_can_be_overridden(log, tmp_path):
    """Grouping by the timestamp alone merges nothing here (the repeated position still splits),
    and n_items widens the catalog beyond the largest id seen."""
    path = tmp_path / "all.csv"
    path.write_text(obd_csv(OBD_ROWS))
    result = import_obd(path, log, group_by=["timestamp"], n_items=80, slots=None)
    assert result.decisions == 4 and result.n_items == 80
    assert len(log.decisions().candidates[0]) == 80


def test_obd_rows_are_rounds_of_a_three_slot_carousel_as_obp_reads_them(log, make_log, tmp_path):
    """The published sample's rows are single rounds (one observed position each, not grouped
    by impression): each becomes a decision of 3 slots logged at its position only. Re-scoring
    asks a policy for the whole carousel, and a uniform policy's marginal of each logged
    (item, position) is 1/n_items, the logged propensity of a uniformly random logger."""
    from banditrec.offline import target_pscore
    from banditrec.policies import make

    rows = [
        (f"2019-11-24 00:00:{k:02d}.5+00:00", (7 * k) % 6, 1 + k % 3, int(k % 4 == 0), 1 / 6, k % 3) for k in range(9)
    ]
    (tmp_path / "all.csv").write_text(obd_csv(rows))
    result = import_obd(tmp_path / "all.csv", log)
    assert (result.decisions, result.slots, result.rewards) == (9, 9, 9)
    got = log.decisions()
    np.testing.assert_array_equal(got.row_slot, [k % 3 for k in range(9)])
    np.testing.assert_array_equal(got.n_slots, [3] * 9)
    np.testing.assert_array_equal(got.row_action, [(7 * k) % 6 for k in range(9)])
    np.testing.assert_array_equal(got.row_reward, [float(k % 4 == 0) for k in range(9)])
    uniform = make("uniform")
    pi = target_pscore(uniform, got, np.eye(6))
    np.testing.assert_allclose(pi, 1 / 6, rtol=1e-12)
    with pytest.raises(ImportFailedError, match="position 4 is beyond the carousel's 3 slots"):
        bad = [rows[0][:2] + (4,) + rows[0][3:]]
        (tmp_path / "bad.csv").write_text(obd_csv(bad))
        import_obd(tmp_path / "bad.csv", make_log())


def test_obd_rows_that_cannot_form_a_decision_are_rejected_with_their_line(log, tmp_path):
    rows = list(OBD_ROWS)
    rows[5] = rows[5][:2] + (4,) + rows[5][3:]  # impression B has positions 1, 2, 4
    path = tmp_path / "all.csv"
    path.write_text(obd_csv(rows))
    with pytest.raises(ImportFailedError) as err:
        import_obd(path, log, batch_rows=3, slots=None)
    assert err.value.line == 7 and err.value.column == "position"
    assert "line 7, column 'position'" in str(err.value) and "positions [1, 2, 4]" in str(err.value)
    # impression A was a batch of its own: it is in the log, and the error says so
    assert err.value.result.decisions == log.count("decisions") == 1
    assert "start_line=5" in str(err.value)


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("propensity_score", "1.5", "must be in (0, 1], got '1.5'"),
        ("propensity_score", "0", "must be in (0, 1], got '0'"),
        ("propensity_score", "", "expected a number, got ''"),
        ("click", "yes", "expected a number, got 'yes'"),
        ("click", "nan", "must be a finite number"),
        ("position", "x", "expected an integer, got 'x'"),
        ("position", "0", "must be >= 1, got 0"),
        ("timestamp", "yesterday", "expected Unix seconds or an ISO 8601 time"),
        ("user-item_affinity_2", "1e999", "must be a finite number"),
    ],
)
def test_bad_cells_name_their_line_and_column(make_log, tmp_path, column, value, message):
    text = obd_csv(OBD_ROWS)
    rows = list(csv.reader(io.StringIO(text)))
    j = rows[0].index(column)
    # every row of impression C (lines 8-10) gets the bad value, so the grouping stays intact
    for line in (8, 9, 10):
        rows[line - 1][j] = value
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    (tmp_path / "all.csv").write_text(out.getvalue())
    with pytest.raises(ImportFailedError) as err:
        import_obd(tmp_path / "all.csv", make_log(), slots=None)
    assert err.value.column == column and err.value.line == 8
    assert f"line 8, column {column!r}: " in str(err.value) and message in str(err.value)
    assert isinstance(err.value, ValidationError)


def test_missing_columns_and_bad_mappings_are_reported_before_anything_is_written(log, make_log, tmp_path):
    text = obd_csv(OBD_ROWS).replace("propensity_score", "pscore", 1)
    (tmp_path / "a.csv").write_text(text)
    with pytest.raises(
        ImportFailedError,
        match=r"line 1, column 'propensity_score': column 'propensity_score' "
        r"\(for marginal\) is not in the header",
    ):
        import_obd(tmp_path / "a.csv", log)
    assert import_obd(tmp_path / "a.csv", log, mapping={"marginal": "pscore"}, slots=None).decisions == 4
    with pytest.raises(ValidationError, match="unknown mapping field 'prob'"):
        import_csv(tmp_path / "a.csv", make_log(), {"prob": "pscore"})
    with pytest.raises(ImportFailedError, match=r"line 1, column 'item_id': missing column 'item_id'"):
        (tmp_path / "b.csv").write_text("position,item,propensity\n0,a,0.5\n")
        import_csv(tmp_path / "b.csv", make_log())
    with pytest.raises(ImportFailedError, match="expected 3 fields as in the header, found 2"):
        (tmp_path / "c.csv").write_text("position,item_id,propensity\n0,a,0.5\n1,b\n")
        import_csv(tmp_path / "c.csv", make_log())
    with pytest.raises(ImportFailedError, match="the file is empty"):
        (tmp_path / "d.csv").write_text("")
        import_csv(tmp_path / "d.csv", make_log())


def test_a_failed_import_keeps_what_it_wrote_and_resumes(log, make_log, tmp_path):
    """Batches before the bad line are in the log, complete; after the fix, start_line picks up
    exactly where the import stopped and the result equals importing the fixed file at once."""
    rows = list(OBD_ROWS)
    rows[10] = rows[10][:4] + ("2.0",) + rows[10][5:]  # propensity 2.0 on line 12 (impression D)
    (tmp_path / "all.csv").write_text(obd_csv(rows))
    seen = []
    with pytest.raises(ImportFailedError) as err:
        import_obd(tmp_path / "all.csv", log, batch_rows=4, on_batch=seen.append, slots=None)
    assert err.value.line == 12 and err.value.column == "propensity_score"
    # a batch closes at the first decision boundary after 4 rows: impressions A and B (lines 2-7)
    # were written; C and D (lines 8-13) were one batch, refused whole
    assert err.value.result.decisions == log.count("decisions") == 2 == seen[-1].decisions
    assert err.value.result.last_line == 7 and log.count("rewards") == 6
    assert "start_line=8" in str(err.value)
    (tmp_path / "all.csv").write_text(obd_csv(OBD_ROWS))
    resumed = import_obd(tmp_path / "all.csv", log, start_line=err.value.result.last_line + 1, slots=None)
    assert resumed.decisions == 2 and resumed.first_line == 8
    whole = make_log()
    import_obd(tmp_path / "all.csv", whole, slots=None)
    assert tables(log) == tables(whole)
    with pytest.raises(ImportFailedError, match="event id 'all:2' is already in the log"):
        import_obd(tmp_path / "all.csv", log, slots=None)


# ---- generic CSV with a mapping -----------------------------------------------------------------


def test_mapped_csv_with_event_ids_categories_and_string_items(log, tmp_path):
    (tmp_path / "m.csv").write_text(
        "session,slot,product,p,clicked,bought,when,country,age\n"
        "s1,1,shoe,0.5,1,,1700000000,fr,31\n"
        "s1,2,hat,0.25,0,9.5,1700000000,fr,31\n"
        "s2,1,hat,1.0,0,,1700000001,de,40\n"
    )
    result = import_csv(
        tmp_path / "m.csv",
        log,
        {
            "event": "session",
            "position": "slot",
            "item": "product",
            "marginal": "p",
            "reward": "clicked",
            "reward:purchase": "bought",
            "ts": "when",
            "categorical": "country",
            "context": "age",
        },
        position_base=1,
    )
    assert (result.decisions, result.rewards, result.n_items) == (2, 4, 2)
    assert result.context_names == ("country=de", "country=fr", "age")
    got = log.decisions()
    assert got.event_id == ["s1", "s2"]
    np.testing.assert_array_equal(got.context, [[0, 1, 31], [1, 0, 40]])
    np.testing.assert_array_equal(got.row_action, [1, 0, 0])  # hat=0, shoe=1 (sorted ids)
    np.testing.assert_array_equal(got.row_reward, [1, 0, 0])
    assert log.decisions(kind="purchase").row_reward.tolist() == [0.0, 9.5, 0.0]
    assert log.count("rewards") == 4  # the empty `bought` cells recorded nothing


def test_event_rows_must_be_consecutive_and_positions_unique(make_log, tmp_path):
    (tmp_path / "a.csv").write_text("event_id,position,item_id,propensity\ne1,0,a,0.5\ne2,0,b,0.5\ne1,1,c,0.5\n")
    with pytest.raises(ImportFailedError, match="line 4, column 'event_id': event 'e1' reappears"):
        import_csv(tmp_path / "a.csv", make_log())
    (tmp_path / "b.csv").write_text("event_id,position,item_id,propensity\ne1,0,a,0.5\ne1,0,b,0.5\n")
    with pytest.raises(ImportFailedError, match="line 3, column 'position': event 'e1' has position 0 twice"):
        import_csv(tmp_path / "b.csv", make_log())
    (tmp_path / "c.csv").write_text("event_id,position,item_id,propensity,ts\ne1,0,a,0.5,1\ne1,1,b,0.5,2\n")
    with pytest.raises(ImportFailedError, match=r"line 3, column 'ts': '2' differs from '1' on line 2"):
        import_csv(tmp_path / "c.csv", make_log())


# ---- the command line ---------------------------------------------------------------------------


def test_cli_export_and_import_round_trip(make_log, tmp_path):
    log = make_log(tmp_path / "src.db")
    write(
        log,
        "e1",
        ["a", "b"],
        [0.5, 0.25],
        [0.5, 0.3],
        candidates=["a", "b", "c"],
        cand_index=[0, 1, 2],
        context=[0.1, 1 / 3],
    )
    log.record_reward(Reward("e1", 1.0, position=0))
    runner = CliRunner()
    for fmt in ("csv", "parquet", "vw", "dsjson"):
        res = runner.invoke(
            main,
            [
                "export",
                "--db",
                str(tmp_path / "src.db"),
                "--format",
                fmt,
                "--out",
                str(tmp_path / f"out.{fmt}"),
                "--candidates",
            ],
        )
        assert res.exit_code == 0, res.output
        assert f"exported 2 logged slots of 1 decisions to {tmp_path / f'out.{fmt}'} ({fmt})" in res.output
    res = runner.invoke(
        main, ["import", str(tmp_path / "out.csv"), "--format", "csv", "--db", str(tmp_path / "dst.db")]
    )
    assert res.exit_code == 0, res.output
    assert "imported 1 decisions (2 slots, 1 rewards) from lines 2-3" in res.output
    assert tables(make_log(tmp_path / "dst.db")) == tables(log)


def test_cli_imports_obd_and_writes_the_encoding(tmp_path):
    (tmp_path / "all.csv").write_text(obd_csv(OBD_ROWS))
    res = CliRunner().invoke(
        main,
        ["import", str(tmp_path / "all.csv"), "--format", "obd", "--db", str(tmp_path / "log.db"), "--n-items", "80"],
    )
    assert res.exit_code == 0, res.output
    encoding = next(tmp_path.glob("log.db.context-*.json"))
    assert str(encoding) in res.output and "14 context columns, 80 items" in res.output
    assert json.loads(encoding.read_text())["context_names"][0] == "user_feature_0=81ce"


@pytest.mark.parametrize(
    "args, message",
    [
        (["import", "{bad}", "--format", "obd", "--db", "{db}"], "line 8, column 'propensity_score'"),
        (["import", "{bad}", "--format", "csv", "--db", "{db}", "--map", "nonsense"], "--map takes field=column"),
        (["import", "{bad}", "--format", "csv", "--db", "{db}", "--map", "colour=x"], "unknown mapping field 'colour'"),
        (["import", "{bad}", "--format", "xml", "--db", "{db}"], "Invalid value for '--format'"),
        (["import", "{bad}", "--format", "obd", "--db", "{db}", "--position-base", "1"], "OBD positions"),
        (["export", "--db", "{notdb}", "--format", "csv", "--out", "{out}"], "is not a decision log"),
        (["export", "--db", "{db}", "--format", "vw", "--out", "{out}", "--kind", "buy"], "no 'buy' rewards"),
        (["export", "--db", "{db}", "--format", "tsv", "--out", "{out}"], "Invalid value for '--format'"),
    ],
)
def test_cli_bad_input_is_a_usage_error_not_a_traceback(make_log, tmp_path, args, message):
    rows = list(OBD_ROWS)
    rows[6] = rows[6][:4] + ("-1",) + rows[6][5:]
    (tmp_path / "bad.csv").write_text(obd_csv(rows))
    (tmp_path / "notdb").write_text("hello, I am not SQLite" * 100)
    log = make_log(tmp_path / "log.db")
    write(log, "e1", ["a"], [0.5], [0.5], candidates=["a", "b"], cand_index=[0, 1])
    log.record_reward(Reward("e1", 1.0, position=0))
    fill = {
        "{bad}": str(tmp_path / "bad.csv"),
        "{db}": str(tmp_path / "log.db"),
        "{notdb}": str(tmp_path / "notdb"),
        "{out}": str(tmp_path / "out"),
    }
    res = CliRunner().invoke(main, [fill.get(a, a) for a in args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert isinstance(res.exception, SystemExit)


def test_file_log_export_reads_one_snapshot_through_its_own_connection(make_log, tmp_path, monkeypatch):
    """A file log is exported through a separate read transaction: the log stays writable
    while the export runs, and the export sees the decisions as of its start."""
    log = make_log(tmp_path / "log.db")
    for e in range(5):
        write(log, f"e{e}", ["a"], [0.5], [0.5], candidates=["a", "b"], cand_index=[0, 1])
    lines = []
    real = store_export.read_batches

    def interleaved(conn, layout, batch):
        for i, b in enumerate(real(conn, layout, batch)):
            if i == 0:  # a writer commits between two batches of the export
                write(log, "late-comer", ["b"], [0.5], [0.5], candidates=["a", "b"], cand_index=[0, 1])
            lines.append(len(b.rows))
            yield b

    monkeypatch.setattr(store_export, "read_batches", interleaved)
    result = export_csv(log, tmp_path / "x.csv", batch_decisions=2)
    assert lines == [2, 2, 1] and result.rows == 5
    assert log.count("decisions") == 6
    assert sqlite3.connect(tmp_path / "log.db").execute("SELECT count(*) FROM decisions").fetchone()[0] == 6


def test_a_batch_the_log_refuses_is_left_out_whole_and_named_by_its_line(make_log, tmp_path):
    """Impression B's event id is already in the log: with A, B and C in one batch, none of them
    is written (one transaction); with one decision per batch, A is."""
    (tmp_path / "all.csv").write_text(obd_csv(OBD_ROWS))
    for batch_rows, kept in ((100, 0), (1, 1)):
        log = make_log()
        write(log, "all:5", ["a"], [0.5], [0.5], candidates=["a"], cand_index=[0])
        with pytest.raises(ImportFailedError) as err:
            import_obd(tmp_path / "all.csv", log, batch_rows=batch_rows, slots=None)
        assert err.value.line == 5 and err.value.column is None
        assert "line 5: event id 'all:5' is already in the log" in str(err.value)
        assert err.value.result.decisions == kept == log.count("decisions") - 1
        assert log.count("slots") == 1 + 3 * kept and log.count("rewards") == 3 * kept


def test_a_refused_reward_is_reported_at_its_decisions_line(log, tmp_path):
    """The log's batch error says which reward (rewards[i]); the import names the line of the
    decision it belongs to."""
    (tmp_path / "all.csv").write_text(obd_csv(OBD_ROWS))
    real = log.write_decisions

    def refuse_reward_4(items, *, rewards=()):
        rewards = list(rewards)
        rewards[4] = Reward(rewards[4].event_id, float("nan"), rewards[4].position, rewards[4].kind)
        return real(items, rewards=rewards)

    log.write_decisions = refuse_reward_4
    with pytest.raises(ImportFailedError) as err:
        import_obd(tmp_path / "all.csv", log, slots=None)
    # rewards 0-2 are impression A's (lines 2-4), 3-5 impression B's (lines 5-7)
    assert err.value.line == 5 and err.value.column == "reward"
    assert "line 5, column 'reward': the log refused a click reward: reward must be a finite number" in str(err.value)
    assert log.count("decisions") == log.count("rewards") == 0
