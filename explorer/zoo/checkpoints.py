"""Checkpoint reading: safe loading (safetensors, or ``torch.load(weights_only=True)``), local or
from the Hugging Face hub, the wrappers real releases use peeled, and ``.pt`` -> ``.safetensors``.

Loading never unpickles arbitrary objects. Mapping the tensors onto a model's keys and validating
them against its architecture is ``architecture``'s part.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .layouts import keys_of

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: wrong architecture, missing keys, non-finite weights."""


def read_checkpoint(source: str, cache_dir: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (local or ``hf-hub:org/repo[/file]``), loaded safely."""
    if source.startswith("hf-hub:"):
        source = _hf_download(source[len("hf-hub:"):], cache_dir)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types; its text stays in the log
            log.info("%s: safetensors refused it: %s", path, exc)
            raise CheckpointError(f"{path} is not a readable safetensors file") from None
    return unwrap_state_dict(load_weights_only(path), str(path))


def load_weights_only(path: Path, mmap: bool = False) -> object:
    """``torch.load(path, weights_only=True)`` onto the CPU; a refusal is one line.

    ``mmap=True`` memory-maps a zip-format file (tensors paged in as read), falling back to a
    plain read for the legacy format, which cannot be mapped.

    Raises:
        CheckpointError: not a tensor file, or one that needs arbitrary unpickling (torch's own
            text, paragraphs that advise ``weights_only=False``, is logged only).
    """
    try:
        if mmap:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:   # legacy (non-zip) format cannot be memory-mapped
                pass
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        log.info("%s: torch.load(weights_only=True) refused it: %s", path, exc)
        raise CheckpointError(f"{path} could not be loaded with weights_only=True (not a tensor file, "
                              "or one that needs arbitrary unpickling, which is refused)") from None


def _hf_download(spec: str, cache_dir: str | None) -> str:
    """Resolve ``org/repo[/file]`` through the Hugging Face hub cache (offline when cached)."""
    from huggingface_hub import hf_hub_download, list_repo_files

    parts = spec.split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    if not filename:
        for candidate in ("open_clip_model.safetensors", "model.safetensors",
                          "open_clip_pytorch_model.bin", "pytorch_model.bin"):
            try:
                return hf_hub_download(repo, candidate, cache_dir=cache_dir)
            except Exception:  # try the next conventional name
                continue
        raise FileNotFoundError(f"hf-hub:{repo}: none of the conventional weight files found "
                                f"(files: {_safe_list(list_repo_files, repo)})")
    return hf_hub_download(repo, filename, cache_dir=cache_dir)


def _safe_list(fn, repo: str) -> list[str] | str:
    try:
        return fn(repo)
    except Exception:
        return "unavailable offline"


def unwrap_state_dict(obj: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Peel the ``wrapper`` layouts of ``layouts.LAYOUTS`` (``state_dict``, ``module``, ...).

    A wrapper dict may hold training metadata beside the state dict (an epoch, an optimizer
    state, a best-accuracy metric saved as a scalar tensor): the wrapper is peeled and what it
    held besides is logged as ignored. A wrapper that also holds a tensor of more than one
    element beside the state dict is ambiguous (weights inside and outside) and refused.

    Raises:
        CheckpointError: no state dict, no tensors inside, or weights beside a wrapper key.
    """
    for _ in range(4):
        if not isinstance(obj, dict):
            break
        key = next((k for k in keys_of("wrapper") if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        others = {k: v for k, v in obj.items() if k != key}
        big = sorted(str(k) for k, v in others.items() if isinstance(v, torch.Tensor) and v.numel() > 1)
        if big:
            raise CheckpointError(f"{where}: tensors {big[:5]} sit beside the {key!r} wrapper; which "
                                  f"are the weights is ambiguous (save the state dict alone)")
        if others:
            log.warning("%s: using %r; ignored beside it: %s", where, key,
                        ", ".join(f"{k} ({_describe(v)})" for k, v in others.items()))
        obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{where} holds no state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{where} holds no tensors")
    return tensors


def _describe(v: Any) -> str:
    """A short description of an ignored checkpoint item: a scalar's value, else its type."""
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return f"scalar tensor {v.item():g}"
    return type(v).__name__


def convert(src: str | Path, dst: str | Path) -> Path:
    """Re-save a ``.pt``/``.bin`` checkpoint as ``.safetensors`` (safe loading, wrappers peeled)."""
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"output must end in .safetensors, got {dst}")
    sd = read_checkpoint(str(src))
    for prefix in keys_of("strip"):     # save the plain names when every key carries a prefix
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dst),
              metadata={"converted_from": Path(src).name})
    return dst
