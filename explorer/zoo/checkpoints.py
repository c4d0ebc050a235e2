"""Checkpoint reading: safe loading (safetensors, or ``torch.load(weights_only=True)``), the
wrappers and key layouts real releases use, and validation against the architecture.

Loading never unpickles arbitrary objects, normalises the key layouts of real robust
checkpoints, and refuses checkpoints of the wrong architecture or with non-finite weights.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from explorer.core.towers import is_vision

from .layouts import keys_of
from .manifest import LOCAL_SUFFIXES, ModelEntry

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: wrong architecture, missing keys, non-finite weights."""


def add_arch_config(path: Path, shown: str | Path) -> None:
    """``open_clip.add_model_config(path)``, its JSON errors as one line naming ``shown``.

    Raises:
        ValueError: the file is not a JSON model config.
    """
    import open_clip

    # Parsed here first: open_clip keeps every path it was given and re-reads them all on each
    # later registration, so one bad file would break every registration after it.
    try:
        json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as exc:   # json.JSONDecodeError is a ValueError
        raise ValueError(f"architecture config {shown} is not a JSON model config: {exc}") from None
    open_clip.add_model_config(path)


def register_arch(entry: ModelEntry) -> None:
    """Make a custom architecture config known to open_clip under ``entry.arch``.

    Through open_clip's public ``add_model_config``, which names a config after its file: a
    file whose stem differs from the arch name is registered from a renamed copy (in a
    temporary folder, removed afterwards; open_clip keeps the config it read). An arch already
    known is left as it is.

    Raises:
        FileNotFoundError: the config file does not exist.
    """
    if not entry.arch_config:
        return
    import open_clip

    cfg_path = Path(entry.arch_config)
    if not cfg_path.exists():
        raise FileNotFoundError(f"architecture config {cfg_path} of {entry.name!r} does not exist")
    if entry.arch in open_clip.list_models():
        return
    if cfg_path.stem == entry.arch:
        add_arch_config(cfg_path, cfg_path)
        return
    with tempfile.TemporaryDirectory(prefix="explorer-arch-") as tmp:
        copy = Path(tmp) / f"{entry.arch}.json"
        shutil.copyfile(cfg_path, copy)
        add_arch_config(copy, cfg_path)


class _DropRandomInitWarning(logging.Filter):
    """open_clip's ``create_model(pretrained=None)`` warns "No pretrained weights loaded ...
    Model initialized randomly." on the root logger; ours always loads weights right after."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded for model")


def create_model(entry: ModelEntry, device: str | torch.device = "cpu"):
    """An open_clip model of the entry's architecture with random weights, and its tokenizer.

    Raises:
        CheckpointError: open_clip knows no such architecture.
    """
    import open_clip

    register_arch(entry)
    if entry.arch not in open_clip.list_models():
        raise CheckpointError(f"unknown open_clip architecture {entry.arch!r} for {entry.name!r}")
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model(entry.arch, pretrained=None, device=device)
    finally:
        logging.getLogger().removeFilter(quiet)
    model.eval()
    return model, open_clip.get_tokenizer(entry.arch)


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


def normalize_keys(sd: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a checkpoint's keys onto the model's (``reference``): strip the ``strip`` prefixes the
    model does not know (``module.``), then add a ``tower`` prefix to a one-tower dict (``visual.``)."""
    out = {}
    for k, v in sd.items():
        for prefix in keys_of("strip"):
            if k.startswith(prefix) and k not in reference:
                k = k[len(prefix):]
        out[k] = v
    # A tower-only dict: its keys fit under the tower's prefix better than at the top level
    # (a few names, e.g. ``positional_embedding``, exist in both towers).
    for prefix in keys_of("tower"):
        if sum(f"{prefix}{k}" in reference for k in out) > sum(k in reference for k in out):
            return {f"{prefix}{k}": v for k, v in out.items()}
    return out


def validate_state_dict(sd: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
                        name: str, towers: tuple[str, ...]) -> None:
    """Raise ``CheckpointError`` naming keys that are unknown, mis-shaped, missing or non-finite."""
    unknown = sorted(k for k in sd if k not in reference)
    if unknown:
        raise CheckpointError(f"{name}: {len(unknown)} keys do not belong to this architecture, "
                              f"e.g. {unknown[:5]} (is it a checkpoint of another model?)")
    shapes = [f"{k}: {tuple(sd[k].shape)} vs {tuple(reference[k].shape)}"
              for k in sd if sd[k].shape != reference[k].shape]
    if shapes:
        raise CheckpointError(f"{name}: shape mismatch (checkpoint vs architecture) {shapes[:5]}")
    held = [k for k in reference if _tower(k) in towers]
    missing = sorted(k for k in held if k not in sd)
    if missing:
        raise CheckpointError(f"{name}: {len(missing)} keys of the {'+'.join(towers)} tower(s) are "
                              f"missing, e.g. {missing[:5]}")
    bad = [k for k, v in sd.items()   # meta stand-ins (lazy loads) are checked as they are read
           if v.is_floating_point() and v.device.type != "meta" and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{name}: non-finite weights (NaN/Inf) in {bad[:5]}")


def _tower(key: str) -> str:
    return "visual" if is_vision(key) else "text"


def load_weights(entry: ModelEntry, reference: dict[str, torch.Tensor] | None = None,
                 cache_dir: str | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors keyed like the model's state dict (only the towers it holds).

    ``reference`` is a state dict of the architecture (random weights are fine); it is made
    from the entry when not given. Open_clip pretrained tags are loaded through open_clip.
    """
    if reference is None:
        reference = create_model(entry)[0].state_dict()
    if entry.is_local() or entry.weights.startswith("hf-hub:"):
        raw = read_checkpoint(entry.weights, cache_dir)
    else:
        import open_clip
        register_arch(entry)
        tags = open_clip.list_pretrained_tags_by_model(entry.arch)
        if entry.weights not in tags:   # never hand open_clip a path (or junk) as a tag
            raise CheckpointError(f"{entry.name!r}: weights {entry.weights!r} is not a checkpoint file "
                                  f"({', '.join(LOCAL_SUFFIXES)}), an hf-hub: id, or a pretrained tag of "
                                  f"{entry.arch} (tags: {', '.join(tags) or 'none'})")
        raw = open_clip.create_model(entry.arch, pretrained=entry.weights, cache_dir=cache_dir).state_dict()
    return fit_weights(entry, raw, reference)


def fit_weights(entry: ModelEntry, raw: dict[str, torch.Tensor],
                reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors mapped onto the model's keys, validated, cast to the model's dtypes.

    Raises:
        CheckpointError: unknown, mis-shaped, missing or non-finite weights (``validate_state_dict``).
    """
    sd = normalize_keys(raw, reference)
    towers = tuple(entry.towers)
    if "text" in towers and not any(_tower(k) == "text" for k in sd):
        towers = tuple(t for t in towers if t != "text")   # a visual-only file behind a full entry
    validate_state_dict(sd, reference, entry.name, towers)
    return {k: v.to(reference[k].dtype) if v.is_floating_point() else v for k, v in sd.items()}


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
