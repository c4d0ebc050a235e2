from __future__ import annotations

import numpy as np

from explorer.store import Store


def test_put_get_flags_and_persistence(tmp_path):
    path = tmp_path / "r.sqlite"
    s = Store(path)
    s.put("k1", {"clean_acc": 0.5}, np.array([True, False]), np.array([False, False]), sweep="sw")
    s.put("k2", {"clean_acc": 0.7}, sweep="other")
    assert s.get("k1") == {"clean_acc": 0.5} and s.get("nope") is None
    clean, robust = s.flags("k1")
    assert clean.tolist() == [True, False] and robust.tolist() == [False, False]
    assert s.flags("k2") is None
    s.close()
    again = Store(path)      # committed at once: a new connection sees both rows
    assert len(again) == 2 and [r["clean_acc"] for r in again.rows("sw")] == [0.5]


def test_rows_picks_up_writes_from_another_connection(tmp_path):
    a, b = Store(tmp_path / "r.sqlite"), Store(tmp_path / "r.sqlite")
    a.put("k1", {"v": 1})
    assert [r["v"] for r in b.rows()] == [1]
    a.put("k2", {"v": 2})
    a.put("k1", {"v": 3})                # replaced: shows once, with the new value, last
    assert [r["v"] for r in b.rows()] == [2, 3]
