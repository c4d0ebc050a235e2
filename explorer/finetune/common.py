"""Pieces every fine-tuning method shares: config, PGD inner loop, training loop, checkpoints.

The methods (``pretrain``, ``natural``, ``tecoa``, ``fare``, ``caw``) differ only in their
per-step loss; the optimiser (AdamW, linear warm-up then cosine decay, grad-norm clipping
at 1), the data stream, the Linf PGD adversary and the safetensors writer live here once.
All images are float pixels in [0, 1]; normalisation happens inside the classifier
(``explorer.evaluation.zeroshot.ZeroShotClassifier``), so the adversary sees the real threat model.
"""
from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from explorer.config import eps_label
from explorer.data import Task
from explorer.evaluation.zeroshot import ZeroShotClassifier

log = logging.getLogger(__name__)

# step_fn(x, y) -> (loss, metrics): one method's loss on a batch of pixels in [0,1]
StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run (every field lands in the checkpoint's metadata)."""

    steps: int = 200                 # optimiser steps
    batch_size: int = 128            # images per step
    lr: float = 1e-3                 # peak AdamW learning rate
    weight_decay: float = 0.0        # AdamW weight decay
    warmup: int = 20                 # linear warm-up steps, then cosine decay to 0
    eps: float = 4 / 255             # Linf radius of the training adversary, pixel units
    pgd_steps: int = 3               # PGD iterations of the inner maximisation
    step_size: float | None = None   # PGD step; None -> 2.5 * eps / pgd_steps
    seed: int = 0                    # data order, PGD random starts, initialisation
    device: str = "cpu"              # torch device of the run
    data: str = "shapes-shifted"     # task name; its "train" split is the training data
    pool: int = 8192                 # distinct training images drawn (cycled when exhausted)
    normalize: str = "clip"          # pixel normalisation of the model: clip | imagenet
    options: dict = field(default_factory=dict)  # method-specific weights (e.g. CAW a, b)

    @property
    def pgd_step_size(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / max(self.pgd_steps, 1)

    def metadata(self, method: str, **extra) -> dict[str, str]:
        """Provenance as safetensors metadata (string -> string)."""
        meta = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in asdict(self).items()}
        meta.update(method=method, eps_label=eps_label(self.eps))
        meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
        return meta


def pgd_linf(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float,
             steps: int, step_size: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient ascent on ``loss_fn`` inside the Linf ball of radius ``eps`` around x.

    Random uniform start, signed-gradient steps, projection onto the ball and [0, 1].
    ``loss_fn`` returns a scalar (sum over the batch, so per-sample steps do not shrink).

    Shape: x [N, C, H, W] in [0, 1] -> x_adv of the same shape, ``|x_adv - x|_inf <= eps``.
    """
    if eps <= 0 or steps <= 0:
        return x.detach()
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = (x + (2 * noise - 1) * eps).clamp(0, 1).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(x_adv), x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def task_batches(task: Task, batch_size: int, pool: int, seed: int, device: str
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled batches from a fixed pool of ``pool`` images of the task's train split."""
    x, y = task.load("train", pool, seed)
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            yield x[idx].to(device), y[idx].to(device)


def run_steps(params: list[nn.Parameter], step_fn: StepFn,
              batches: Iterator[tuple[torch.Tensor, object]], cfg: FinetuneConfig,
              desc: str) -> list[float]:
    """The training loop: AdamW, warm-up + cosine schedule, clipping, tqdm. Returns the losses."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def schedule(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    history: list[float] = []
    bar = tqdm(range(cfg.steps), desc=desc, leave=False)
    for step in bar:
        x, y = next(batches)
        loss, metrics = step_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{history[-1]:.3f}", **{k: f"{v:.3f}" for k, v in metrics.items()})
    log.info("%s: loss %.4f -> %.4f over %d steps", desc, history[0], history[-1], cfg.steps)
    return history


def vision_setup(model: nn.Module, tokenizer, task: Task, cfg: FinetuneConfig
                 ) -> tuple[ZeroShotClassifier, list[nn.Parameter]]:
    """Move to device, freeze everything but the visual tower; zero-shot head of the task."""
    model.to(cfg.device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.visual.parameters())
    for p in params:
        p.requires_grad_(True)
    clf = ZeroShotClassifier(model, tokenizer, task.classnames, task.templates,
                             normalize=cfg.normalize).to(cfg.device)
    return clf, params


def frozen_visual(model: nn.Module) -> nn.Module:
    """A frozen copy of the visual tower (the reference of FARE and CAW)."""
    ref = copy.deepcopy(model.visual).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def head_logits(clf: ZeroShotClassifier, features: torch.Tensor) -> torch.Tensor:
    """Zero-shot logits of unnormalised image features: ``logit_scale * cos(f, class_emb)``."""
    head = clf.text_head.to(features.device)
    return clf.model.logit_scale.exp().float() * F.normalize(features.float(), dim=-1) @ head.t()


def generator(cfg: FinetuneConfig) -> torch.Generator:
    return torch.Generator(device=cfg.device).manual_seed(cfg.seed)


def save_checkpoint(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> Path:
    """Write float tensors as contiguous float32 safetensors with string metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous()
               for k, v in state.items()}
    save_file(tensors, str(path), metadata={str(k): str(v) for k, v in metadata.items()})
    log.info("wrote %s (%d tensors)", path, len(tensors))
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors checkpoint: (tensors, metadata)."""
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def visual_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Vision tower only, keyed like FARE/TeCoA releases (``model.visual`` keys, no prefix)."""
    return dict(model.visual.state_dict())
