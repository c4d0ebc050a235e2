"""The synthetic zero-shot demo tasks, their captions and the pretraining caption corpus.

The images are procedural scenes (``synthetic_scenes``). Captions name a varying subset of the
factors in varied phrasings; the shape is named in most of them, sometimes alone ("a star"). The
prompt templates of the tasks are phrasings that occur in the captions, used as prompt ensembles.

Randomness: each (stream, split, seed) has its own ``numpy.random.SeedSequence``;
the pretraining corpus (stream ``corpus``), task "train" and task "test" streams never share
a seed, so "test" is held out from everything that trains.

Nested evaluation sets: a task's "test" split is one fixed seeded order of images, drawn in
blocks of ``BLOCK`` (block b from its own generator: ``stream_rng(stream, split, seed, b)``), so
``load("test", k, seed)`` is the first k images of ``load("test", m, seed)`` for every k <= m: a
point at n=64 is the first 64 images of the point at n=256. Block 0 is the draw ``n=BLOCK``
always had. Each whole block is class-balanced (counts within 1 of BLOCK/classes); a prefix of
a block is a seeded random subset of it. The "train" split stays one draw of n (the shipped zoo
was trained and its calibration scores cached on those draws).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .synthetic_scenes import (
    BACKGROUNDS,
    COLORS,
    PATTERNS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scenes,
    check_render_fits,
    render,
    sample_scenes,
)
from .task import Task, register_task

SHAPE_TEMPLATES = ("a {}.", "a photo of a {}.", "an image of a {}.", "a picture of a {}.",
                   "a drawing of a {}.", "there is a {}.")
COLOR_TEMPLATES = ("something {}.", "a {} shape.", "a {} object.", "the color is {}.")
_STREAMS = {"corpus": 1, "shapes": 2, "colors": 3, "shapes-shifted": 4, "examples": 5, "shapes-mixed": 6}
_SPLITS = {"train": 11, "test": 23, "corpus": 37}

BLOCK = 128        # images per independently seeded block of a nested split


def stream_rng(stream: str, split: str, seed: int, block: int = 0) -> np.random.Generator:
    """Independent generator per (stream, split, seed, block): disjoint streams never share draws.

    Block 0 is the generator every split always had; blocks >= 1 extend a nested split.
    """
    entropy = [_STREAMS[stream], _SPLITS[split], int(seed)] + ([int(block)] if block else [])
    return np.random.default_rng(np.random.SeedSequence(entropy))


def nested_load(block_loader, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of a split drawn in blocks: ``block_loader(b, size)`` renders block
    ``b`` (``size`` = ``BLOCK``; a single block of exactly ``n`` for the "train" split).

    Shape: returns [n, 3, 32, 32] in [0, 1] and [n] int64.
    """
    if split == "train":
        return block_loader(0, n)
    xs, ys = zip(*(block_loader(b, BLOCK) for b in range(-(-n // BLOCK))))
    return torch.cat(xs)[:n], torch.cat(ys)[:n]

# ---- captions
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _describe(i: int, scenes: Scenes, rng: np.random.Generator) -> str:
    """One caption naming a random subset of the factors of scene ``i``."""
    shape, colour = SHAPES[scenes.shape[i]], list(COLORS)[scenes.color[i]]
    pattern, size = PATTERNS[scenes.pattern[i]], SIZES[scenes.size[i]]
    bg, pos = list(BACKGROUNDS)[scenes.background[i]], POSITIONS[scenes.position[i]]
    r = rng.random(9)
    if r[0] < 0.45:  # a single factor, alone (mostly the shape: the main concept)
        if r[1] < 0.8:
            return SHAPE_TEMPLATES[rng.integers(len(SHAPE_TEMPLATES))].format(shape)
        return COLOR_TEMPLATES[rng.integers(len(COLOR_TEMPLATES))].format(colour)
    named_shape = r[1] < 0.9
    adjs = [a for a, keep in ((size, r[2] < 0.3), (pattern, r[3] < 0.3 and pattern != "solid"),
                              (colour, r[4] < 0.35)) if keep]
    noun = shape if named_shape else ("shape", "object", "thing")[rng.integers(3)]
    if not named_shape and not adjs:
        adjs = [colour]
    phrase = " ".join(adjs + [noun])
    if r[5] < 0.2 and colour in adjs and named_shape:  # colour after the noun
        phrase = " ".join([a for a in adjs if a != colour] + [noun]) + f" that is {colour}"
    tails = []
    if r[6] < 0.25:
        tails.append(f" on a {bg} background" if rng.random() < 0.5 else f" on {bg}")
    if r[7] < 0.25:
        tails.append(" in the center" if pos == "center" else
                     (f" on the {pos}" if pos in ("left", "right") else f" at the {pos}"))
    lead = ("", "a photo of ", "an image of ", "a picture of ", "a drawing of ", "there is ")[
        rng.integers(6)]
    return f"{lead}{_article(phrase)} {phrase}{''.join(tails)}."


def captions(scenes: Scenes, rng: np.random.Generator) -> list[str]:
    """A caption for every scene (random factor subsets and phrasings drawn from ``rng``)."""
    return [_describe(i, scenes, rng) for i in range(len(scenes))]


def caption_batches(batch_size: int, seed: int = 0, style: str = "clean"
                    ) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Endless stream of (images [B,3,32,32] in [0,1], captions) from the pretraining corpus.

    The stream ``corpus`` is disjoint from every task split.
    """
    rng = stream_rng("corpus", "corpus", seed)
    while True:
        scenes = sample_scenes(batch_size, rng)
        yield render(scenes, style), captions(scenes, rng)


# ---- tasks
def _loader(stream: str, factor: str, style: str):
    def load(split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        check_render_fits(n)

        def block(b: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
            scenes = sample_scenes(size, stream_rng(stream, split, seed, b), balance=factor)
            return render(scenes, style), torch.from_numpy(getattr(scenes, factor).astype(np.int64))
        return nested_load(block, split, n)
    return load


def _shapes() -> Task:
    return Task("shapes", SHAPES, SHAPE_TEMPLATES, _loader("shapes", "shape", "clean"),
                splits=("train", "test"), description="10 procedural shapes, clean rendering")


def _colors() -> Task:
    return Task("colors", tuple(COLORS), COLOR_TEMPLATES, _loader("colors", "color", "clean"),
                splits=("train", "test"), description="8 colours of procedural shapes")


def _shapes_shifted() -> Task:
    return Task("shapes-shifted", SHAPES, SHAPE_TEMPLATES,
                _loader("shapes-shifted", "shape", "shifted"), splits=("train", "test"),
                description="the 10 shapes on noisy, cluttered backgrounds with new textures")


def _mixed_loader(split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Half clean, half shifted renderings of fresh scenes (per block), shuffled (seeded)."""
    check_render_fits(n)

    def block(b: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = stream_rng("shapes-mixed", split, seed, b)
        scenes = sample_scenes(size, rng, balance="shape")
        half = size // 2
        x = torch.cat([render(_subset(scenes, slice(0, half), 0), "clean"),
                       render(_subset(scenes, slice(half, size), 1), "shifted")])
        order = torch.from_numpy(rng.permutation(size))
        return x[order], torch.from_numpy(scenes.shape.astype(np.int64))[order]
    return nested_load(block, split, n)


def _subset(scenes: Scenes, idx: slice, offset: int) -> Scenes:
    """Rows ``idx`` of the factors, with the continuous seed moved by ``offset``."""
    fields = {f: getattr(scenes, f)[idx] for f in scenes.__dataclass_fields__ if f != "seed"}
    return Scenes(**fields, seed=scenes.seed + offset)


def _shapes_mixed() -> Task:
    return Task("shapes-mixed", SHAPES, SHAPE_TEMPLATES, _mixed_loader, splits=("train", "test"),
                description="the 10 shapes, half clean and half shifted renderings")


register_task("shapes-mixed", _shapes_mixed)
register_task("shapes", _shapes)
register_task("colors", _colors)
register_task("shapes-shifted", _shapes_shifted)


def render_examples(out_dir: str | Path, n: int = 12, seed: int = 0, scale: int = 1) -> list[Path]:
    """Write ``n`` example PNGs named ``<shape>_<colour>.png`` (distinct shapes first).

    ``scale`` > 1 upscales with nearest neighbour (for docs); the default keeps the corpus'
    own 32x32 pixels, which is what the models see.
    """
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = stream_rng("examples", "test", seed)
    scenes = sample_scenes(n, rng)
    # distinct (shape, colour) pairs: shape i % 10 with colour 3i % 8
    scenes = Scenes(shape=np.arange(n) % len(SHAPES), color=(3 * np.arange(n) + 1) % len(COLORS),
                    pattern=scenes.pattern, background=scenes.background, size=np.ones(n, np.int64),
                    position=np.zeros(n, np.int64), seed=scenes.seed)
    imgs = render(scenes, "clean")
    paths = []
    for i in range(n):
        arr = (imgs[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        arr = arr.repeat(scale, 0).repeat(scale, 1)
        path = out / f"{SHAPES[scenes.shape[i]]}_{list(COLORS)[scenes.color[i]]}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths
