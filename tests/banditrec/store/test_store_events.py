"""Batch writes of interaction events: all or nothing, errors name the entry."""

from __future__ import annotations

import pytest

from banditrec.errors import ValidationError


def test_write_events_is_all_or_nothing_and_names_the_bad_entry(log):
    assert log.write_events(["u1", "u2"], ["i1", "i2"], ["view", "purchase"], [10.0, 11.0]) == 2
    ev = log.events()
    assert ev.user_id.tolist() == ["u1", "u2"] and ev.kind.tolist() == ["view", "purchase"]
    assert ev.ts.tolist() == [10.0, 11.0] and ev.event_id.tolist() == [None, None]
    with pytest.raises(ValidationError, match=r"events\[1\]: kind must be one of view, cart, purchase, got 'click'"):
        log.write_events(["u3", "u4"], ["i3", "i4"], ["cart", "click"], [12.0, 13.0])
    with pytest.raises(ValidationError, match=r"events\[0\]: .*ts"):
        log.write_events(["u3"], ["i3"], ["cart"], [float("nan")])
    with pytest.raises(ValidationError, match="one length"):
        log.write_events(["u3"], ["i3", "i4"], ["cart"], [1.0])
    assert len(log.events()) == 2  # nothing of the refused batches
    assert log.recent_events("u2", since_ts=0.0) == (["i2"], ["purchase"], [11.0])
