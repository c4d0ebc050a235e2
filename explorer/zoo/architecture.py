"""An entry's open_clip architecture and the weights fitted to it: its config registered
(``register_arch``), a model created (``create_model``), and a checkpoint's tensors mapped onto the
model's keys (the key layouts of real robust checkpoints normalised), validated and cast
(``load_weights``, ``fit_weights``).

Checkpoints of the wrong architecture or with non-finite weights are refused (``CheckpointError``).
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from explorer.core.towers import is_vision

from .checkpoints import CheckpointError, read_checkpoint
from .layouts import keys_of
from .manifest import LOCAL_SUFFIXES, ModelEntry


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
        raise CheckpointError(f"{name}: {_keys(len(unknown))} not belong to this architecture, "
                              f"e.g. {unknown[:5]} (is it a checkpoint of another model?)")
    shapes = [f"{k}: {tuple(sd[k].shape)} vs {tuple(reference[k].shape)}"
              for k in sd if sd[k].shape != reference[k].shape]
    if shapes:
        raise CheckpointError(f"{name}: shape mismatch (checkpoint vs architecture) {shapes[:5]}")
    held = [k for k in reference if _tower(k) in towers]
    missing = sorted(k for k in held if k not in sd)
    if missing:
        raise CheckpointError(f"{name}: {_keys(len(missing), 'of the ' + '+'.join(towers) + ' tower(s)')} "
                              f"missing, e.g. {missing[:5]}")
    bad = [k for k, v in sd.items()   # meta stand-ins (lazy loads) are checked as they are read
           if v.is_floating_point() and v.device.type != "meta" and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{name}: non-finite weights (NaN/Inf) in {bad[:5]}")


def _keys(count: int, what: str = "") -> str:
    """``1 key does`` / ``3 keys do`` (with ``what``: ``1 key of the visual tower(s) is``)."""
    noun = "key" if count == 1 else "keys"
    if what:
        return f"{count} {noun} {what} {'is' if count == 1 else 'are'}"
    return f"{count} {noun} {'does' if count == 1 else 'do'}"


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
