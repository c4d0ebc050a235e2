"""An 11-point sweep's rows are the same as before the package move (architecture step 2).

``tests/data/sweep-shapes-pgd10.json`` was written by ``python -m explorer sweep --natural natural
--robust tecoa --alphas 0:1:11 --attack pgd-10 --n 128`` on the ResNet shapes zoo at e12a504, the
commit before explorer/ was grouped into packages. A refactoring that changes one number of one
row (accuracies, intervals, how many images were attacked) fails here.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from explorer.cli import main

DATA = Path(__file__).parent / "data" / "sweep-shapes-pgd10.json"
SHAPES_MANIFEST = Path(__file__).parent.parent / "assets" / "zoo" / "manifest.toml"


def test_sweep_rows_are_unchanged_by_the_move(tmp_path, capsys) -> None:
    golden = json.loads(DATA.read_text())
    out = tmp_path / "rows.json"
    rc = main(["sweep", "--manifest", str(SHAPES_MANIFEST), "--natural", "natural", "--robust", "tecoa",
               "--alphas", "0:1:11", "--attack", "pgd-10", "--n", "128", "--no-store", "--out", str(out)])
    assert rc in (0, None)
    rows = json.loads(out.read_text())
    assert len(rows) == len(golden) == 11
    for row, want in zip(rows, golden, strict=True):
        got = {k: row[k] for k in want}
        assert got == want, f"alpha={want['alpha']}: {got} != {want}"
    assert [r["robust_acc"] for r in rows] != pytest.approx([r["clean_acc"] for r in rows])   # a real attack
