"""The UI's service layer: the only place under ``ui/`` that touches engines and tensors.

Handlers call these functions with plain values (names, specs, numpy images) and get plain
values back (result rows, numpy images, probability dicts). Engines are cached at module level,
one per (manifest, base, device, store) and guarded by a lock, never kept in ``gr.State``.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .attacks import AttackCancelled, run_attack
from .config import AttackSpec, EvalSpec, MergeSpec, SweepSpec
from .engine import Engine
from .store import Store
from .zoo import Manifest, entry_from_path, load_manifest

log = logging.getLogger(__name__)

_ENGINES: dict[tuple, Engine] = {}
_LOCKS: dict[tuple, threading.RLock] = {}
_CACHE_LOCK = threading.Lock()


@dataclass
class AppContext:
    """What one running app serves: a manifest (shared by all its engines), a device, a store."""

    manifest_path: str | None = None
    device: str | None = None
    store_path: str | None = None
    manifest: Manifest = field(init=False)
    store: Store | None = field(init=False)

    def __post_init__(self) -> None:
        self.manifest = load_manifest(self.manifest_path)
        self.manifest_path = str(self.manifest.path)
        self.store = Store(self.store_path) if self.store_path != "none" else None

    def key(self, base: str) -> tuple:
        return (self.manifest_path, id(self.manifest), base, self.device, self.store_path)

    def engine(self, base: str | None = None) -> Engine:
        """The resident engine of ``base`` (built on first use, then reused by every session)."""
        base = base or self.default_base
        key = self.key(base)
        with _CACHE_LOCK:
            if key not in _ENGINES:
                log.info("building the engine for base %r on %s", base, self.device or "auto")
                _ENGINES[key] = Engine(self.manifest, base=base, device=self.device, store=self.store)
                _LOCKS[key] = threading.RLock()
            return _ENGINES[key]

    def lock(self, base: str | None = None) -> threading.RLock:
        self.engine(base)
        return _LOCKS[self.key(base or self.default_base)]

    @property
    def default_base(self) -> str:
        return self.manifest.defaults.get("base") or self.manifest.names("base")[0]

    def defaults(self) -> dict[str, Any]:
        d = self.manifest.defaults
        return {"task": d.get("task", "shapes"), "eps": str(d.get("eps", "4/255")),
                "attack": d.get("attack", "pgd-10"), "n": int(d.get("n", 256)), "base": self.default_base}


def compute_point(ctx: AppContext, base: str, natural: Sequence[str], robust: Sequence[str],
                  spec: MergeSpec, attack: AttackSpec, ev: EvalSpec,
                  should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """One merged model's clean and robust accuracy (served from the store when known).

    ``should_stop`` is polled inside the attack (``AttackCancelled`` when it fires).
    """
    with ctx.lock(base):
        if should_stop is not None and should_stop():
            raise AttackCancelled("superseded before it started")
        return ctx.engine(base).point(list(natural), list(robust), spec, attack, ev, should_stop=should_stop)


def sweep_points(ctx: AppContext, spec: SweepSpec, should_stop: Callable[[], bool]) -> Iterator[dict]:
    """Stream the points of a sweep, starting with the pretrained model (all lambdas 0).

    The engine lock is held per point only, so other sessions interleave between points.
    """
    n_vec = len(spec.natural) + len(spec.robust)
    pre = MergeSpec(method="task_arithmetic", lambdas=(0.0,) * n_vec)
    yield compute_point(ctx, spec.base, spec.natural, spec.robust, pre, spec.attack, spec.eval)
    gen = ctx.engine(spec.base).sweep(spec, should_stop=should_stop)
    while True:
        with ctx.lock(spec.base):
            row = next(gen, None)
        if row is None:
            return
        yield row


def merged_checkpoint(ctx: AppContext, base: str, names: Sequence[str], spec: MergeSpec, out: Path) -> Path:
    """Write the merged weights as ``.safetensors`` (provenance in the metadata)."""
    with ctx.lock(base):
        sd = ctx.engine(base).merged_state_dict(list(names), spec)
    meta = {"base": base, "vectors": ",".join(names), "merge": spec.to_json()}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out), metadata=meta)
    return out


# --------------------------------------------------------------------------- inspect

def image_to_tensor(image: np.ndarray, max_side: int = 224) -> torch.Tensor:
    """HxWx3 uint8 -> [1, 3, H', W'] float in [0, 1], longest side at most ``max_side``."""
    x = torch.from_numpy(np.array(image[..., :3], dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255
    side = max(x.shape[-2:])
    if side > max_side:
        size = [max(1, round(s * max_side / side)) for s in x.shape[-2:]]
        x = torch.nn.functional.interpolate(x, size=size, mode="area")
    return x.clamp_(0, 1)


def tensor_to_image(x: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in [0, 1] -> HxWx3 uint8."""
    return (x[0].permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().cpu().numpy())


def _probs(clf: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        p = clf(x).softmax(-1)[0].cpu().tolist()
    return dict(zip(clf.classnames, p))


def inspect_image(ctx: AppContext, base: str, models: dict[str, tuple[Sequence[str], MergeSpec]],
                  image: np.ndarray, classnames: Sequence[str], attack: AttackSpec,
                  templates: Sequence[str] | None = None) -> dict[str, Any]:
    """Zero-shot predictions before/after a white-box attack, for each named merged model.

    Args:
        models: display name -> (vector names, merge spec); the first one's adversarial image
            is returned for display.
        image: HxWx3 uint8.
        classnames: at least two class names.

    Returns: ``{"clean": uint8 image, "adv": uint8, "delta": uint8 (amplified),
    "probs": {name: (clean probs, adv probs)}, "linf": float}``.
    """
    from .zeroshot import DEFAULT_TEMPLATES, ZeroShotClassifier

    x = image_to_tensor(image)
    out: dict[str, Any] = {"probs": {}, "clean": tensor_to_image(x)}
    with ctx.lock(base):
        eng = ctx.engine(base)
        x = x.to(eng.device)
        normalize = eng.manifest.get(eng.base).normalize
        for i, (label, (names, spec)) in enumerate(models.items()):
            eng.merge(list(names), spec)
            clf = ZeroShotClassifier(eng.model, eng.tokenizer, classnames, templates or DEFAULT_TEMPLATES,
                                     normalize=normalize).to(eng.device)
            clean = _probs(clf, x)
            y = torch.tensor([max(range(len(classnames)), key=lambda j: clean[classnames[j]])],
                             device=eng.device)
            # Untargeted white-box attack on this model, against its own clean prediction.
            x_adv = run_attack(clf, x, y, attack)
            out["probs"][label] = (clean, _probs(clf, x_adv))
            if i == 0:
                delta = (x_adv - x).cpu()
                out["adv"] = tensor_to_image(x_adv.cpu())
                out["linf"] = float(delta.abs().max())
                scale = 0.5 / max(float(delta.abs().max()), 1e-12)
                out["delta"] = tensor_to_image((0.5 + delta * scale).clamp(0, 1))
    return out


# --------------------------------------------------------------------------- models

def vector_stats(ctx: AppContext, base: str, names: Sequence[str]) -> dict[str, Any]:
    """Norms, pairwise cosine similarity and per-layer L2 norms of the named task vectors."""
    with ctx.lock(base):
        eng = ctx.engine(base)
        taus = [eng.vector(n).tau for n in names]
        touches = [eng.vector(n).touches_text for n in names]
        layout = eng.layout
        groups = _layer_groups(layout.keys)
        table, layer_norms = [], {}
        for n, tau, text in zip(names, taus, touches):
            nz = float((tau != 0).float().mean())
            table.append({"vector": n, "role": eng.manifest.get(n).role, "L2 norm": float(tau.norm()),
                          "Linf norm": float(tau.abs().max()), "nonzero fraction": round(nz, 4),
                          "touches text tower": text})
            sq = torch.zeros(len(groups[0]), device=tau.device)
            for gi, (a, b) in zip(groups[1], layout.segments):
                sq[gi] += tau[a:b].pow(2).sum()
            layer_norms[n] = sq.sqrt().cpu().tolist()
        # Gram matrix in float64 (one pair at a time: no k x numel float64 copy).
        gram = torch.tensor([[float(torch.dot(a, b).double()) for b in taus] for a in taus], dtype=torch.float64)
        norm = gram.diagonal().sqrt().clamp_min(1e-12)
        cos = (gram / norm[:, None] / norm[None, :]).clamp(-1, 1).tolist()
    return {"table": table, "cos": cos, "layers": groups[0], "layer_norms": layer_norms}


def _layer_groups(keys: Sequence[str]) -> tuple[list[str], list[int]]:
    """Group state-dict keys into layers (``visual.block 3``, ``text.block 0``, ``visual.other``)."""
    labels, index = [], []
    for k in keys:
        parts = k.split(".")
        tower = "visual" if parts[0] == "visual" else "text"
        block = next((parts[i + 1] for i, p in enumerate(parts[:-1])
                      if p in ("resblocks", "layers", "blocks") and parts[i + 1].isdigit()), None)
        if block is None:  # ResNet stages: visual.layer3.0.conv1.weight -> block 3
            block = next((p[len("layer"):] for p in parts if p.startswith("layer") and p[5:].isdigit()), None)
        label = f"{tower}.block{block}" if block is not None else f"{tower}.other"
        if label not in labels:
            labels.append(label)
        index.append(labels.index(label))
    # Model order: visual tower first, then text; within a tower, embeddings/heads then blocks.
    rank = lambda lab: (lab.startswith("text"), lab.endswith("other") is False,
                        int(lab.rsplit("block", 1)[1]) if "block" in lab else -1)
    order = sorted(range(len(labels)), key=lambda i: rank(labels[i]))
    new_pos = {old: new for new, old in enumerate(order)}
    return [labels[i] for i in order], [new_pos[i] for i in index]


def add_checkpoint(ctx: AppContext, base: str, path: str, name: str | None, role: str) -> str:
    """Validate a local checkpoint against the base architecture and register it; its name."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no file at {p}")
    with ctx.lock(base):
        eng = ctx.engine(base)
        entry = entry_from_path(p, like=eng.manifest.get(eng.base), name=name or None, role=role)
        if entry.name in eng.manifest.models:
            raise ValueError(f"a model named {entry.name!r} already exists; choose another name")
        eng.add_entry(entry)
    return entry.name
