"""Load a manifest entry straight into a flat float32 buffer (the engine's resident form).

Every float tensor is read from disk into its slice of the caller's buffer (``LazyCheckpoint``);
nothing else model-sized is allocated. Before the buffer is allocated, ``check_fits`` compares
its size (and, for a ``.pt``/``.bin`` read once for conversion, the file's size) with the free
host or device memory, so a model that cannot fit fails with one line before anything is read.

Rounding-only text towers: a low-precision file (fp16/bf16) whose text weights are exactly the
base's text weights rounded to that dtype (round-to-nearest: relative error <= 2^-11 for fp16,
2^-8 for bf16, per weight) is a visual fine-tune saved whole; its text tower is taken as the
base's, bit for bit, so it neither counts as a text-tower task vector nor moves the text head.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from explorer.core.taskvec import FlatLayout
from explorer.core.towers import is_vision

from .architecture import normalize_keys, validate_state_dict
from .checkpoints import CheckpointError
from .lazy import LazyCheckpoint, explorer_home, resolve_safetensors
from .manifest import ModelEntry

log = logging.getLogger(__name__)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass
class LoadReport:
    """What a load did: source file, seconds, dtypes seen, whether the text tower was rounding only."""

    name: str
    path: str
    seconds: float
    dtypes: tuple[str, ...]
    text_rounding_only: bool = False
    ints: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def free_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA's free bytes, or the host's ``MemAvailable``."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62   # unknown: do not refuse


def check_fits(nbytes: int, device: torch.device, what: str) -> None:
    """Raise ``CheckpointError`` when ``nbytes`` exceed the free memory of ``device``."""
    free = free_bytes(device)
    if nbytes > free:
        raise CheckpointError(f"{what} needs {nbytes / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB "
                              f"of {device.type} memory is free")


def _source_bytes(entry: ModelEntry) -> int:
    """Bytes a load reads whole into memory: a ``.pt``/``.bin`` not yet converted, else 0."""
    if not entry.is_local() or entry.weights.endswith(".safetensors"):
        return 0
    path = Path(entry.weights)
    return path.stat().st_size if path.exists() else 0


def load_flat(entry: ModelEntry, reference: Mapping[str, torch.Tensor], layout: FlatLayout,
              out: torch.Tensor, fill: torch.Tensor | None = None,
              cache_dir: str | None = None) -> LoadReport:
    """Write ``entry``'s float weights into ``out`` (flat, float32, ``layout`` order).

    Args:
        reference: the architecture's state dict (shapes/dtypes; ``meta`` tensors suffice).
        out: ``(layout.numel,)`` float32 on any device; on error its content is undefined.
        fill: flat weights for the keys the file lacks (a visual-only fine-tune takes the
            base's text tower); None: every float key must be in the file.

    Raises:
        CheckpointError: wrong architecture, missing keys, non-finite weights, truncated file.
    """
    t0 = time.perf_counter()
    if not (entry.is_local() or entry.weights.startswith("hf-hub:")):
        return _load_pretrained_tag(entry, reference, layout, out, fill, cache_dir, t0)
    check_fits(_source_bytes(entry), torch.device("cpu"), f"reading {Path(entry.weights).name}")
    ck = LazyCheckpoint(resolve_safetensors(entry.weights, cache_dir))
    raw_meta = ck.meta()
    sd = normalize_keys(raw_meta, reference)
    raw_of = dict(zip(sd, raw_meta))              # normalised key -> key in the file
    towers = tuple(entry.towers)
    if "text" in towers and not any(not is_vision(k) for k in sd):
        towers = tuple(t for t in towers if t != "text")   # a visual-only file behind a full entry
    validate_state_dict(sd, reference, entry.name, towers)
    if fill is None:
        missing = [k for k in layout.keys if k not in sd]
        if missing:
            raise CheckpointError(f"{entry.name}: the base model must hold both towers; missing {missing[:5]}")
    else:
        out.copy_(fill)
    text_low: list[tuple[int, int, torch.dtype]] = []
    for key, (a, b) in zip(layout.keys, layout.segments):
        if key not in sd:
            continue
        seg = ck.read(raw_of[key], out[a:b])
        if not bool(torch.isfinite(seg).all()):
            raise CheckpointError(f"{entry.name}: non-finite weights (NaN/Inf) in {key}")
        if not is_vision(key) and sd[key].dtype in _LOW_PRECISION:
            text_low.append((a, b, sd[key].dtype))
    rounding = fill is not None and bool(text_low) and all(
        torch.equal(out[a:b], fill[a:b].to(dt).float()) for a, b, dt in text_low)
    if rounding:
        for a, b, _ in text_low:
            out[a:b].copy_(fill[a:b])
        log.info("%s: text tower equals the base's rounded to %s; taken as the base's", entry.name,
                 text_low[0][2])
    ints = {k: ck.read(raw_of[k]) for k, v in sd.items() if not v.is_floating_point()}
    return LoadReport(entry.name, str(ck.path), time.perf_counter() - t0,
                      tuple(sorted({ck.info[r]["dtype"] for r in raw_of.values()})), rounding, ints)


def _load_pretrained_tag(entry, reference, layout, out, fill, cache_dir, t0) -> LoadReport:
    """An open_clip pretrained tag: open_clip builds the model (one extra copy, transient)."""
    from .architecture import load_weights

    sd = load_weights(entry, dict(reference), cache_dir)
    if fill is not None:
        out.copy_(fill)
    for key, (a, b) in zip(layout.keys, layout.segments):
        if key in sd:
            out[a:b].copy_(sd[key].reshape(-1))
    ints = {k: v for k, v in sd.items() if not v.is_floating_point()}
    return LoadReport(entry.name, entry.weights, time.perf_counter() - t0, ("open_clip",), False, ints)


def cache_dir_of(defaults: Mapping[str, object], manifest_path: Path | None) -> str | None:
    """The manifest's ``hf_cache`` (relative to its folder) or None for the hub's default cache."""
    raw = defaults.get("hf_cache")
    if not raw:
        return None
    p = Path(str(raw)).expanduser()
    return str(p if p.is_absolute() or manifest_path is None else (manifest_path.parent / p).resolve())


__all__ = ["LoadReport", "cache_dir_of", "check_fits", "explorer_home", "free_bytes", "load_flat"]
