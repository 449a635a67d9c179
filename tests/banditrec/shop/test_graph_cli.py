"""`banditrec graph`: an item's product-graph neighbours from a shop build's graph.parquet, the
export, and the refusals (unknown item, unknown edge type, a build without a graph)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from banditrec.candidates import Interactions
from banditrec.candidates.graph import GRAPH_FILE, GraphParams, ProductGraph, fit_graph, write_graph
from banditrec.cli import main
from banditrec.shop import Shop, build_shop
from banditrec.shop.directory import BuildFiles, BuildWriter

DAY = 86_400.0
T0 = 1_700_000_000
#         item_id   title                type     brand   price
ITEMS = [
    ("case", "Leather case", "case", "acme", 40),
    ("cover", "Screen cover", "cover", "acme", 10),
    ("phone-a", "Phone A", "phone", "acme", 300),
    ("phone-b", "Phone B", "phone", "zeta", 320),
    ("charger", "Fast charger", "charger", "zeta", 25),
]


def rows() -> list[tuple[str, str, str, float]]:
    out = []
    for u in range(5):  # a case, then a cover; never the reverse
        out += [(f"u{u}", "case", "purchase", T0 + 1000 * u), (f"u{u}", "cover", "purchase", T0 + 1000 * u + 600)]
    for u in (5, 6):  # compared, never bought
        out += [(f"u{u}", "phone-a", "view", T0), (f"u{u}", "phone-b", "view", T0 + 60)]
    for u in (7, 8):  # a phone, then a case three weeks later
        out += [(f"u{u}", "phone-a", "purchase", T0), (f"u{u}", "case", "purchase", T0 + 21 * DAY)]
    out += [("u9", "charger", "purchase", T0)]
    return out


def republish(shop_dir, *, graph=None, drop_graph=False) -> None:
    """Publish the current build's files again as a new build, with ``graph`` (a
    ``(ProductGraph, item_ids)``) written into it or without graph.parquet."""
    files = BuildFiles.open(shop_dir)
    writer = BuildWriter(shop_dir, files.build + "-g")
    for name, digest in files.manifest["files"].items():
        if name == GRAPH_FILE and (graph is not None or drop_graph):
            continue
        (writer.tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files.path(name), writer.tmp / name)
        writer.files[name] = digest
    if graph is not None:
        write_graph(writer, *graph)
    writer.publish({k: v for k, v in files.manifest.items() if k not in ("format", "build", "files")}, keep=5)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A built shop with the graph fitted on its events (as the build does)."""
    tmp = tmp_path_factory.mktemp("graph-shop")
    with open(tmp / "items.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item_id", "title", "type", "brand", "price"])
        w.writerows(ITEMS)
    with open(tmp / "ev.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "event_type", "timestamp"])
        w.writerows(rows())
    out = tmp / "shop"
    build_shop(tmp / "items.csv", tmp / "ev.csv", out=out)
    s = Shop(out)
    ids = list(s.items.ids)
    users = sorted({r[0] for r in rows()})
    u, i, k, t = zip(*rows())
    ev = Interactions.from_arrays(
        [users.index(x) for x in u], [ids.index(x) for x in i], t, k, n_users=len(users), n_items=len(ids)
    )
    graph = fit_graph(
        ev,
        s.types,
        s.generator,
        brand=s.catalog.categorical["brand"],
        price=s.catalog.numeric["price"],
        params=GraphParams(accessory_min_support=3),
    )
    republish(out, graph=(graph, s.catalog.ids))
    return out, graph, ids


def run(*args):
    return CliRunner().invoke(main, ["graph", *map(str, args)])


def test_graph_prints_an_items_neighbours_by_edge_type(shop):
    out, graph, ids = shop
    res = run("case", "--shop", out)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "case  type case  Leather case"
    table = [line.split() for line in lines[2:]]
    found = {(r[0], r[1], r[2]) for r in table}
    assert ("accessory_of", "in", "cover") in found  # cover accessory_of case
    assert ("accessory_of", "out", "cover") not in found
    assert ("complement", "out", "cover") in found
    assert ("bought_after", "in", "phone-a") in found
    row = next(r for r in table if r[:3] == ["accessory_of", "in", "cover"])
    assert float(row[3]) == pytest.approx(5 / 7, abs=1e-4) and row[4] == "5" and row[5:7] == ["type", "cover"]
    # every edge the graph holds for the item is printed, and nothing else
    nb = graph.adjacent(ids.index("case"), direction="both", N=10)
    want = {(e, d, ids[k]) for e, d, k in zip(nb.edges, nb.directions, nb.ids.tolist())}
    assert found == want
    res = run("charger", "--shop", out, "--edge", "accessory_of")
    assert res.exit_code == 0 and res.output.splitlines()[1:] == ["  (no edges of type accessory_of)"]


def test_graph_json_filters_by_edge_and_direction(shop):
    out, graph, ids = shop
    res = run("phone-a", "--shop", out, "--edge", "substitute", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["item_id"] == "phone-a" and data["type"] == "phone"
    subs = data["neighbours"]
    assert [n["item_id"] for n in subs][:1] == ["phone-b"] and {n["edge"] for n in subs} == {"substitute"}
    assert not any(
        n["edge"] == "complement" for n in json.loads(run("phone-a", "--shop", out, "--json").output)["neighbours"]
    )
    W = graph.edge_matrix("substitute")
    assert [n["weight"] for n in subs] == sorted((W[ids.index("phone-a")].data).tolist(), reverse=True)
    res = run("case", "--shop", out, "--edge", "accessory_of", "--direction", "out", "--json")
    assert json.loads(res.output)["neighbours"] == []
    res = run("case", "--shop", out, "--edge", "accessory_of", "--direction", "in", "--json")
    (only,) = json.loads(res.output)["neighbours"]
    assert only["item_id"] == "cover" and only["direction"] == "in" and only["support"] == 5
    assert only["title"] == "Screen cover"


def test_graph_refuses_an_unknown_item_or_edge_in_one_line(shop):
    out, _, _ = shop
    res = run("no-such-item", "--shop", out)
    assert res.exit_code == 2 and "item 'no-such-item' is not in the shop's catalog (5 items" in res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    res = run("case", "--shop", out, "--edge", "cousin_of")
    assert res.exit_code == 2 and "unknown edge type 'cousin_of'" in res.output
    res = run("--shop", out)
    assert res.exit_code == 2 and "exactly one of ITEM_ID and --export" in res.output


def test_graph_exports_the_builds_table(shop, tmp_path):
    out, graph, ids = shop
    stored = BuildFiles.open(out).table(GRAPH_FILE)
    res = run("--shop", out, "--export", tmp_path / "g.parquet")
    assert res.exit_code == 0, res.output
    assert pq.read_table(tmp_path / "g.parquet").equals(stored)
    res = run("--shop", out, "--export", tmp_path / "edges.csv")
    assert res.exit_code == 0 and "(csv)" in res.output
    edges = pcsv.read_csv(tmp_path / "edges.csv")
    assert edges.column("src_id").to_pylist() == stored.column("src_id").to_pylist()
    assert edges.column("edge").to_pylist() == stored.column("edge").to_pylist()
    back = ProductGraph.from_table(stored, len(ids), item_ids=ids)
    assert back.to_table().equals(graph.to_table(ids))


def test_graph_refuses_a_build_without_a_graph(shop, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(shop[0], out)
    republish(out, drop_graph=True)
    res = run("case", "--shop", out)
    assert res.exit_code == 2 and "has no graph.parquet" in res.output


def test_graph_refuses_a_damaged_graph_table(shop, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(shop[0], out)
    graph, ids = shop[1], np.array(shop[2], dtype=object)
    t = graph.to_table(ids)
    w = t.column("weight").to_numpy().copy()
    w[0] = -1.0

    class Bad:
        def to_table(self, item_ids):
            return t.set_column(5, "weight", pa.array(w))

    republish(out, graph=(Bad(), ids))
    res = run("case", "--shop", out)
    assert (
        res.exit_code == 2 and "graph.parquet column 'weight' must be finite and > 0, found -1.0 at row 0" in res.output
    )
