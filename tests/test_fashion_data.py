"""Fashion-MNIST data: IDX reader, the shipped evaluation task, the caption corpus, the upload form.

Nothing here needs the Debian package (fake IDX files stand in for it) except where a test says
so and skips without it.
"""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from explorer.app.images import INPUT_FORMS, check_input_form, fashion_mnist_form, to_input_form
from explorer.data import fashion, get_task
from explorer.data.fashion_corpus import COARSE, PHRASES, SYNONYMS, TOPS, caption


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def test_idx_reader_round_trips_plain_and_gzip(tmp_path):
    a = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    (tmp_path / "x").write_bytes(_idx(a))
    (tmp_path / "x.gz").write_bytes(gzip.compress(_idx(a)))
    assert np.array_equal(fashion.read_idx(tmp_path / "x"), a)
    assert np.array_equal(fashion.read_idx(tmp_path / "x.gz"), a)
    (tmp_path / "short").write_bytes(_idx(a)[:-5])
    with pytest.raises(ValueError, match="truncated"):
        fashion.read_idx(tmp_path / "short")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ValueError, match="not a uint8 IDX"):
        fashion.read_idx(tmp_path / "png")


def test_missing_dataset_is_one_line_naming_the_package(tmp_path, monkeypatch, capsys):
    from explorer.cli import main
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    fashion.read_split.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
            fashion.read_split("train")
        assert main(["zoo", "build", "--preset", "fashion", "--into", str(tmp_path / "z")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "apt-get install dataset-fashion-mnist" in err[0]
        assert not (tmp_path / "z" / "manifest.toml").exists()
    finally:
        fashion.read_split.cache_clear()


def test_shipped_task_is_nested_seeded_and_well_formed():
    task = get_task("fashion")
    assert task.classnames == fashion.CLASSNAMES and task.splits == ("test", "train")
    x20, y20 = task.load("test", 20, 0)
    x7, y7 = task.load("test", 7, 0)
    assert x20.shape == (20, 3, 28, 28) and str(x20.dtype) == "torch.float32"
    assert 0 <= float(x20.min()) and float(x20.max()) <= 1
    assert torch_equal(x20[:, 0], x20[:, 2]) and torch_equal(x20[:7], x7) and torch_equal(y20[:7], y7)
    _, y_other = task.load("test", 20, 1)
    assert not torch_equal(y20, y_other)                      # another seed, another order
    _, y_all = task.load("test", fashion.EVAL_N, 0)
    assert np.bincount(y_all.numpy(), minlength=10).min() >= 150   # every class well represented
    with pytest.raises(ValueError, match="has 2000 images; n=2001"):
        task.load("test", 2001, 0)


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_subset_ids_are_the_seeded_test_ids():
    images, labels, ids = fashion.read_eval_subset()
    assert images.shape == (2000, 28, 28) and images.dtype == np.uint8 and labels.max() == 9
    assert np.array_equal(ids, fashion.eval_test_ids())


@pytest.mark.skipif(not (fashion.dataset_dir() / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="needs Debian's dataset-fashion-mnist")
def test_subset_is_the_test_split_and_examples_lie_outside_it(tmp_path):
    images, labels, ids = fashion.read_eval_subset()
    test_images, test_labels = fashion.read_split("test")
    assert np.array_equal(test_images[ids], images) and np.array_equal(test_labels[ids], labels)
    examples = fashion.write_examples(tmp_path)
    shown = {int(p.stem.rsplit("-", 1)[1]) for p in examples}
    assert len(examples) == 12 and not shown & set(ids.tolist())
    assert {p.stem.rsplit("-", 1)[0] for p in examples} == {c.replace("/", "-").replace(" ", "-")
                                                            for c in fashion.CLASSNAMES}


def test_corpus_and_finetune_halves_of_the_train_split_are_disjoint():
    corpus, tuned = fashion._halves()
    assert len(corpus) == len(tuned) == 30000
    assert not set(corpus.tolist()) & set(tuned.tolist())


def test_captions_name_the_class_the_coarse_group_or_a_wrong_class():
    rng = np.random.default_rng(0)
    fine = {c: {p.format(s) for p in PHRASES for s in SYNONYMS[c]} for c in range(10)}
    coarse = {c: {p.format(s) for p in PHRASES for s in COARSE[c]} for c in range(10)}
    others = [c for c in range(10) if c not in TOPS]
    assert all(caption(c, rng, p_fine=1.0, p_noise=0.0) in fine[c] for c in others for _ in range(20))
    tops = set().union(*(fine[c] for c in TOPS))
    shirt = [caption(6, rng, p_fine=1.0, p_noise=0.0) for _ in range(400)]
    assert set(shirt) <= tops and all(any(w in fine[c] for w in shirt) for c in TOPS)  # all four words
    assert all(caption(c, rng, p_fine=0.0, p_noise=0.0) in coarse[c] for c in range(10) for _ in range(20))
    wrong = [caption(3, rng, p_fine=0.0, p_noise=1.0) for _ in range(200)]
    assert not set(wrong) & fine[3] and all(any(w in fine[c] for c in range(10)) for w in wrong)
    own = np.mean([caption(7, rng) in fine[7] for _ in range(4000)])   # default mix: 25% own names
    assert 0.22 < own < 0.28


def test_upload_form_light_photo_becomes_a_centred_silhouette_on_black():
    photo = np.full((300, 200, 3), 240, np.uint8)          # light background, any size, colour
    photo[40:200, 30:110] = (200, 30, 30)                   # a red article, off centre, 160 x 80
    out = fashion_mnist_form(photo)
    assert out.shape == (28, 28, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    on = out[..., 0] > 64
    rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
    assert rows[0] == 0 and rows[-1] == 27                 # longest side resized to 28
    assert abs((cols[0] + cols[-1]) / 2 - 13.5) <= 1       # centred
    assert out[0, 0, 0] == 0 and out[27, 27, 0] == 0        # black background


def test_upload_form_keeps_dark_backgrounds_and_fashion_images():
    dark = np.zeros((64, 64, 3), np.uint8)
    dark[16:48, 24:40] = 230
    assert fashion_mnist_form(dark)[14, 14, 0] > 150         # not negated: still light on black
    images, _, _ = fashion.read_eval_subset()
    rgb = np.repeat(images[5][..., None], 3, axis=2)
    assert np.array_equal(fashion_mnist_form(rgb), rgb)
    assert to_input_form(rgb, "as-is") is rgb and set(INPUT_FORMS) == {"as-is", "fashion-mnist"}
    with pytest.raises(ValueError, match="not an input form"):
        check_input_form("mnist")
