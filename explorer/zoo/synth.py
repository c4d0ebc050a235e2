"""A scale fixture anyone can build offline: seeded random-init checkpoints in real release layouts.

``synth_zoo("ViT-B-32", DIR)`` writes, for any open_clip architecture (or a custom JSON config):

- ``base.safetensors``: the "pretrained" model, an open_clip full state dict;
- ``natural.safetensors`` and ``natural.bin``: a full fine-tune (the same weights, both formats);
- ``robust.pt``: a visual-only fine-tune inside ``{"vision_encoder_state_dict": ...}`` (the
  TeCoA/FARE release layout) and ``robust-visual.pt``, the same tensors unwrapped;
- ``robust-fp16.safetensors``: a full fp16 copy of the robust model, whose text tower is the
  base's rounded to fp16 (how whole-model fp16 releases of visual fine-tunes look);
- ``hub/``: a Hugging Face hub cache (``models--synth--<arch>-natural/{blobs,refs,snapshots}``)
  holding the natural model as ``open_clip_model.safetensors``, so ``hf-hub:synth/<arch>-natural``
  loads offline (``HF_HUB_OFFLINE=1``; the manifest's ``hf_cache = "hub"`` points at it);
- ``manifest.toml`` whose header says that every accuracy measured on this zoo is meaningless.

Fine-tunes are the base plus seeded Gaussian noise (std = ``scale`` x the tensor's std), so task
vectors are small and dense like real ones. Nothing is trained; nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from explorer.core.towers import VISION_PREFIX, is_vision, strip_vision

from .architecture import add_arch_config

log = logging.getLogger(__name__)

HEADER = """# SYNTHETIC ZOO ({arch}, seed {seed}): seeded RANDOM-INIT weights written by
# `python -m explorer zoo synth`. Every accuracy computed with these models is MEANINGLESS
# (chance level at best); the zoo exists to measure load time, memory and speed at real scale
# and to exercise the checkpoint layouts real releases use (full open_clip state dicts as
# .safetensors and .bin, visual-only .pt raw and inside vision_encoder_state_dict, an fp16 copy,
# an hf-hub cache)."""
HUB_REVISION = "5ca1ab1e" * 5


def _perturbed(sd: dict[str, torch.Tensor], scale: float, seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        if v.is_floating_point():
            std = float(v.std()) if v.numel() > 1 else 1.0
            v = v + torch.randn(v.shape, generator=g) * (scale * (std or 1.0))
        out[k] = v.contiguous()
    return out


def _write_hub(root: Path, repo: str, src: Path, arch: str) -> str:
    """Lay ``src`` out as the hub client caches ``repo`` (blobs + snapshot symlinks + refs/main)."""
    org, name = repo.split("/")
    base = root / f"models--{org}--{name}"
    snap = base / "snapshots" / HUB_REVISION
    for d in (base / "blobs", base / "refs", snap):
        d.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with open(src, "rb") as f:
        while block := f.read(1 << 23):
            h.update(block)
    blob = base / "blobs" / h.hexdigest()
    shutil.copyfile(src, blob)
    cfg_blob = base / "blobs" / "open_clip_config"
    cfg_blob.write_text(json.dumps({"model_cfg": arch, "preprocess_cfg": {}}))
    for link, target in (("open_clip_model.safetensors", blob), ("open_clip_config.json", cfg_blob)):
        p = snap / link
        p.unlink(missing_ok=True)
        p.symlink_to(Path("../..") / "blobs" / target.name)
    (base / "refs" / "main").write_text(HUB_REVISION)
    return f"hf-hub:{repo}"


def synth_zoo(arch: str, into: str | Path, seed: int = 0, arch_config: str | Path | None = None,
              scale: float = 0.02) -> Path:
    """Write the scale fixture for open_clip architecture ``arch`` into ``into``; returns the manifest.

    Args:
        arch: an open_clip model name (``ViT-B-32``, ``ViT-L-14``, ...) or the name of ``arch_config``.
        arch_config: optional open_clip JSON model config (copied next to the manifest).
        scale: fine-tune noise std relative to each tensor's std.

    Raises:
        ValueError: unknown architecture.
    """
    import open_clip

    root = Path(into).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    cfg_line = ""
    if arch_config:
        dst = root / f"{arch}.json"
        if Path(arch_config).resolve() != dst:
            shutil.copyfile(arch_config, dst)
        add_arch_config(dst, arch_config)
        cfg_line = f'arch_config = "{dst.name}"\n'
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {arch!r} (see open_clip.list_models())")
    torch.manual_seed(seed)
    base = {k: v.contiguous() for k, v in open_clip.create_model(arch, pretrained=None).state_dict().items()}
    meta = {"format": "pt", "synthetic": "random-init; accuracies meaningless"}
    save_file(base, str(root / "base.safetensors"), metadata=meta)
    natural = _perturbed(base, scale, seed + 1)
    save_file(natural, str(root / "natural.safetensors"), metadata=meta)
    torch.save(natural, root / "natural.bin")
    del natural
    visual = {strip_vision(k): v for k, v in _perturbed(base, 2 * scale, seed + 2, VISION_PREFIX).items()}
    torch.save({"vision_encoder_state_dict": visual}, root / "robust.pt")
    torch.save(visual, root / "robust-visual.pt")
    half = {k: v.half() if v.is_floating_point() else v for k, v in base.items() if not is_vision(k)}
    half.update({f"{VISION_PREFIX}{k}": v.half() if v.is_floating_point() else v for k, v in visual.items()})
    save_file(half, str(root / "robust-fp16.safetensors"), metadata=meta)
    del half, visual, base
    hub = _write_hub(root / "hub", f"synth/{arch}-natural", root / "natural.safetensors", arch)
    entries = [("pretrained", "base", "base.safetensors", ["visual", "text"]),
               ("natural", "natural", "natural.safetensors", ["visual", "text"]),
               ("natural_bin", "natural", "natural.bin", ["visual", "text"]),
               ("natural_hub", "natural", hub, ["visual", "text"]),
               ("robust", "robust", "robust.pt", ["visual"]),
               ("robust_raw", "robust", "robust-visual.pt", ["visual"]),
               ("robust_fp16", "robust", "robust-fp16.safetensors", ["visual", "text"])]
    lines = [HEADER.format(arch=arch, seed=seed), "[defaults]", 'base = "pretrained"', 'task = "shapes"',
             'attack = "pgd-3"', 'eps = "4/255"', "n = 16", 'hf_cache = "hub"']
    for name, role, weights, towers in entries:
        lines += ["", f"[models.{name}]", f'role = "{role}"', f'arch = "{arch}"']
        lines += [cfg_line.rstrip("\n")] if cfg_line else []
        lines += [f'weights = "{weights}"', f"towers = {json.dumps(towers)}", 'normalize = "clip"',
                  f"[models.{name}.provenance]", 'method = "synthetic random-init (meaningless accuracies)"',
                  f"seed = {seed}"]
    manifest = root / "manifest.toml"
    manifest.write_text("\n".join(lines) + "\n")
    log.info("wrote the %s scale fixture to %s", arch, root)
    return manifest
