"""The second real task (handwritten digits) and many-vector merging across tasks (``zoo multitask``).

The digits ship as two uint8 subsets (held out; calibration of the fine-tunes' part), so nothing
here needs scikit-learn; the demo zoo's ``natural-digits`` vector is checked to be what makes
multi-task merging meaningful: it knows the digits, the base and the clothes fine-tune do not.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.cli import main
from explorer.config import AttackSpec, EvalSpec, MergeSpec
from explorer.data import digits, get_task
from explorer.engine.frontier import Engine
from explorer.studies.multitask import MERGES, run_multitask, table
from explorer.zoo import default_manifest_path, load_manifest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_digits_ship_nested_seeded_held_out_and_well_formed():
    task = get_task("digits")
    assert task.classnames[:3] == ("zero", "one", "two") and task.sizes == {"test": 600, "train": 256}
    x64, y64 = task.load("test", 64, 0)
    x16, y16 = task.load("test", 16, 0)
    assert x64.shape == (64, 3, 28, 28) and bool((x64[:16] == x16).all()) and bool((y64[:16] == y16).all())
    assert 0 <= float(x64.min()) and float(x64.max()) <= 1 and bool((x64[:, 0] == x64[:, 2]).all())
    # black border (the glyph is 20x20, centred), bright strokes: framed as Fashion-MNIST is
    assert float(x64[:, :, :4].abs().max()) == 0 and float(x64[:, :, 4:24, 4:24].max()) > 0.9
    _, y_all = task.load("test", 600, 0)
    assert np.bincount(y_all.numpy(), minlength=10).min() >= 40
    held = digits.read_digits_subset(digits.EVAL_FILE)[2]
    calib = digits.read_digits_subset(digits.CALIB_FILE)[2]
    tune = digits.split_ids()[1]
    assert len(set(held.tolist())) == 600 and not set(held.tolist()) & set(tune.tolist())   # never trained on
    assert set(calib.tolist()) <= set(tune.tolist()) and held.tolist() == digits.split_ids()[0].tolist()
    with pytest.raises(ValueError, match=r"^task 'digits' has 600 images; n=601 is larger$"):
        task.load("test", 601, 0)


def test_render_scales_a_glyph_to_20_px_centred_on_black():
    glyph = np.zeros((1, 8, 8))
    glyph[0, :, 3:5] = 16   # a vertical bar, full ink
    img = digits.render(glyph)[0]
    assert img.shape == (28, 28) and img.dtype == np.uint8
    assert img[:4].max() == 0 and img[24:].max() == 0 and img[:, :4].max() == 0 and img[:, 24:].max() == 0
    assert img[14, 14] >= 250 and img[14, 5] <= 5   # ink in the middle column, none at the side


def test_the_demo_zoo_has_a_digits_vector_that_only_it_knows(monkeypatch):
    monkeypatch.delenv("EXPLORER_MANIFEST")
    m = load_manifest(default_manifest_path())
    assert m.names("natural") == ["natural", "natural-digits"]   # the first view still opens on "natural"
    assert m.get("natural-digits").provenance["data"] == "digits-train (train)"
    eng = Engine(m, device="cpu")
    ev, none = EvalSpec("digits", n=600), AttackSpec("none", 0.0)
    acc = {name: eng.model_point(name, none, ev)["clean_acc"] for name in ("pretrained", "natural", "natural-digits")}
    assert acc["natural-digits"] >= 0.90 and acc["pretrained"] <= 0.25 and acc["natural"] <= 0.25, acc


def test_multitask_rows_are_the_engines_points_with_normalized_accuracy(tiny_zoo):
    eng = Engine(load_manifest(tiny_zoo), device="cpu")
    attack, evals = AttackSpec("none", 0.0), [EvalSpec("shapes-mixed", n=32), EvalSpec("colors", n=32)]
    rows = run_multitask(eng, ["natural", "robust"], ["shapes-mixed", "colors"], attack, evals)
    assert [r["label"] for r in rows[:3]] == ["pretrained base", "natural alone", "robust alone"]
    assert len(rows) == 3 + len(MERGES)
    by = {r["label"]: r for r in rows}
    assert by["pretrained base"]["lambdas"] == [0.0, 0.0] and by["robust alone"]["lambdas"] == [0.0, 1.0]
    assert by["task arithmetic, lambda 0.7"]["lambdas"] == [0.7, 0.7]
    assert by["Iso-C, alpha 1.5"]["lambdas"] == [0.75, 0.75] and by["TSV-M, alpha 1"]["lambdas"] == [0.5, 0.5]
    assert by["natural alone"]["normalized"][0] == 1.0 and by["robust alone"]["normalized"][1] == 1.0
    for label in ("TSV-M, alpha 1", "TIES, keep 0.2, lambda 1"):
        r = by[label]
        spec = MergeSpec(method=r["method"], lambdas=tuple(r["lambdas"]), keep=0.2 if "TIES" in label else 1.0)
        direct = eng.point(["natural", "robust"], [], spec, attack, evals[1])
        assert r["points"][1]["clean_acc"] == direct["clean_acc"]
        assert r["normalized"][1] == pytest.approx(direct["clean_acc"] / by["robust alone"]["points"][1]["clean_acc"])
    text = table(rows, ["shapes-mixed", "colors"], attack)
    assert "| merge | lambdas | shapes-mixed clean [95% CI] | shapes-mixed norm. | colors clean [95% CI] |" in text
    assert "shapes-mixed n=32, colors n=32" in text
    # two vectors of one task: that task is one column, normalized by the first of them
    shared = run_multitask(eng, ["natural", "robust"], ["shapes-mixed", "shapes-mixed"], attack, evals[:1] * 2, merges=())
    assert [len(r["points"]) for r in shared] == [1, 1, 1] and shared[1]["normalized"] == [1.0]


def test_zoo_multitask_cli_and_its_bad_input(tiny_zoo, capsys):
    argv = ["zoo", "multitask", "--manifest", str(tiny_zoo), "--no-store"]
    assert main([*argv, "--vector", "natural=shapes", "--vector", "robust=colors", "--n", "16"]) == 0
    out = capsys.readouterr().out
    assert "| natural alone | 1, 0 | " in out and "shapes n=16, colors n=16" in out
    for extra, message in ((["--vector", "natural=shapes"], "multitask needs two or more task vectors"),
                           (["--vector", "natural", "--vector", "robust=colors"], "--vector takes NAME=TASK"),
                           (["--vector", "natural=shapes", "--vector", "nobody=colors"], "no model 'nobody'"),
                           ([], "multitask needs two or more task vectors with their tasks (found 0)")):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert torch.get_num_threads() == 1
