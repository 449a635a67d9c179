"""The typed product graph on a hand-built history: each edge type's rule, checked against
named pairs and against a brute-force count over the same events; agreement with the
candidate generator; the edge table's round trip and refusals."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.candidates import CandidateGenerator, Interactions
from banditrec.candidates.graph import DIRECTED, EDGES, GraphParams, ProductGraph, fit_graph
from banditrec.errors import ValidationError

DAY = 86_400.0
H = 3_600.0
WINDOW = 7 * DAY
#            name       type      brand   price
ITEMS = [
    ("case", "case", "acme", 40.0),
    ("cover", "cover", "acme", 10.0),
    ("phone_a", "phone", "acme", 300.0),
    ("phone_b", "phone", "zeta", 320.0),
    ("phone_c", "phone", "zeta", 280.0),
    ("phone_d", "phone", "", np.nan),
    ("charger", "charger", "zeta", 25.0),
    ("cable", "cable", "", 8.0),
    ("strap", "strap", "acme", 100.0),
]
NAMES = [i[0] for i in ITEMS]
IX = {name: k for k, name in enumerate(NAMES)}
TYPE_LABELS = sorted({i[1] for i in ITEMS})
TYPES = np.array([TYPE_LABELS.index(i[1]) for i in ITEMS])
BRAND = np.array([i[2] for i in ITEMS], dtype=object)
PRICE = np.array([i[3] for i in ITEMS])


def history() -> list[tuple[int, str, str, float]]:
    """(user, item, kind, ts) rows."""
    rows = []
    for u in range(5):  # case, then cover an hour later; never the reverse
        rows += [(u, "case", "purchase", 0.0), (u, "cover", "purchase", H)]
    for u, (first, second) in zip((5, 6, 7), [("phone_a", "phone_b")] * 2 + [("phone_b", "phone_a")]):
        rows += [(u, first, "view", 0.0), (u, second, "view", 60.0)]  # compared, never bought
    for u in (8, 9):  # phone_a, then a case 20 days later: beyond the window, within the horizon
        rows += [(u, "phone_a", "purchase", 0.0), (u, "case", "purchase", 20 * DAY)]
    for u in (10, 11):  # phone_a, then a cover 100 days later: beyond the horizon
        rows += [(u, "phone_a", "purchase", 0.0), (u, "cover", "purchase", 100 * DAY)]
    for u in (12, 13):  # phone_a, then a charger within the window: a co-purchase
        rows += [(u, "phone_a", "purchase", 0.0), (u, "charger", "purchase", 3 * DAY)]
    for u in (14, 15, 16):  # charger and cable, in both orders as often
        rows += [(u, "charger", "purchase", 0.0), (u, "cable", "purchase", H)]
    for u in (17, 18, 19):
        rows += [(u, "cable", "purchase", 0.0), (u, "charger", "purchase", H)]
    for u in (20, 21, 22, 23):  # case then strap, never the reverse, but the strap costs more
        rows += [(u, "case", "purchase", 0.0), (u, "strap", "purchase", H)]
    rows += [(24, "phone_c", "purchase", 0.0)]
    return rows


def events_of(rows) -> Interactions:
    u, i, k, t = zip(*rows)
    return Interactions.from_arrays(u, [IX[x] for x in i], t, k, n_items=len(NAMES))


@pytest.fixture(scope="module")
def fitted():
    ev = events_of(history())
    gen = CandidateGenerator(window_s=WINDOW).fit(ev, TYPES)
    graph = fit_graph(ev, TYPES, gen, brand=BRAND, price=PRICE, params=GraphParams(group_cap=2))
    return ev, gen, graph


def edges(graph: ProductGraph, edge: str) -> dict[tuple[str, str], float]:
    W = graph.edge_matrix(edge).tocoo()
    return {(NAMES[a], NAMES[b]): w for a, b, w in zip(W.row.tolist(), W.col.tolist(), W.data.tolist())}


# ---- brute-force references over the raw rows ------------------------------------------------
def purchases_by_user(rows):
    out: dict[int, list[tuple[float, int]]] = {}
    for u, item, kind, ts in rows:
        if kind == "purchase":
            out.setdefault(u, []).append((ts, IX[item] if isinstance(item, str) else item))
    return {u: sorted(v) for u, v in out.items()}


def ordered_user_counts(rows, lo: float, hi: float) -> dict[tuple[int, int], int]:
    """Users who bought a and then b with lo < gap <= hi (a != b)."""
    users: dict[tuple[int, int], set] = {}
    for u, bought in purchases_by_user(rows).items():
        for (t1, a), (t2, b) in itertools.combinations(bought, 2):
            if a != b and lo < t2 - t1 <= hi:
                users.setdefault((a, b), set()).add(u)
    return {k: len(v) for k, v in users.items()}


def buyers(rows) -> np.ndarray:
    n = np.zeros(len(NAMES), int)
    for bought in purchases_by_user(rows).values():
        for k in {i for _, i in bought}:
            n[k] += 1
    return n


# ---- the edge types --------------------------------------------------------------------------
def test_accessory_of_points_from_the_accessory_to_the_item_it_follows(fitted):
    _, _, graph = fitted
    acc = edges(graph, "accessory_of")
    assert ("cover", "case") in acc and ("case", "cover") not in acc
    assert acc[("cover", "case")] == pytest.approx(5 / 11)  # 5 of the case's 11 buyers added a cover
    S = graph.support_matrix("accessory_of")
    assert S[IX["cover"], IX["case"]] == 5
    # bought in both orders as often: no accessory either way; a pricier add-on: none
    assert not {("cable", "charger"), ("charger", "cable"), ("strap", "case")} & set(acc)


def test_accessory_of_equals_its_rule_counted_by_brute_force(fitted):
    rows = history()
    _, _, graph = fitted
    C = ordered_user_counts(rows, -1.0, WINDOW)  # a purchase at the same second counts, in file order
    n_buy = buyers(rows)
    p = GraphParams()
    want = {}
    for (a, x), c in C.items():
        back = C.get((x, a), 0)
        if c >= p.accessory_min_support and (c + 1) / (back + 1) >= p.accessory_ratio and TYPES[a] != TYPES[x]:
            if not (np.isfinite(PRICE[a]) and np.isfinite(PRICE[x])) or PRICE[x] < PRICE[a]:
                want[(NAMES[x], NAMES[a])] = c / n_buy[a]
    assert want == pytest.approx(edges(graph, "accessory_of"))
    assert want  # the rule found something to compare


def test_co_view_alone_never_makes_a_complement(fitted):
    _, _, graph = fitted
    comp = edges(graph, "complement")
    assert not {("phone_a", "phone_b"), ("phone_b", "phone_a")} & set(comp)
    assert ("phone_a", "phone_b") in edges(graph, "substitute")  # the views did make substitutes
    assert ("case", "cover") in comp and ("phone_a", "charger") in comp


def test_complement_edges_are_what_the_generator_serves(fitted):
    _, gen, graph = fitted
    W = graph.edge_matrix("complement")
    S = gen.complement_model.scores
    assert (W != S).nnz == 0 and W.nnz == S.nnz > 0
    for j in range(len(NAMES)):
        ids, w, names = graph.neighbours(j, "complement", N=5)
        served, scores, direct = gen.complement_model.complements([j], 5)
        k = int(direct[0].sum())
        assert ids.tolist() == served[0, :k].tolist() and np.allclose(w, scores[0, :k])
        assert set(names.tolist()) <= {"complement"}


def test_substitute_edges_hold_every_served_substitute_both_ways(fitted):
    ev = fitted[0]
    gen = CandidateGenerator(window_s=WINDOW, n_neighbors=1).fit(ev, TYPES)  # one substitute each: one-way
    graph = fit_graph(ev, TYPES, gen)
    W = graph.edge_matrix("substitute")
    S = gen.substitutes.tocoo()
    assert S.nnz > 0 and (gen.substitutes != gen.substitutes.T).nnz > 0
    for a, b, s in zip(S.row.tolist(), S.col.tolist(), S.data.tolist()):
        assert W[a, b] == W[b, a] == max(s, gen.substitutes[b, a])
    assert W.nnz == (gen.substitutes + gen.substitutes.T).nnz


def test_bought_after_respects_time_order_the_window_and_the_horizon(fitted):
    rows = history()
    _, _, graph = fitted
    after = edges(graph, "bought_after")
    assert after.get(("phone_a", "case")) == pytest.approx(2 / 6)  # 2 of phone_a's 6 buyers
    assert ("case", "phone_a") not in after  # time order
    assert ("phone_a", "cover") not in after  # 100 days: beyond the horizon
    assert ("phone_a", "charger") not in after  # 3 days: within the window (a complement)
    p = GraphParams()
    ref = ordered_user_counts(rows, WINDOW, p.horizon_s)
    n_buy = buyers(rows)
    want = {(NAMES[a], NAMES[b]): c / n_buy[a] for (a, b), c in ref.items() if c >= p.bought_after_min_support}
    assert want == pytest.approx(after)


def test_bought_after_horizon_is_a_parameter(fitted):
    ev, gen, _ = fitted
    wide = fit_graph(ev, TYPES, gen, params=GraphParams(horizon_s=120 * DAY))
    assert ("phone_a", "cover") in edges(wide, "bought_after")


def group_reference(labels, pop, K):
    """Each item joins the K most bought other items of its group (ties by index), both ways."""
    out = set()
    for a in range(len(labels)):
        if labels[a] == "":
            continue
        others = sorted(
            (b for b in range(len(labels)) if b != a and labels[b] == labels[a]), key=lambda b: (-pop[b], b)
        )
        for b in others[:K]:
            out |= {(NAMES[a], NAMES[b]), (NAMES[b], NAMES[a])}
    return out


def test_same_type_and_same_brand_follow_the_metadata_and_the_cap(fitted):
    rows = history()
    _, _, graph = fitted
    pop = buyers(rows)
    same_type = edges(graph, "same_type")
    types = [i[1] for i in ITEMS]
    assert set(same_type) == group_reference(types, pop, 2)
    # four phones, cap 2: phone_b and phone_d (least bought) do not reach each other
    assert ("phone_b", "phone_d") not in same_type and ("phone_a", "phone_d") in same_type
    assert set(edges(graph, "same_brand")) == group_reference(list(BRAND), pop, 2)
    assert not any("phone_d" in pair for pair in edges(graph, "same_brand"))  # no brand, no edge
    wide = edges(fit_graph(*fitted[:1], TYPES, fitted[1], brand=BRAND, params=GraphParams(group_cap=9)), "same_type")
    assert set(wide) == {(NAMES[a], NAMES[b]) for a in range(9) for b in range(9) if a != b and TYPES[a] == TYPES[b]}


def test_inactive_items_are_never_the_served_end():
    ev = events_of(history())
    active = np.ones(len(NAMES), bool)
    active[IX["cover"]] = False
    gen = CandidateGenerator(window_s=WINDOW).fit(ev, TYPES, active=active)
    graph = fit_graph(ev, TYPES, gen, brand=BRAND, price=PRICE)
    for e in EDGES:
        W = graph.edge_matrix(e).tocoo()
        served = W.row if e == "accessory_of" else W.col
        assert active[served].all(), e
        if not DIRECTED[e] or e == "accessory_of":
            assert active[W.row].all() and active[W.col].all(), e


def test_neighbours_and_rows_agree_and_order_by_weight(fitted):
    _, _, graph = fitted
    j = IX["phone_a"]
    ids, w, names = graph.neighbours(j)
    assert len(ids) == len(w) == len(names) > 0
    assert [e for e in EDGES if e in set(names.tolist())] == list(dict.fromkeys(names.tolist()))
    for e in EDGES:
        one, ow, _ = graph.neighbours(j, e, N=3)
        batch, bw = graph.rows(np.arange(len(NAMES)), e, N=3)
        k = len(one)
        assert batch[j, :k].tolist() == one.tolist() and (batch[j, k:] == -1).all() and np.allclose(bw[j, :k], ow)
        assert (np.diff(ow) <= 0).all()
    ins = graph.adjacent(IX["case"], edge="accessory_of", direction="in")
    assert ins.ids.tolist() == [IX["cover"]] and ins.directions.tolist() == ["in"] and ins.support.tolist() == [5]
    assert graph.adjacent(IX["case"], edge="accessory_of", direction="out").ids.size == 0
    for e in EDGES:  # in-edges: the column of the edge matrix, with its weights and supports
        W, S = graph.edge_matrix(e), graph.support_matrix(e)
        for k in range(len(NAMES)):
            nb = graph.adjacent(k, edge=e, direction="in" if DIRECTED[e] else "out", N=50)
            assert sorted(nb.ids.tolist()) == sorted(W[:, k].nonzero()[0].tolist())
            assert np.array_equal(nb.weights, W.toarray()[nb.ids, k]) and np.array_equal(
                nb.support, S.toarray()[nb.ids, k]
            )
    both = graph.adjacent(IX["case"], direction="both", N=50)
    assert set(both.directions.tolist()) == {"in", "out", "undirected"}


# ---- the edge table ----------------------------------------------------------------------------
def test_the_table_round_trips_sorted(fitted):
    _, _, graph = fitted
    t = graph.to_table(NAMES)
    assert t.column_names == ["src_index", "dst_index", "src_id", "dst_id", "edge", "weight", "support", "directed"]
    assert t.schema.field("weight").type == pa.float64() and pa.types.is_dictionary(t.schema.field("edge").type)
    code = [EDGES.index(e) for e in t.column("edge").to_pylist()]
    keys = list(
        zip(
            code,
            t.column("src_index").to_pylist(),
            [-w for w in t.column("weight").to_pylist()],
            t.column("dst_index").to_pylist(),
        )
    )
    assert keys == sorted(keys)
    assert t.column("src_id").to_pylist() == [NAMES[k] for k in t.column("src_index").to_pylist()]
    back = ProductGraph.from_table(t.take(np.random.default_rng(0).permutation(t.num_rows)), len(NAMES), item_ids=NAMES)
    for e in EDGES:
        assert (back.edge_matrix(e) != graph.edge_matrix(e)).nnz == 0
        assert (back.support_matrix(e) != graph.support_matrix(e)).nnz == 0
    assert back.to_table().equals(t)


def test_export_writes_parquet_csv_and_graphml(fitted, tmp_path):
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    _, _, graph = fitted
    t = graph.to_table(NAMES)
    assert pq.read_table(graph.export(tmp_path / "g.parquet", item_ids=NAMES)).equals(t)
    csv = pcsv.read_csv(graph.export(tmp_path / "g.csv", "csv", item_ids=NAMES))
    assert csv.column("edge").to_pylist() == t.column("edge").to_pylist()
    assert csv.column("weight").to_pylist() == t.column("weight").to_pylist()
    text = graph.export(tmp_path / "g.graphml", "graphml", item_ids=NAMES).read_text()
    assert text.count("<edge ") == t.num_rows and '<node id="cover"/>' in text
    with pytest.raises(ValidationError, match="format must be one of"):
        graph.export(tmp_path / "g.x", "dot")


def _spoil(t: pa.Table, column: str, row: int, value) -> pa.Table:
    vals = t.column(column).to_pylist()
    vals[row] = value
    typ = t.schema.field(column).type
    arr = pa.array(vals, pa.string()).dictionary_encode() if pa.types.is_dictionary(typ) else pa.array(vals, typ)
    return t.set_column(t.column_names.index(column), column, arr)


def test_bad_tables_are_refused_naming_column_and_row(fitted):
    _, _, graph = fitted
    t = graph.to_table(NAMES)
    n = len(NAMES)
    d = int(np.flatnonzero(t.column("directed").to_numpy(zero_copy_only=False))[0])  # a directed row
    u = int(np.flatnonzero(~t.column("directed").to_numpy(zero_copy_only=False))[0])  # an undirected row
    cases = [
        (t.drop_columns(["support"]), "no column 'support'"),
        (_spoil(t, "edge", 3, "friend_of"), r"column 'edge' must be one of .* found 'friend_of' at row 3"),
        (_spoil(t, "weight", 4, -1.0), r"'weight' must be finite and > 0, found -1.0 at row 4"),
        (_spoil(t, "weight", 4, float("nan")), r"'weight' must be finite and > 0, found nan at row 4"),
        (_spoil(t, "dst_index", d, int(t.column("src_index")[d].as_py())), rf"self-loop.* at row {d}"),
        (_spoil(t, "src_index", 2, n), rf"'src_index' must be an item index in \[0, {n}\), found {n} at row 2"),
        (_spoil(t, "support", 1, -3), r"'support' must be >= 0, found -3 at row 1"),
        (_spoil(t, "directed", d, False), rf"'directed' must be true for directed edge types only.* at row {d}"),
        (_spoil(t, "src_id", 0, "nope"), r"'src_id' does not match the item index's id, found 'nope' at row 0"),
        (t.filter(pa.array(np.arange(t.num_rows) != u)), "without its reverse row"),
        (pa.concat_tables([t, t.slice(d, 1)]), "repeats an edge"),
        (
            t.set_column(5, "weight", pa.array([str(w) for w in t.column("weight").to_pylist()])),
            "'weight' must be numbers",
        ),
    ]
    for bad, message in cases:
        with pytest.raises(ValidationError, match=message):
            ProductGraph.from_table(bad, n, item_ids=NAMES)
    w = t.column("weight").to_pylist()
    w[u] *= 2  # one side of an undirected edge
    with pytest.raises(ValidationError, match="differs from its undirected reverse row"):
        ProductGraph.from_table(t.set_column(5, "weight", pa.array(w)), n)


def test_bad_inputs_are_refused(fitted):
    ev, gen, graph = fitted
    with pytest.raises(ValidationError, match="unknown edge type 'sibling'"):
        graph.edge_matrix("sibling")
    with pytest.raises(ValidationError, match=r"item must be an index in \[0, 9\)"):
        graph.neighbours(9)
    with pytest.raises(ValidationError, match="direction must be one of"):
        graph.adjacent(0, direction="sideways")
    with pytest.raises(ValidationError, match="group_cap must be a positive integer"):
        GraphParams(group_cap=0)
    with pytest.raises(ValidationError, match="horizon_s must be a finite number > 0"):
        GraphParams(horizon_s=float("inf"))
    with pytest.raises(ValidationError, match="brand must hold 9 labels"):
        fit_graph(ev, TYPES, gen, brand=BRAND[:3])
    with pytest.raises(ValidationError, match="not fitted"):
        fit_graph(ev, TYPES, CandidateGenerator())
    with pytest.raises(ValidationError, match="not fitted"):
        ProductGraph().edge_matrix("complement")


def test_a_loaded_generator_gives_the_same_graph(fitted):
    ev, gen, graph = fitted
    loaded = CandidateGenerator.from_arrays(*gen.to_arrays())  # no pair signals: counted again
    again = fit_graph(ev, TYPES, loaded, brand=BRAND, price=PRICE, params=GraphParams(group_cap=2))
    assert again.to_table(NAMES).equals(graph.to_table(NAMES))


# ---- properties on random histories --------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_items=st.integers(2, 12),
    n_events=st.integers(0, 120),
    cap=st.integers(1, 4),
)
def test_graph_properties_on_random_histories(seed, n_items, n_events, cap):
    """Undirected edges both ways with one weight, weights finite and > 0, no self-loops,
    destinations active, bought_after equal to a brute-force count, and the table round trip."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 6, n_events)
    items = rng.integers(0, n_items, n_events)
    ts = np.sort(rng.uniform(0, 150 * DAY, n_events))
    kinds = rng.choice(["view", "cart", "purchase"], n_events, p=[0.4, 0.1, 0.5])
    ev = Interactions.from_arrays(users, items, ts, kinds, n_users=6, n_items=n_items)
    types = rng.integers(0, 3, n_items)
    active = rng.random(n_items) < 0.8
    gen = CandidateGenerator(window_s=WINDOW).fit(ev, types, active=active)
    brand = rng.choice(["a", "b", ""], n_items).astype(object)
    price = np.where(rng.random(n_items) < 0.7, rng.uniform(1, 100, n_items), np.nan)
    params = GraphParams(group_cap=cap, accessory_min_support=1, bought_after_min_support=1)
    graph = fit_graph(ev, types, gen, brand=brand, price=price, params=params)
    for e in EDGES:
        W = graph.edge_matrix(e)
        assert np.isfinite(W.data).all() and (W.data > 0).all(), e
        assert (W.diagonal() == 0).all(), e
        assert active[W.indices].all(), e
        if not DIRECTED[e]:
            assert (W != W.T).nnz == 0, e
    rows = list(zip(users.tolist(), items.tolist(), kinds.tolist(), ts.tolist()))
    ref = ordered_user_counts(rows, WINDOW, params.horizon_s)
    got = graph.support_matrix("bought_after").tocoo()
    want = {k: c for k, c in ref.items() if active[k[1]]}
    assert dict(zip(zip(got.row.tolist(), got.col.tolist()), got.data.tolist())) == want
    ids = np.array([f"x{k}" for k in range(n_items)], dtype=object)
    back = ProductGraph.from_table(graph.to_table(ids), n_items, item_ids=ids)
    assert back.to_table().equals(graph.to_table(ids))


def test_missing_labels_and_types(fitted):
    """A brand of None or NaN is as unknown as ""; without types there is no same_type edge and
    an accessory may share its item's type."""
    ev, gen, graph = fitted
    for unknown in (None, float("nan")):
        brand = BRAND.copy()
        brand[IX["phone_d"]] = brand[IX["cable"]] = unknown
        again = fit_graph(ev, TYPES, gen, brand=brand, price=PRICE, params=GraphParams(group_cap=2))
        assert edges(again, "same_brand") == edges(graph, "same_brand"), unknown
    untyped = fit_graph(ev, None, gen, price=PRICE)
    assert untyped.edge_matrix("same_type").nnz == 0 and untyped.edge_matrix("same_brand").nnz == 0
    assert edges(untyped, "accessory_of") == edges(graph, "accessory_of")  # none was same-type here
