"""The demo-zoo recipe: every checkpoint of the embedded default, rebuilt from seeds.

``build_zoo(out_dir, preset)`` trains, in order, and writes next to a ``manifest.toml``:

1. ``pretrained``: a miniature open_clip CLIP (config JSON written next to it, registered with
   ``open_clip.add_model_config``) trained contrastively on the procedural caption corpus
   (``explorer.data.synthetic``, clean rendering);
2. ``natural``: its vision tower fine-tuned with cross-entropy for the shifted rendering, the
   downstream domain of the story where the pretrained model is near chance (``shapes-mixed``:
   half ``shapes-shifted`` images, half clean replay so the clean domain is not forgotten);
3. ``tecoa``, ``fare``, ``caw``: robust vision towers from ``pretrained``, adversarially fine-tuned
   on the clean-style ``shapes`` images (the analogue of robust fine-tuning on ImageNet), saved like
   the public FARE/TeCoA releases (``model.visual`` keys only).

The demo's default evaluation task is ``shapes``: natural and robust fine-tunes both start from the
pretrained model and trade clean for robust accuracy there.

The vision tower of the demo is open_clip's ModifiedResNet: on 32 px shapes a tiny ViT trained for
minutes on a CPU learned colour but not shape (zero-shot shape accuracy at chance), while a
ResNet of 1.3M parameters reaches > 0.9 in the same time.

Presets: ``demo`` (the shipped zoo; minutes on a CPU) and ``micro`` (a tiny model and a few
steps of everything, same structure; seconds, for the tests).
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import open_clip
import torch

from explorer.config import eps_label
from explorer.data import get_task
from explorer.data.synthetic import caption_batches
from explorer.zoo import Manifest, ModelEntry

from . import METHODS, ROBUST_METHODS
from .common import FinetuneConfig, save_checkpoint, visual_state
from .pretrain import pretrain

log = logging.getLogger(__name__)

CORPUS = "synthetic captions (explorer.data.synthetic, clean style)"


@dataclass(frozen=True)
class ZooPreset:
    """Everything that defines a zoo; ``seed`` is added by ``build_zoo``."""

    arch: str                                   # open_clip model name (= config file stem)
    model_cfg: dict                             # open_clip model config (written as JSON)
    pretrain: FinetuneConfig                    # contrastive pretraining
    natural: FinetuneConfig                     # natural fine-tune of the vision tower
    robust: dict[str, FinetuneConfig] = field(default_factory=dict)  # method -> settings
    task: str = "shapes"                        # the demo's default evaluation task
    natural_task: str = "shapes-mixed"          # data of the natural fine-tune (shifted + replay)
    robust_task: str = "shapes"                 # data of the robust fine-tunes
    eval_n: int = 256                           # manifest default evaluation size
    eval_eps: float = 4 / 255                   # manifest default attack radius


def _resnet(embed: int, width: int, t_width: int, t_layers: int, t_heads: int, context: int = 16) -> dict:
    return {"embed_dim": embed,
            "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": width, "head_width": 16},
            "text_cfg": {"context_length": context, "vocab_size": 49408, "width": t_width,
                         "heads": t_heads, "layers": t_layers}}


def _demo() -> ZooPreset:
    # Trained at 8/255, evaluated at 4/255 (``eval_eps``): trained at 4/255 FARE kept the
    # pretrained model's clean accuracy (above the natural fine-tune's): no trade-off to show.
    eps = 8 / 255
    robust = FinetuneConfig(steps=200, batch_size=128, lr=5e-4, warmup=20, eps=eps, pgd_steps=3)
    return ZooPreset(
        arch="demo-clip", model_cfg=_resnet(64, 16, 64, 2, 2),
        pretrain=FinetuneConfig(steps=1000, batch_size=128, lr=2e-3, warmup=30, weight_decay=0.05),
        natural=FinetuneConfig(steps=400, batch_size=128, lr=1e-3, warmup=20),
        robust={"tecoa": robust, "fare": robust,
                "caw": replace(robust, pgd_steps=2, options={"a": 1.0, "b": 1.0})})


def _micro() -> ZooPreset:
    eps = 4 / 255
    robust = FinetuneConfig(steps=4, batch_size=16, lr=1e-3, warmup=1, eps=eps, pgd_steps=2, pool=64)
    return ZooPreset(
        arch="micro-clip", model_cfg=_resnet(16, 8, 8, 1, 1),
        pretrain=FinetuneConfig(steps=6, batch_size=16, lr=2e-3, warmup=1),
        natural=FinetuneConfig(steps=4, batch_size=16, lr=1e-3, warmup=1, pool=64),
        robust={"tecoa": robust, "fare": robust, "caw": replace(robust, options={"a": 1.0, "b": 1.0})},
        eval_n=64)


PRESETS = {"demo": _demo, "micro": _micro}


def build_zoo(out_dir: str | Path, preset: str = "demo", seed: int = 0, device: str = "cpu") -> Path:
    """Train the whole zoo from seeds and write checkpoints, config and manifest.

    Args:
        out_dir: folder of the zoo (created); existing files of the same names are replaced.
        preset: ``"demo"`` or ``"micro"``.
        seed: seed of every run (model init, data, PGD starts).
        device: torch device to train on.

    Returns: path of the written ``manifest.toml``.
    """
    if preset not in PRESETS:
        raise KeyError(f"unknown zoo preset {preset!r}; valid: {sorted(PRESETS)}")
    p = PRESETS[preset]()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cfg_path = out / f"{p.arch}.json"
    cfg_path.write_text(json.dumps(p.model_cfg, indent=2) + "\n")
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(seed)
    base = open_clip.create_model(p.arch, pretrained=None)
    tokenizer = open_clip.get_tokenizer(p.arch)

    entries: dict[str, ModelEntry] = {}
    pre_cfg = replace(p.pretrain, seed=seed, device=device)
    pretrain(base, tokenizer, caption_batches(pre_cfg.batch_size, seed), pre_cfg)
    meta = pre_cfg.metadata("contrastive", arch=p.arch, data=CORPUS)
    save_checkpoint(base.state_dict(), out / "pretrained.safetensors", meta)
    entries["pretrained"] = _entry(out, "pretrained", p.arch, "base", ["visual", "text"],
                                   {"method": "contrastive", "data": CORPUS, "seed": seed,
                                    "steps": pre_cfg.steps})

    runs = [("natural", p.natural)] + [(m, p.robust[m]) for m in ROBUST_METHODS if m in p.robust]
    for method, cfg in runs:
        robust = method != "natural"
        data = p.robust_task if robust else p.natural_task
        cfg = replace(cfg, seed=seed, device=device, data=data)
        model = copy.deepcopy(base)
        METHODS[method](model, tokenizer, get_task(data), cfg)
        meta = cfg.metadata(method, arch=p.arch, base="pretrained.safetensors")
        # Every fine-tune here tunes only the vision tower: ship only what changed.
        save_checkpoint(visual_state(model), out / f"{method}.safetensors", meta)
        prov = {"method": method, "data": f"{data} (train)", "seed": seed, "steps": cfg.steps}
        if robust:
            prov.update(eps=eps_label(cfg.eps), norm="Linf", pgd_steps=cfg.pgd_steps)
        entries[method] = _entry(out, method, p.arch, "robust" if robust else "natural", ["visual"], prov)

    defaults = {"base": "pretrained", "task": p.task, "eps": eps_label(p.eval_eps), "attack": "pgd-10",
                "n": p.eval_n}
    manifest = out / "manifest.toml"
    Manifest(manifest, defaults, entries).save(manifest, header=_header(preset, seed))
    log.info("zoo %r built in %.1f s -> %s", preset, time.perf_counter() - start, manifest)
    return manifest


def _entry(out: Path, name: str, arch: str, role: str, towers: list[str], provenance: dict) -> ModelEntry:
    return ModelEntry(name=name, role=role, arch=arch, weights=str(out / f"{name}.safetensors"),
                      arch_config=str(out / f"{arch}.json"), towers=tuple(towers), provenance=provenance)


def _header(preset: str, seed: int) -> str:
    return (f"# Demo zoo (preset {preset!r}, seed {seed}), written by explorer.finetune.recipe.build_zoo.\n"
            "# Paths are relative to this file. Rebuild: python -m explorer zoo build\n")
