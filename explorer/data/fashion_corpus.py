"""The pretraining corpus of the demo zoo: Fashion-MNIST photographs with noisy, coarse captions.

A real CLIP meets a specialised task through web captions that rarely name the exact class and are
often wrong. The corpus imitates that, so that the pretrained model is a usable but clearly
improvable zero-shot starting point (a fine-tune on the labels beats it):

- ``p_fine`` (0.25): the article type under a synonym ("a photo of a sweater." for pullover), except
  that shop captions of tops use their words interchangeably: a t-shirt/top, pullover, coat or
  shirt is captioned with the words of any of the four, uniformly (``TOPS``), so the corpus holds
  no signal *within* the tops and the pretrained model separates them only by chance;
- ``p_noise`` (0.20): a *wrong* class, uniformly among the other nine (label noise);
- otherwise: only the coarse group ("a photo of footwear.", "a piece of clothing.").

Measured on the first build with exact names for every class (no ``TOPS`` rule): zero-shot 0.81,
too good a start for a fine-tune to improve by the 0.15 the demo's story needs.

Images are the train-split half ``fashion.corpus_indices()`` (disjoint from the fine-tunes' data).
Captions are drawn from ``numpy.random.SeedSequence([29, seed])``; each epoch reshuffles.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .fashion import corpus_indices, read_split, to_pixels

SYNONYMS = (("t-shirt", "top", "tee", "t-shirt/top"), ("trousers", "pants", "trouser"),
            ("pullover", "sweater", "jumper"), ("dress",), ("coat", "jacket"),
            ("sandal", "summer sandal"), ("shirt", "blouse"), ("sneaker", "trainer", "running shoe"),
            ("bag", "handbag", "purse"), ("ankle boot", "boot"))
# class -> coarse group names (what a shop caption or alt text says without the article type)
COARSE = (("top", "piece of clothing"), ("piece of clothing", "garment"), ("top", "warm garment"),
          ("piece of clothing", "garment"), ("piece of clothing", "warm garment"),
          ("shoe", "piece of footwear"), ("top", "piece of clothing"), ("shoe", "piece of footwear"),
          ("fashion accessory", "bag or accessory"), ("shoe", "piece of footwear"))
TOPS = (0, 2, 4, 6)     # t-shirt/top, pullover, coat, shirt: named interchangeably
PHRASES = ("a photo of a {}.", "a {}.", "a black and white photo of a {}.", "an image of a {}.",
           "product photo: a {}.", "a picture of a {}.")


def caption(label: int, rng: np.random.Generator, p_fine: float = 0.25, p_noise: float = 0.20) -> str:
    """One caption of an image of class ``label`` (0-9)."""
    u = rng.random()
    if u < p_noise:
        label = int((label + rng.integers(1, 10)) % 10)
        names = SYNONYMS[label]
    elif u < p_noise + p_fine:
        names = SYNONYMS[TOPS[rng.integers(len(TOPS))] if label in TOPS else label]
    else:
        names = COARSE[label]
    return PHRASES[rng.integers(len(PHRASES))].format(names[rng.integers(len(names))])


def fashion_caption_batches(batch_size: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Endless (images [B,3,28,28] in [0,1], captions) batches of the corpus (needs the dataset)."""
    images, labels = read_split("train")
    ids = corpus_indices()
    rng = np.random.default_rng(np.random.SeedSequence([29, int(seed)]))
    while True:
        order = ids[rng.permutation(len(ids))]
        for i in range(0, len(order) - batch_size + 1, batch_size):
            pick = order[i:i + batch_size]
            yield to_pixels(images[pick]), [caption(int(y), rng) for y in labels[pick]]
