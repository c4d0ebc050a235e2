"""The demo-zoo recipe: every checkpoint of the embedded default, rebuilt from seeds.

``build_zoo(out_dir, preset)`` trains, in order, and writes next to a ``manifest.toml``:

1. ``pretrained``: a miniature open_clip CLIP (config JSON written next to it, registered with
   ``open_clip.add_model_config``) trained contrastively on the preset's caption corpus;
2. ``natural``: its vision tower fine-tuned with cross-entropy on the labelled task;
3. ``tecoa``, ``fare``, ``caw``: robust vision towers from ``pretrained``, adversarially fine-tuned
   (the analogue of robust fine-tuning on ImageNet), saved like the public FARE/TeCoA releases
   (``model.visual`` keys only).

Presets (``explorer.finetune.presets``):

- ``fashion`` (``assets/zoo-fashion``, the shipped default): a ViT on Fashion-MNIST photographs. The corpus
  is half the train split with noisy, coarse captions (``explorer.data.fashion_corpus``); the
  fine-tunes use the other, labelled half (``fashion-train``); the default task ``fashion`` is a
  held-out subset of the test split, written to ``assets/data/`` by the build, with the held-out
  example photographs in ``assets/examples/``. Needs Debian's ``dataset-fashion-mnist``.
- ``shapes`` (``assets/zoo``, the test suite's fixture zoo): a ModifiedResNet on
  procedural shapes. The natural fine-tune learns the shifted rendering (``shapes-mixed``), the
  robust ones the clean ``shapes``; on 32 px shapes a tiny ViT trained for minutes on a CPU learned
  colour but not shape, hence the ResNet there.
- ``micro``: a tiny model and a few steps of everything, same structure (seconds, for the tests).
"""
from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import open_clip
import torch

from explorer.config import eps_label
from explorer.data import get_task
from explorer.data.synthetic_tasks import caption_batches
from explorer.zoo import Manifest, ModelEntry

from . import METHODS, ROBUST_METHODS
from .common import save_checkpoint, visual_state
from .natural import tuned_towers
from .presets import PRESETS, ExtraTask, ZooPreset
from .pretrain import pretrain

log = logging.getLogger(__name__)

CORPUS = "synthetic captions (explorer.data.synthetic_tasks, clean style)"
FASHION_CORPUS = ("Fashion-MNIST train photographs (30,000, disjoint from the fine-tunes' 30,000) with "
                  "noisy, coarse captions (explorer.data.fashion_corpus: 25% class synonym, tops' words "
                  "interchangeable, 20% wrong class, else coarse group)")
ASSETS = Path(__file__).resolve().parents[2] / "assets"


def _corpus(p: ZooPreset, batch_size: int, seed: int) -> tuple[Iterator, str]:
    if p.corpus == "fashion":
        from explorer.data.fashion_corpus import fashion_caption_batches
        return fashion_caption_batches(batch_size, seed), FASHION_CORPUS
    return caption_batches(batch_size, seed), CORPUS


def default_folder(preset: str) -> Path:
    """Where ``zoo build --preset PRESET`` writes by default (``assets/<folder>``)."""
    return ASSETS / PRESETS[preset]().folder


def build_zoo(out_dir: str | Path, preset: str = "shapes", seed: int = 0, device: str = "cpu") -> Path:
    """Train the whole zoo from seeds and write checkpoints, config and manifest.

    Args:
        out_dir: folder of the zoo (created); existing files of the same names are replaced.
        preset: a name of ``explorer.finetune.presets.PRESETS`` (``fashion``, ``shapes``, ``micro``).
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
    if p.task == "fashion":  # the shipped evaluation subset and examples: test split, never trained on
        from explorer.data.fashion import write_calibration_subset, write_eval_subset, write_examples
        # The shipped default zoo's examples are the app's assets/examples; any other build keeps its own.
        shipped = out.resolve() == (ASSETS / "zoo-fashion").resolve()
        examples = write_examples(ASSETS / "examples" if shipped else out / "examples")
        log.info("wrote %s, %s and %d examples", write_eval_subset(), write_calibration_subset(), len(examples))
    cfg_path = out / f"{p.arch}.json"
    cfg_path.write_text(json.dumps(p.model_cfg, indent=2) + "\n")
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(seed)
    base = open_clip.create_model(p.arch, pretrained=None)
    tokenizer = open_clip.get_tokenizer(p.arch)

    entries: dict[str, ModelEntry] = {}
    pre_cfg = replace(p.pretrain, seed=seed, device=device)
    batches, corpus = _corpus(p, pre_cfg.batch_size, seed)
    t0 = time.perf_counter()
    pretrain(base, tokenizer, batches, pre_cfg)
    log.info("pretrained in %.1f s", time.perf_counter() - t0)
    meta = pre_cfg.metadata("contrastive", arch=p.arch, data=corpus)
    save_checkpoint(base.state_dict(), out / "pretrained.safetensors", meta)
    entries["pretrained"] = _entry(out, "pretrained", p.arch, "base", ["visual", "text"],
                                   {"method": "contrastive", "data": corpus, "seed": seed,
                                    "steps": pre_cfg.steps, "seconds": round(time.perf_counter() - t0)})

    runs = [("natural", p.natural)] + [(m, p.robust[m]) for m in ROBUST_METHODS if m in p.robust]
    for method, cfg in runs:
        robust = method != "natural"
        data = p.robust_task if robust else p.natural_task
        cfg = replace(cfg, seed=seed, device=device, data=data)
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        METHODS[method](model, tokenizer, get_task(data), cfg)
        log.info("%s in %.1f s", method, time.perf_counter() - t0)
        meta = cfg.metadata(method, arch=p.arch, base="pretrained.safetensors")
        # Ship only what changed: the vision tower, plus the text tower of a natural run that tunes it.
        towers = ["visual"] if robust else tuned_towers(cfg)
        state = model.state_dict() if "text" in towers else visual_state(model)
        save_checkpoint(state, out / f"{method}.safetensors", meta)
        prov = {"method": method, "data": f"{data} (train)", "seed": seed, "steps": cfg.steps,
                "seconds": round(time.perf_counter() - t0)}
        if robust:
            prov.update(eps=eps_label(cfg.eps), norm="Linf", pgd_steps=cfg.pgd_steps)
        entries[method] = _entry(out, method, p.arch, "robust" if robust else "natural", towers, prov)

    for extra in p.extra:
        entries.update(_build_extra(out, p, extra, base, tokenizer, seed, device))

    defaults = {"base": "pretrained", "task": p.task, "eps": eps_label(p.eval_eps), "attack": "pgd-10",
                "n": p.eval_n, **({"input": p.input} if p.input != "as-is" else {})}
    manifest = out / "manifest.toml"
    Manifest(manifest, defaults, entries).save(manifest, header=_header(preset, seed))
    log.info("zoo %r built in %.1f s -> %s", preset, time.perf_counter() - start, manifest)
    return manifest


def _build_extra(out: Path, p: ZooPreset, extra: ExtraTask, base: torch.nn.Module, tokenizer, seed: int,
                 device: str) -> dict[str, ModelEntry]:
    """``natural-<task>``: ``base`` fine-tuned on the extra task's data (its shipped subsets written
    first), saved beside the zoo's other vectors; its manifest entry."""
    if extra.task == "digits":
        from explorer.data.digits import write_subsets
        log.info("wrote %s and %s", *write_subsets())
    name, cfg = f"natural-{extra.task}", replace(extra.natural, seed=seed, device=device, data=extra.data)
    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    METHODS["natural"](model, tokenizer, get_task(extra.data), cfg)
    log.info("%s in %.1f s", name, time.perf_counter() - t0)
    towers = tuned_towers(cfg)
    state = model.state_dict() if "text" in towers else visual_state(model)
    save_checkpoint(state, out / f"{name}.safetensors", cfg.metadata("natural", arch=p.arch, base="pretrained.safetensors"))
    prov = {"method": "natural", "data": f"{extra.data} (train)", "seed": seed, "steps": cfg.steps,
            "seconds": round(time.perf_counter() - t0)}
    return {name: _entry(out, name, p.arch, "natural", towers, prov)}


def build_extra_task(out_dir: str | Path, preset: str, task: str, device: str = "cpu") -> Path:
    """Build (or rebuild) only the extra task ``task``'s vectors of ``preset`` into the existing zoo
    at ``out_dir``, from its ``pretrained`` checkpoint, with the seed the zoo was built with; the
    manifest gains (or replaces) their entries, everything else kept.

    Raises:
        KeyError: an unknown preset or a task that is not one of the preset's extra tasks.
        FileNotFoundError: no zoo (manifest) at ``out_dir``.
    """
    from explorer.zoo import load_manifest, load_weights

    if preset not in PRESETS:
        raise KeyError(f"unknown zoo preset {preset!r}; valid: {sorted(PRESETS)}")
    p = PRESETS[preset]()
    extra = {e.task: e for e in p.extra}
    if task not in extra:
        raise KeyError(f"preset {preset!r} has no extra task {task!r}; it has {sorted(extra) or 'none'}")
    path = Path(out_dir) / "manifest.toml"
    if not path.exists():
        raise FileNotFoundError(f"no zoo at {out_dir} (build it first: python -m explorer zoo build --preset {preset})")
    m = load_manifest(path)
    entry = m.get("pretrained")
    seed = int(entry.provenance.get("seed", 0))
    open_clip.add_model_config(Path(entry.arch_config))
    base = open_clip.create_model(p.arch, pretrained=None)
    base.load_state_dict(load_weights(entry, base.state_dict()), strict=True)
    entries = {**m.models, **_build_extra(Path(out_dir), p, extra[task], base, open_clip.get_tokenizer(p.arch),
                                          seed, device)}
    Manifest(path, m.defaults, entries).save(path, header=_header(preset, seed))
    return path


def _entry(out: Path, name: str, arch: str, role: str, towers: list[str], provenance: dict) -> ModelEntry:
    return ModelEntry(name=name, role=role, arch=arch, weights=str(out / f"{name}.safetensors"),
                      arch_config=str(out / f"{arch}.json"), towers=tuple(towers), provenance=provenance)


def _header(preset: str, seed: int) -> str:
    head = (f"# Demo zoo (preset {preset!r}, seed {seed}), written by explorer.finetune.recipe.build_zoo.\n"
            f"# Paths are relative to this file. Rebuild: python -m explorer zoo build --preset {preset}\n")
    if preset == "fashion":
        head += ("# Data: Fashion-MNIST (Zalando Research, MIT licence, https://github.com/zalandoresearch/"
                 "fashion-mnist),\n# read from Debian's dataset-fashion-mnist at build time only; the "
                 "evaluation subset ships in assets/data/.\n")
    return head
