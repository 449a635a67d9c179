"""Every brain through ``banditrec build`` and serving: latent factors, reorder timing, the
product graph, quotas, embeddings as features, the due-to-reorder context feature."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from scipy.stats import special_ortho_group

from banditrec.candidates.graph import GRAPH_FILE, read_graph
from banditrec.candidates.hybrid import factor_embedding
from banditrec.shop import Shop, engine_for_shop
from banditrec.store import DecisionLog


def test_a_build_fits_and_serves_every_brain(sim_shop_dir, tmp_path):
    shop = Shop(sim_shop_dir)
    gen = shop.generator
    assert gen.factors is not None and gen.reorder is not None and gen.accessory is not None
    assert gen.quotas == {"factors": 2, "reorder": 2, "accessory": 1}
    graph = read_graph(shop.files, shop.items.ids)
    assert (gen.accessory != graph.edge_matrix("accessory_of").T).nnz == 0
    assert shop.manifest["graph"]["edges"] == graph.n_edges
    assert shop.files.path(GRAPH_FILE).exists()
    # the embedding: the last embedding_dim item features, the factors' leading directions
    emb = shop.files.arrays("items")["embedding"]
    assert emb.shape == (shop.n_items, 8)
    np.testing.assert_allclose(shop.items.features[:, -8:], emb)
    assert "due_to_reorder" in shop.context.names
    # serving: the per-user sources reach the log with their names
    path = tmp_path / "log.db"
    log = DecisionLog(path)
    engine = engine_for_shop(shop, "egreedy:epsilon=0.2", log, seed=1, clock=lambda: shop.manifest["now"] + 3600.0)
    for user in list(shop.user_index)[:200]:
        engine.decide(user, 4)
    log.close()
    with sqlite3.connect(path) as db:
        sources = [s for (text,) in db.execute("SELECT candidate_sources FROM decisions") for s in json.loads(text)]
    assert {"factors", "reorder", "complement"} <= set(sources)


def test_the_due_to_reorder_feature_is_the_models(sim_shop_dir):
    shop = Shop(sim_shop_dir)
    at = shop.context.names.index("due_to_reorder")
    now = shop.manifest["now"] + 86_400.0
    due = shop.generator.reorder.context_features(np.arange(len(shop.user_ids)), now)
    user = int(np.argmax(due))
    v = shop.context.vector(user, np.empty(0, np.int64), None, now, {}, shop.items.features)
    assert due[user] > 0 and v[at] == pytest.approx(due[user])
    assert shop.context.vector(-1, np.empty(0, np.int64), None, now, {}, shop.items.features)[at] == 0.0


class _Factors:
    def __init__(self, E):
        self.E = E

    def item_embedding(self):
        return self.E


def test_a_rebuilds_embedding_keeps_old_rows_and_rotates_new_ones_onto_them():
    """Refitted factors are the old ones rotated (plus noise): the kept items keep their rows
    and a new item's row lands where the old rotation puts it."""
    g = np.random.default_rng(0)
    n, k, dim = 60, 6, 4
    # leading directions of nearly equal strength: a refit's principal axes turn within them
    truth = g.normal(size=(n + 5, k)) * np.array([3.0, 3.01, 3.02, 3.03, 0.1, 0.1])
    old = factor_embedding(_Factors(truth[:n]), dim)
    R = special_ortho_group.rvs(k, random_state=1)
    refit = truth @ R + 1e-6 * g.normal(size=truth.shape)
    new = factor_embedding(_Factors(refit), dim, previous=old)
    np.testing.assert_array_equal(new[:n], old)
    # the new items, through the old basis: the old fit's directions applied to their truth
    _, _, vt = np.linalg.svd(truth[:n], full_matrices=False)
    want = truth[n:] @ vt[:dim].T
    want *= np.sign((truth[:n] @ vt[:dim].T)[np.argmax(np.abs(truth[:n] @ vt[:dim].T), axis=0), np.arange(dim)])
    np.testing.assert_allclose(new[n:], want, atol=1e-3)
    # without the previous build the refit's own axes differ from the old ones
    assert not np.allclose(factor_embedding(_Factors(refit), dim)[n:], want, atol=1e-3)
