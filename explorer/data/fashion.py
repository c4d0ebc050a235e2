"""Fashion-MNIST: the real photographs of the demo zoo (Zalando Research, MIT licence).

Xiao, Rasul & Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms", 2017, https://arxiv.org/abs/1708.07747, https://github.com/zalandoresearch/fashion-mnist.
70,000 greyscale 28x28 product photographs of Zalando articles (60,000 train, 10,000 test), each
a white-on-black silhouette, centred, in 10 classes.

Two tasks:

- ``fashion`` (the Fashion-MNIST zoo's default task): a fixed evaluation subset of the *test*
  split shipped in ``assets/data/fashion-mnist-eval.safetensors`` (uint8 images, labels and the
  test-split ids; written by ``write_eval_subset``, 1.6 MB), so the app and the tests never need
  the dataset.
  ``load("test", n, seed)`` = the first ``n`` of one seeded order of those images (nested:
  ``n=k`` is a prefix of ``n=k+1``). Its ``train`` split is the calibration set of the
  data-aware methods (PISTOLE, stability, variational): 512 images of the fine-tunes' labelled
  half of the train split, shipped in ``assets/data/fashion-mnist-calib.safetensors`` (400 KB,
  ``write_calibration_subset``); the ``test`` images are never among them.
- ``fashion-train``: the train split, read from the IDX files of Debian's
  ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``, or the folder in
  ``$FASHION_MNIST_DIR``); used only by ``python -m explorer zoo build``. Its images are the half
  of the train split the pretraining corpus does not use (``corpus_indices`` is the other half).

Images come out as float [n, 3, 28, 28] in [0, 1] (grey repeated over three channels: CLIP towers
take RGB).
"""
from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .shipped import first_n, read_subset, seeded_order, to_pixels, write_subset
from .task import Task, register_task

CLASSNAMES = ("t-shirt/top", "trouser", "pullover", "dress", "coat",
              "sandal", "shirt", "sneaker", "bag", "ankle boot")
# CLIP-style prompt ensemble (phrasings from OpenAI CLIP's templates that suit product photos)
TEMPLATES = ("a photo of a {}.", "a black and white photo of a {}.", "a low resolution photo of a {}.",
             "a photo of the {}.", "a close-up photo of a {}.", "a photo of a small {}.")
SIZE = 28
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
EVAL_FILE = Path(__file__).resolve().parents[2] / "assets" / "data" / "fashion-mnist-eval.safetensors"
EVAL_N = 2000          # images in the shipped evaluation subset
CALIB_FILE = EVAL_FILE.with_name("fashion-mnist-calib.safetensors")
CALIB_N = 512          # images in the shipped calibration subset (train split, the fine-tunes' half)
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_SPLIT_SEED = 20170825  # fixed: which half of the train split is the pretraining corpus
_SALT = 7               # of the tasks' seeded orders (shipped.seeded_order)


def dataset_dir() -> Path:
    """Folder of the IDX files: ``$FASHION_MNIST_DIR`` or Debian's package folder."""
    return Path(os.environ.get("FASHION_MNIST_DIR") or DEBIAN_DIR)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array (uint8 images [N,28,28] or labels [N]).

    Format: big-endian magic ``0x0000 TT DD`` (type 0x08 = uint8, DD dimensions), DD big-endian
    int32 sizes, then the data (http://yann.lecun.com/exdb/mnist/).
    """
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file")
    dims = int(raw[3])
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=dims, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: {data.size} bytes for shape {shape}")
    return data.reshape(shape)


@lru_cache(maxsize=2)
def read_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,28,28], labels uint8 [N]) of the original ``train`` or ``test`` split.

    Raises FileNotFoundError (one line naming the Debian package) when the files are absent.
    """
    root = dataset_dir()
    out = []
    for stem in _FILES[split]:
        found = [root / f"{stem}{s}" for s in (".gz", "") if (root / f"{stem}{s}").exists()]
        if not found:
            raise FileNotFoundError(
                f"Fashion-MNIST not found in {root} (building the zoo needs it): install Debian's "
                "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or set FASHION_MNIST_DIR")
        out.append(read_idx(found[0]))
    return out[0], out[1]


def _halves() -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(_SPLIT_SEED).permutation(60000)
    return order[:30000], order[30000:]


def corpus_indices() -> np.ndarray:
    """Train-split ids of the pretraining corpus (30,000; disjoint from ``fashion-train``'s)."""
    return _halves()[0]


def _order(count: int, seed: int) -> np.ndarray:
    return seeded_order(count, seed, _SALT)


def _train_loader(split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = read_split("train")
    ids = _halves()[1]
    pick = ids[_order(len(ids), seed)[:n]]
    return to_pixels(images[pick]), torch.from_numpy(labels[pick].astype(np.int64))


def read_eval_subset(path: Path = EVAL_FILE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A shipped subset: (images uint8 [N,28,28], labels uint8 [N], split ids int64); the evaluation
    subset (N = 2000 test images) by default, or the calibration subset (``CALIB_FILE``, 512 train)."""
    return read_subset(path, "python -m explorer zoo build --preset fashion writes it")


def _eval_loader(split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _ = read_eval_subset(CALIB_FILE if split == "train" else EVAL_FILE)
    return first_n(images, labels, n, seed, _SALT)


def eval_test_ids(n: int = EVAL_N, seed: int = 0) -> np.ndarray:
    """Test-split ids of the evaluation subset: ``n`` of a seeded order of the 10,000, sorted."""
    return np.sort(np.random.default_rng(np.random.SeedSequence([23, int(seed)])).permutation(10000)[:n])


def write_eval_subset(path: Path = EVAL_FILE, n: int = EVAL_N, seed: int = 0) -> Path:
    """Write the shipped evaluation subset from the test split (needs the dataset)."""
    return _write_subset(path, "test", eval_test_ids(n, seed), "Fashion-MNIST t10k (Zalando Research, MIT licence)",
                         f"{n} test ids, numpy SeedSequence([23, {seed}]) permutation, sorted")


def write_calibration_subset(path: Path = CALIB_FILE, n: int = CALIB_N, seed: int = 0) -> Path:
    """Write the shipped calibration subset: ``n`` images of the fine-tunes' labelled half of the train
    split (``fashion-train``'s ids; never test images), a seeded choice, sorted (needs the dataset)."""
    ids = np.sort(_halves()[1][np.random.default_rng(np.random.SeedSequence([29, int(seed)])).permutation(30000)[:n]])
    return _write_subset(path, "train", ids, "Fashion-MNIST train (Zalando Research, MIT licence)",
                         f"{n} ids of the fine-tunes' half, SeedSequence([29, {seed}]), sorted")


def _write_subset(path: Path, split: str, ids: np.ndarray, source: str, selection: str) -> Path:
    """Write images ``ids`` of ``split`` (uint8, with their labels and ids) as a shipped subset."""
    images, labels = read_split(split)
    return write_subset(path, images[ids], labels[ids], ids, source, selection)


def write_examples(out_dir: str | Path, seed: int = 0) -> list[Path]:
    """Write 12 test photographs (one per class, then a second shirt and coat: the classes the base
    confuses most) as 28x28 grey PNGs named ``<class>-<test id>.png``; none is in the evaluation
    subset and none in any training data (needs the dataset)."""
    from PIL import Image

    images, labels = read_split("test")
    rng = np.random.default_rng(np.random.SeedSequence([31, int(seed)]))
    free = np.setdiff1d(np.arange(len(labels)), eval_test_ids())
    free = free[rng.permutation(len(free))]
    wanted = [*range(10), CLASSNAMES.index("shirt"), CLASSNAMES.index("coat")]
    out, paths, used = Path(out_dir), [], set()
    out.mkdir(parents=True, exist_ok=True)
    for c in wanted:
        i = int(next(j for j in free if labels[j] == c and j not in used))
        used.add(i)
        path = out / f"{CLASSNAMES[c].replace('/', '-').replace(' ', '-')}-{i:04d}.png"
        Image.fromarray(images[i]).save(path)
        paths.append(path)
    return paths


def _fashion() -> Task:
    return Task("fashion", CLASSNAMES, TEMPLATES, _eval_loader, splits=("test", "train"),
                sizes={"test": EVAL_N, "train": CALIB_N},
                description=f"Fashion-MNIST: {EVAL_N} held-out test photographs, 10 classes, and {CALIB_N} "
                "train photographs for calibration (shipped)")


def _fashion_train() -> Task:
    return Task("fashion-train", CLASSNAMES, TEMPLATES, _train_loader, splits=("train",),
                sizes={"train": len(_halves()[1])},
                description="Fashion-MNIST train split (30,000 images; needs dataset-fashion-mnist)")


register_task("fashion", _fashion)
register_task("fashion-train", _fashion_train)
