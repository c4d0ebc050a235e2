"""Procedural scenes: their factors, seeded sampling and vectorised rendering to 32x32 RGB images.

Every image is a 32x32 RGB scene of one shape with independent factors: shape, colour,
fill pattern, background, size and position (plus jitter: rotation, colour, offset).
Rendering is vectorised in torch at 2x supersampling (then 2x2 average pooling), so
10k images take a few seconds on a CPU.

Two rendering styles:

- ``clean``: flat grey-level backgrounds, solid/striped/dotted/checkered fills. The
  contrastive pretraining corpus and the tasks ``shapes`` and ``colors`` use it.
- ``shifted``: colour-noise or gradient backgrounds, clutter strokes behind the shape,
  new fill textures (noise, gradient) and pixel noise. ``shapes-shifted`` uses it: the
  pretrained model is weaker there, which is what natural fine-tuning fixes.

The tasks, captions and pretraining corpus built on these scenes are in ``synthetic_tasks``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 32          # image side in pixels
_SS = 2            # supersampling factor
SHAPES = ("circle", "square", "triangle", "star", "cross",
          "heart", "diamond", "ring", "hexagon", "crescent")
COLORS = {
    "red": (0.90, 0.10, 0.10), "green": (0.10, 0.72, 0.20), "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.10), "purple": (0.58, 0.20, 0.80), "orange": (1.00, 0.55, 0.05),
    "cyan": (0.10, 0.85, 0.90), "pink": (1.00, 0.50, 0.75),
}
PATTERNS = ("solid", "striped", "dotted", "checkered")
BACKGROUNDS = {"black": 0.06, "gray": 0.50, "white": 0.94}
SIZES = ("small", "large")
POSITIONS = ("center", "left", "right", "top", "bottom")
_POS_DIR = np.array([(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)], dtype=np.float32)


@dataclass(frozen=True)
class Scenes:
    """Factor values of ``n`` scenes (integer indices into the factor tuples above)."""

    shape: np.ndarray
    color: np.ndarray
    pattern: np.ndarray
    background: np.ndarray
    size: np.ndarray
    position: np.ndarray
    seed: int  # seed of everything continuous (jitter, textures, noise)

    def __len__(self) -> int:
        return len(self.shape)


def _balanced(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels in [0, k), every class count within 1 of n/k, in random order."""
    return rng.permutation(np.arange(n) % k)


def sample_scenes(n: int, rng: np.random.Generator, balance: str = "shape") -> Scenes:
    """Draw ``n`` scenes; the factor named by ``balance`` gets exactly balanced classes."""
    draw = {
        "shape": lambda: rng.integers(0, len(SHAPES), n),
        "color": lambda: rng.integers(0, len(COLORS), n),
    }
    shape = _balanced(n, len(SHAPES), rng) if balance == "shape" else draw["shape"]()
    color = _balanced(n, len(COLORS), rng) if balance == "color" else draw["color"]()
    return Scenes(shape=shape, color=color,
                  pattern=rng.integers(0, len(PATTERNS), n),
                  background=rng.integers(0, len(BACKGROUNDS), n),
                  size=rng.integers(0, len(SIZES), n),
                  position=rng.integers(0, len(POSITIONS), n),
                  seed=int(rng.integers(0, 2**31 - 1)))


# ---- shapes: boolean masks over normalised coordinates (u right, v down, shape in ~unit disk)
def _star(u, v):
    rho, phi = torch.hypot(u, v), torch.atan2(v, u)
    k = torch.frac((phi + math.pi / 2) * 5 / (2 * math.pi) + 10.0)
    return rho <= 0.42 + 0.58 * (2 * k - 1).abs()


def _heart(u, v):
    x, y = u * 1.2, -v * 1.2 + 0.15
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0


_SHAPE_FNS = {
    "circle": lambda u, v: u * u + v * v <= 0.81,
    "square": lambda u, v: torch.maximum(u.abs(), v.abs()) <= 0.75,
    "triangle": lambda u, v: (v <= 0.7) & (u.abs() <= 0.95 * (v + 0.9) / 1.6),
    "star": _star,
    "cross": lambda u, v: ((u.abs() <= 0.28) & (v.abs() <= 0.92)) | ((v.abs() <= 0.28) & (u.abs() <= 0.92)),
    "heart": _heart,
    "diamond": lambda u, v: u.abs() / 0.72 + v.abs() <= 1.0,
    "ring": lambda u, v: (u * u + v * v <= 0.85) & (u * u + v * v >= 0.27),
    "hexagon": lambda u, v: torch.maximum(u.abs() * 0.866 + v.abs() * 0.5, v.abs()) <= 0.8,
    "crescent": lambda u, v: (u * u + v * v <= 0.85) & ((u - 0.45) ** 2 + (v + 0.1) ** 2 >= 0.55),
}


def _grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates of the supersampled grid, in output-pixel units. Shape [1,S,S]."""
    s = SIZE * _SS
    c = (torch.arange(s, dtype=torch.float32) + 0.5) / _SS
    return c.view(1, 1, s).expand(1, s, s), c.view(1, s, 1).expand(1, s, s)


def _masks(scenes: Scenes, jit: np.random.Generator) -> torch.Tensor:
    """Shape coverage masks at supersampled resolution. Shape: [N, S, S] bool."""
    n = len(scenes)
    radius = np.where(scenes.size == 0, jit.uniform(8.0, 10.0, n), jit.uniform(11.0, 13.5, n))
    offset = np.clip(15.5 - radius, 2.5, 7.0)
    centre = 16 + _POS_DIR[scenes.position] * offset[:, None] + jit.uniform(-1.2, 1.2, (n, 2))
    angle = jit.uniform(-0.15, 0.15, n)
    gx, gy = _grid(n)
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32)).view(-1, 1, 1)
    dx, dy = (gx - t(centre[:, 0])) / t(radius), (gy - t(centre[:, 1])) / t(radius)
    cos, sin = t(np.cos(angle)), t(np.sin(angle))
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    out = torch.zeros(u.shape, dtype=torch.bool)
    for k, name in enumerate(SHAPES):
        idx = torch.from_numpy(np.flatnonzero(scenes.shape == k))
        if len(idx):
            out[idx] = _SHAPE_FNS[name](u[idx], v[idx])
    return out


def _pattern(scenes: Scenes, jit: np.random.Generator) -> torch.Tensor:
    """Where the fill uses its second tone (stripes, dots, checks). Shape: [N, S, S] bool."""
    n = len(scenes)
    gx, gy = _grid(n)
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32)).view(-1, 1, 1)
    px, py = gx + t(jit.uniform(0, 4, n)), gy + t(jit.uniform(0, 4, n))
    slope = t(jit.choice([-1.0, 0.0, 1.0], n))
    stripes = torch.remainder(px + slope * py, 4.0) < 2.0
    dots = (torch.remainder(px, 4.0) - 2) ** 2 + (torch.remainder(py, 4.0) - 2) ** 2 < 1.3
    checks = (torch.floor(px / 3) + torch.floor(py / 3)).remainder(2) == 0
    pat = torch.from_numpy(scenes.pattern).view(-1, 1, 1)
    return ((pat == 1) & stripes) | ((pat == 2) & dots) | ((pat == 3) & checks)


def _rgb(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float32)).view(-1, 3, 1, 1)


def _clean_background(scenes: Scenes, jit: np.random.Generator) -> torch.Tensor:
    level = np.array(list(BACKGROUNDS.values()), dtype=np.float32)[scenes.background]
    level = level + jit.uniform(-0.04, 0.04, len(scenes))
    return _rgb(np.repeat(level[:, None], 3, 1)).expand(-1, 3, SIZE * _SS, SIZE * _SS).clone()


def _shifted_background(scenes: Scenes, jit: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """Colour noise or a two-colour gradient, with random clutter strokes on top."""
    n = len(scenes)
    gx, gy = _grid(n)
    base, other = _rgb(jit.uniform(0, 1, (n, 3))), _rgb(jit.uniform(0, 1, (n, 3)))
    theta = torch.from_numpy(jit.uniform(0, 2 * math.pi, n).astype(np.float32)).view(-1, 1, 1, 1)
    ramp = (0.5 + (torch.cos(theta) * (gx - 16) + torch.sin(theta) * (gy - 16)) / 32).clamp(0, 1)
    gradient = base * (1 - ramp) + other * ramp
    noise = (base + 0.22 * torch.randn(n, 3, SIZE, SIZE, generator=gen)).repeat_interleave(_SS, 2)
    noise = noise.repeat_interleave(_SS, 3)
    use_noise = torch.from_numpy(jit.random(n) < 0.5).view(-1, 1, 1, 1)
    bg = torch.where(use_noise, noise, gradient)
    for _ in range(5):  # clutter: thin random bars of random colours
        cx, cy = jit.uniform(0, SIZE, n), jit.uniform(0, SIZE, n)
        horiz = jit.random(n) < 0.5
        hw = np.where(horiz, jit.uniform(3, 9, n), jit.uniform(0.5, 1.2, n))
        hh = np.where(horiz, jit.uniform(0.5, 1.2, n), jit.uniform(3, 9, n))
        t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32)).view(-1, 1, 1)
        bar = ((gx - t(cx)).abs() <= t(hw)) & ((gy - t(cy)).abs() <= t(hh))
        bg = torch.where(bar.unsqueeze(1), _rgb(jit.uniform(0, 1, (n, 3))), bg)
    return bg


def render(scenes: Scenes, style: str = "clean") -> torch.Tensor:
    """Render scenes to images.

    Args:
        scenes: factor values (and the seed of the continuous jitter).
        style: ``"clean"`` or ``"shifted"`` (see the module docstring).

    Shape: returns [N, 3, 32, 32] float32 in [0, 1].
    """
    if style not in ("clean", "shifted"):
        raise ValueError(f"style must be 'clean' or 'shifted', got {style!r}")
    jit = np.random.default_rng(scenes.seed)
    gen = torch.Generator().manual_seed(scenes.seed)
    n = len(scenes)
    mask = _masks(scenes, jit).unsqueeze(1)
    second = _pattern(scenes, jit).unsqueeze(1)
    colour = np.array(list(COLORS.values()), dtype=np.float32)[scenes.color]
    colour = _rgb(np.clip(colour + jit.normal(0, 0.035, (n, 3)), 0, 1))
    fill = torch.where(second, colour * 0.42, colour)
    if style == "clean":
        bg = _clean_background(scenes, jit)
    else:
        bg = _shifted_background(scenes, jit, gen)
        # new fill textures: per-pixel brightness noise or a brightness ramp
        tex = 0.6 + 0.5 * torch.rand(n, 1, SIZE * _SS, SIZE * _SS, generator=gen)
        gx, _ = _grid(n)
        ramp = (0.55 + 0.5 * gx / SIZE).unsqueeze(1)
        kind = torch.from_numpy(jit.integers(0, 3, n)).view(-1, 1, 1, 1)
        fill = torch.where(kind == 1, colour * tex, torch.where(kind == 2, colour * ramp, fill))
    img = F.avg_pool2d(torch.where(mask, fill, bg), _SS)
    if style == "shifted":
        img = img + 0.05 * torch.randn(img.shape, generator=gen)
    return img.clamp_(0, 1)


# Peak host bytes ``render`` needs per image (measured: ~160 KiB clean, ~300 KiB shifted, at
# 32 px with 2x supersampling), rounded up: a bound checked before rendering ``n`` images.
RENDER_BYTES_PER_IMAGE = 320 * 1024


def check_render_fits(n: int) -> None:
    """Refuse a render of ``n`` images that would not fit the free host memory.

    Raises:
        ValueError: ``n * RENDER_BYTES_PER_IMAGE`` exceeds the host's available memory.
    """
    from explorer.zoo.flatload import free_bytes  # lazy: the data package stays light to import
    need, free = n * RENDER_BYTES_PER_IMAGE, free_bytes(torch.device("cpu"))
    if need > free:
        raise ValueError(f"n={n} synthetic images need about {need / 2**30:.1f} GiB of host memory to "
                         f"render, but {free / 2**30:.1f} GiB is free; use a smaller n")
