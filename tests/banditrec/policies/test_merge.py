"""Ridge policies learned on disjoint rows merge into the model of all the rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.errors import ValidationError
from banditrec.policies import make

RIDGE = ["linucb", "egreedy", "softmax", "lints"]


def _rows(gen, m):
    return gen.normal(size=(m, 3)), gen.normal(size=(m, 2)), gen.binomial(1, 0.3, size=m) * gen.uniform(0.5, 2, size=m)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(RIDGE), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 60), max_size=4))
def test_copies_that_learned_parts_merge_into_the_model_of_the_whole(name, seed, cuts):
    gen = np.random.default_rng(seed)
    C, V, r = _rows(gen, 60)
    w = gen.uniform(0.2, 3.0, size=60)
    whole = make(name, context_dim=3, item_dim=2)
    whole.update(C, V, r, weight=w)
    merged = make(name, context_dim=3, item_dim=2)
    bounds = [0, *sorted(cuts), 60]
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        copy = make(name, context_dim=3, item_dim=2)
        if hi > lo:
            copy.update(C[lo:hi], V[lo:hi], r[lo:hi], weight=w[lo:hi])
        parts.append(copy.learned())
    merged.merge(parts)
    for attr in ("A", "A_inv", "b", "theta", "stats"):
        np.testing.assert_allclose(getattr(merged, attr), getattr(whole, attr), rtol=1e-9, atol=1e-12, err_msg=attr)
    assert merged.noise_sd == pytest.approx(whole.noise_sd, rel=1e-9)


def test_a_discounted_model_learns_in_row_order_and_does_not_merge():
    policy = make("linucb:gamma=0.99", context_dim=3, item_dim=2)
    assert not policy.mergeable
    other = make("linucb:gamma=0.99", context_dim=3, item_dim=2)
    other.update(*_rows(np.random.default_rng(0), 5))
    with pytest.raises(ValidationError, match="gamma"):
        policy.merge([other.learned()])
