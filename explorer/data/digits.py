"""Handwritten digits: the Fashion-MNIST zoo's second real task (many-vector merging).

The 1,797 handwritten digits that ship inside scikit-learn (``sklearn.datasets.load_digits``: the
test part of UCI's "Optical Recognition of Handwritten Digits", Alpaydin & Kaynak 1998, CC BY 4.0,
https://archive.ics.uci.edu/dataset/80): 8x8 images of 17 grey levels, 10 classes, scanned from
forms filled in by 43 people. They are brought to the zoo's input form the way Fashion-MNIST was
made (bright strokes on black, the glyph scaled to 20x20 and centred in 28x28; ``render``), so
one 28 px model reads both tasks.

Two tasks:

- ``digits``: a fixed, seeded held-out subset of ``EVAL_N`` images (``load("test", n, seed)``: the
  first n of one seeded order, nested), and ``CALIB_N`` images of the fine-tunes' part as its
  ``train`` split (the calibration set of PISTOLE, stability and variational); both ship in
  ``assets/data/digits-{eval,calib}.safetensors`` (uint8, with their ``load_digits`` ids), so the
  app and the tests never need scikit-learn.
- ``digits-train``: every image not held out (``FINETUNE_N``), rendered from scikit-learn at build
  time (``python -m explorer zoo build``); the digits fine-tunes learn from it.

Images come out as float [n, 3, 28, 28] in [0, 1] (grey repeated over three channels).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .shipped import first_n, read_subset, seeded_order, to_pixels, write_subset
from .task import Task, register_task

CLASSNAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# CLIP-style prompt ensemble (OpenAI CLIP's phrasings that suit a scanned handwritten digit)
TEMPLATES = ("a photo of the number {}.", "a photo of the digit {}.", "a black and white photo of the number {}.",
             "a low resolution photo of the number {}.", "a handwritten {}.", "a scan of a handwritten {}.")
TOTAL = 1797           # images in scikit-learn's copy
EVAL_N = 600           # held out, shipped (never trained on)
CALIB_N = 256          # of the fine-tunes' part, shipped as the task's train split
FINETUNE_N = TOTAL - EVAL_N
_DATA = Path(__file__).resolve().parents[2] / "assets" / "data"
EVAL_FILE = _DATA / "digits-eval.safetensors"
CALIB_FILE = _DATA / "digits-calib.safetensors"
_SPLIT_SEED = 19980101   # fixed: which images are held out
_SALT = 11               # of the task's seeded orders (shipped.seeded_order)
PACKAGE = "scikit-learn"


def render(glyphs: np.ndarray) -> np.ndarray:
    """8x8 glyphs (values 0..16, ink high) -> uint8 [n, 28, 28]: scaled to 20x20 (bicubic) and
    centred on black, as Fashion-MNIST's photographs and MNIST's digits are framed."""
    from PIL import Image

    out = np.zeros((len(glyphs), 28, 28), dtype=np.uint8)
    for i, g in enumerate(np.asarray(glyphs, dtype=np.float64)):
        small = Image.fromarray(np.clip(g * (255 / 16), 0, 255).round().astype(np.uint8))
        out[i, 4:24, 4:24] = np.asarray(small.resize((20, 20), Image.Resampling.BICUBIC))
    return out


def read_sklearn() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits rendered (uint8 [1797, 28, 28]) and their labels (build time only).

    Raises:
        ModuleNotFoundError: scikit-learn is not installed (one line naming the package).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ModuleNotFoundError(f"the digits task is built from the copy inside {PACKAGE}: "
                                  f"pip install {PACKAGE} (needed by 'zoo build' only)") from None
    d = load_digits()
    return render(d.images), d.target.astype(np.uint8)


def split_ids() -> tuple[np.ndarray, np.ndarray]:
    """(held-out ids [EVAL_N], fine-tune ids [FINETUNE_N]) of ``load_digits``, fixed."""
    order = np.random.default_rng(_SPLIT_SEED).permutation(TOTAL)
    return np.sort(order[:EVAL_N]), np.sort(order[EVAL_N:])


def _order(count: int, seed: int) -> np.ndarray:
    return seeded_order(count, seed, _SALT)


def write_subsets() -> tuple[Path, Path]:
    """Write the shipped evaluation and calibration subsets (needs scikit-learn)."""
    images, labels = read_sklearn()
    held, tune = split_ids()
    calib = np.sort(tune[_order(len(tune), 0)[:CALIB_N]])
    source = "sklearn.datasets.load_digits (UCI optdigits test part, CC BY 4.0)"
    write_subset(EVAL_FILE, images[held], labels[held], held, source,
                 f"{EVAL_N} held-out ids, numpy default_rng({_SPLIT_SEED}) permutation, sorted")
    write_subset(CALIB_FILE, images[calib], labels[calib], calib, source,
                 f"{CALIB_N} ids of the fine-tunes' part, seeded order (seed 0), sorted")
    return EVAL_FILE, CALIB_FILE


def read_digits_subset(path: Path = EVAL_FILE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A shipped subset: (images uint8 [N,28,28], labels uint8 [N], load_digits ids int64)."""
    return read_subset(path, "python -m explorer zoo build --preset fashion --only digits writes it")


def _eval_loader(split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _ = read_digits_subset(CALIB_FILE if split == "train" else EVAL_FILE)
    return first_n(images, labels, n, seed, _SALT)


def _train_loader(split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = read_sklearn()
    tune = split_ids()[1]
    pick = tune[_order(len(tune), seed)[:n]]
    return to_pixels(images[pick]), torch.from_numpy(labels[pick].astype(np.int64))


def _digits() -> Task:
    return Task("digits", CLASSNAMES, TEMPLATES, _eval_loader, splits=("test", "train"),
                sizes={"test": EVAL_N, "train": CALIB_N},
                description=f"handwritten digits (scikit-learn's copy of UCI optdigits, CC BY 4.0): {EVAL_N} "
                f"held-out images, and {CALIB_N} of the fine-tunes' part for calibration (shipped)")


def _digits_train() -> Task:
    return Task("digits-train", CLASSNAMES, TEMPLATES, _train_loader, splits=("train",),
                sizes={"train": FINETUNE_N},
                description=f"handwritten digits not held out ({FINETUNE_N}; needs scikit-learn)")


register_task("digits", _digits)
register_task("digits-train", _digits_train)
