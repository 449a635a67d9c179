"""banditrec build's input files: every bad-input case names its file, line, column and what was
found; nothing is published unless the whole build succeeds; ids of any characters work."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from banditrec.cli import main
from banditrec.errors import ValidationError
from banditrec.shop import BuildConfig, Shop, build_shop
from banditrec.shop.directory import list_builds
from banditrec.shop.tables import csv_line

NASTY = ['comma, "quoted" id', "emoji 🛒 item", "  spaced  ", "naïve-ünïcödé", "line\nbreak", "plain"]


def write(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def files(tmp_path, *, items=None, events=None, users=None):
    ids = NASTY + [f"item-{i}" for i in range(20)]
    items = (
        items
        if items is not None
        else [[i, f"title {k % 3}", f"type{k % 4}", 1.5 + k, "yes"] for k, i in enumerate(ids)]
    )
    rng = np.random.default_rng(0)
    if events is None:
        events = [
            [
                f"user {rng.integers(12)}",
                ids[rng.integers(len(ids))],
                ["view", "cart", "purchase"][k % 3],
                1_700_000_000 + 60 * k,
            ]
            for k in range(300)
        ]
    it = write(tmp_path / "items.csv", ["item_id", "title", "type", "price", "in_stock"], items)
    ev = write(tmp_path / "interactions.csv", ["user_id", "item_id", "event_type", "timestamp"], events)
    us = None
    if users is not None:
        us = write(tmp_path / "users.csv", ["user_id", "segment", "age"], users)
    return it, ev, us


def refused(tmp_path, match, **kw):
    it, ev, us = files(tmp_path, **{k: v for k, v in kw.items() if k in ("items", "events", "users")})
    with pytest.raises(ValidationError, match=match) as info:
        build_shop(
            kw.get("items_path", it), kw.get("events_path", ev), us, out=tmp_path / "shop", config=kw.get("config")
        )
    assert list_builds(tmp_path / "shop") == [] and not (tmp_path / "shop" / "CURRENT.json").exists()
    assert not any((tmp_path / "shop" / "builds").iterdir()), "a half-built directory was left behind"
    return info.value


def test_ids_of_any_characters_round_trip(tmp_path):
    it, ev, _ = files(tmp_path)
    result = build_shop(it, ev, out=tmp_path / "shop")
    shop = Shop(tmp_path / "shop")
    assert list(shop.items.ids[: len(NASTY)]) == NASTY
    assert result.n_items == len(NASTY) + 20
    j = shop.item_id(NASTY[0])
    assert shop.items.ids[j] == NASTY[0] and shop.info(j).type == "type0"


def test_duplicate_item_ids_are_refused_with_both_lines(tmp_path):
    items = [["a", "t", "x", 1, "yes"], ["b", "multi\nline title", "x", 2, "yes"], ["a", "t", "x", 3, "yes"]]
    err = refused(tmp_path, "duplicate item id 'a'", items=items, events=[["u", "a", "view", 1]])
    # line 2 is a; b spans lines 3-4; the second a is on line 5
    assert "items.csv, line 5, column 'item_id'" in str(err) and "first at line 2" in str(err)


def test_a_bad_number_names_its_exact_line_after_a_quoted_line_break(tmp_path):
    items = [["a", "two\nlines", "x", 1, "yes"], ["b", "t", "x", "cheap", "yes"]]
    err = refused(tmp_path, "expected a number, found 'cheap'", items=items, events=[["u", "a", "view", 1]])
    assert str(err).startswith("items.csv, line 4, column 'price'")


def test_csv_line_counts_quoted_line_breaks(tmp_path):
    path = write(tmp_path / "x.csv", ["a", "b"], [["1", "x\ny\nz"], ["2", "w"], ["3", "q"]])
    assert [csv_line(str(path), r) for r in range(3)] == [2, 5, 6]


@pytest.mark.parametrize(
    "value, match",
    [
        ("yesterday", "expected a timestamp \\(ISO-8601 or epoch seconds\\), found 'yesterday'"),
        ("2024-13-45", "expected a timestamp"),
        ("1700000000000", "looks like milliseconds"),
        ("", "a timestamp is required, found an empty cell"),
    ],
)
def test_unparseable_timestamps_are_refused_by_name(tmp_path, value, match):
    events = [["u", "plain", "view", "2024-05-01T10:00:00Z"], ["u", "plain", "view", value]]
    err = refused(tmp_path, match, events=events)
    assert str(err).startswith("interactions.csv, line 3, column 'timestamp'")


def test_timestamps_in_every_documented_form_agree(tmp_path):
    forms = [
        "2024-05-01T10:00:00Z",
        "2024-05-01 10:00:00",
        "2024-05-01T12:00:00+02:00",
        "1714557600",
        "1714557600.0",
        "2024-05-01T10:00:00.000",
    ]
    events = [["u", "plain", "purchase", f] for f in forms]
    it, ev, _ = files(tmp_path, events=events)
    from banditrec.shop.tables import read_table

    t = read_table(ev, fields={}, required=("timestamp",), what="interactions")
    assert np.array_equal(t.timestamps("timestamp"), np.full(len(forms), 1714557600.0))


def test_milliseconds_when_configured(tmp_path):
    events = [["u", "plain", "purchase", "1714557600000"], ["v", "plain", "purchase", "1714557660000"]]
    it, ev, _ = files(tmp_path, events=events)
    build_shop(it, ev, out=tmp_path / "shop", config=BuildConfig(timestamp_unit="ms"))
    assert Shop(tmp_path / "shop").manifest["now"] == 1714557660.0


def test_empty_files_and_header_only_files_are_refused_by_name(tmp_path):
    it, ev, _ = files(tmp_path)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValidationError, match="empty.csv: the interactions file is empty"):
        build_shop(it, tmp_path / "empty.csv", out=tmp_path / "shop")
    write(tmp_path / "header.csv", ["item_id"], [])
    with pytest.raises(ValidationError, match="header.csv: the items file has a header but no rows"):
        build_shop(tmp_path / "header.csv", ev, out=tmp_path / "shop")
    with pytest.raises(ValidationError, match="nope.csv: no such items file"):
        build_shop(tmp_path / "nope.csv", ev, out=tmp_path / "shop")


def test_a_missing_required_column_names_the_header_and_the_map_option(tmp_path):
    it = write(tmp_path / "items.csv", ["sku", "price"], [["a", 1]])
    ev = write(
        tmp_path / "interactions.csv", ["user_id", "item_id", "event_type", "timestamp"], [["u", "a", "view", 1]]
    )
    with pytest.raises(
        ValidationError,
        match=r"items.csv, line 1, column 'item_id': the items file needs a column "
        r"'item_id' \(or map one with --map item_id=COLUMN\); its header has "
        r"'sku', 'price'",
    ):
        build_shop(it, ev, out=tmp_path / "shop")
    build_shop(it, ev, out=tmp_path / "shop", mapping=["items.item_id=sku"])
    assert Shop(tmp_path / "shop").items.ids == ("a",)


def test_an_empty_required_cell_is_refused(tmp_path):
    events = [["u", "plain", "view", 1], ["", "plain", "view", 2]]
    err = refused(tmp_path, "a value is required, found an empty cell", events=events)
    assert str(err).startswith("interactions.csv, line 3, column 'user_id'")


def test_a_row_with_too_few_cells_is_refused(tmp_path):
    it, _, _ = files(tmp_path)
    (tmp_path / "bad.csv").write_text("user_id,item_id,event_type,timestamp\nu,plain,view,1\nu,plain\n")
    with pytest.raises(ValidationError, match="bad.csv.*expected 4 cells as in the header, found 2"):
        build_shop(it, tmp_path / "bad.csv", out=tmp_path / "shop")


def test_unknown_items_and_event_types_are_counted_and_reported_not_dropped_silently(tmp_path):
    events = [
        ["u", "plain", "view", 1],
        ["u", "ghost", "view", 2],
        ["u", "ghost", "cart", 3],
        ["v", "plain", "wishlist", 4],
        ["v", "plain", "purchase", 5],
    ]
    it, ev, _ = files(tmp_path, events=events)
    result = build_shop(it, ev, out=tmp_path / "shop")
    notes = " ".join(result.notes)
    assert "2 interactions name an item the catalog does not hold" in notes and "'ghost'" in notes
    assert "1 interactions have an event_type no setting counts" in notes and "'wishlist' (1)" in notes
    manifest = Shop(tmp_path / "shop").manifest
    assert manifest["counts"]["interactions_read"] == 5 and manifest["counts"]["interactions_used"] == 2
    assert manifest["notes"] == result.notes


def test_event_types_are_configurable(tmp_path):
    events = [["u", "plain", "wishlist", 1], ["u", "item-1", "order", 2]]
    it, ev, _ = files(tmp_path, events=events)
    build_shop(it, ev, out=tmp_path / "shop", config=BuildConfig(cart_events=("wishlist",)))
    assert Shop(tmp_path / "shop").manifest["counts"]["interactions_used"] == 2


def test_duplicate_users_and_bad_user_attributes(tmp_path):
    users = [["user 1", "s1", 30], ["user 1", "s2", 40]]
    refused(tmp_path, "users.csv, line 3, column 'user_id': duplicate user id 'user 1'", users=users)


def test_a_bad_build_config_names_the_setting(tmp_path):
    bad = tmp_path / "build.toml"
    bad.write_text("[candidates]\nn_neighbours = 10\n")
    with pytest.raises(ValidationError, match=r"unknown setting \[candidates\] n_neighbours"):
        BuildConfig.from_toml(bad)
    with pytest.raises(ValidationError, match="event type 'click' is listed as both view and purchase"):
        BuildConfig(purchase_events=("click",))


def test_the_cli_prints_the_error_and_exits_nonzero(tmp_path):
    items = [["a", "t", "x", "free", "yes"]]
    it, ev, _ = files(tmp_path, items=items, events=[["u", "a", "view", 1]])
    res = CliRunner().invoke(
        main, ["build", "--items", str(it), "--interactions", str(ev), "--out", str(tmp_path / "shop")]
    )
    assert res.exit_code == 2
    assert "items.csv, line 2, column 'price': expected a number, found 'free'" in res.output
    assert "Traceback" not in res.output


def test_parquet_inputs_name_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"item_id": ["a", "b"], "price": [1.0, -2.0]}), tmp_path / "items.parquet")
    pq.write_table(
        pa.table({"user_id": ["u"], "item_id": ["a"], "event_type": ["view"], "timestamp": [1.0]}),
        tmp_path / "interactions.parquet",
    )
    with pytest.raises(ValidationError, match=r"items.parquet, row 2, column 'price': a price must be >= 0"):
        build_shop(tmp_path / "items.parquet", tmp_path / "interactions.parquet", out=tmp_path / "shop")


def test_the_manifest_describes_the_build(tmp_path):
    it, ev, us = files(tmp_path, users=[[f"user {k}", f"s{k % 2}", 20 + k] for k in range(12)])
    result = build_shop(it, ev, us, out=tmp_path / "shop")
    m = json.loads((tmp_path / "shop" / "builds" / result.build / "manifest.json").read_text())
    assert m["schema_version"] == 1 and m["build"] == result.build and m["previous"] is None
    assert set(m["inputs"]) >= {"items", "interactions", "users"} and len(m["inputs"]["items"]["sha256"]) == 64
    assert m["counts"]["items"] == len(NASTY) + 20 and m["counts"]["users_in_file"] == 12
    assert m["config"]["n_neighbors"] == 50 and m["segments"] == ["s0", "s1"]
    assert all(len(v) == 64 for v in m["files"].values()) and "items.parquet" in m["files"]
