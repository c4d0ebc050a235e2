"""TeCoA: text-guided contrastive adversarial fine-tuning of the vision tower.

Mao et al., "Understanding Zero-Shot Adversarial Robustness for Large-Scale Models",
ICLR 2023, https://arxiv.org/abs/2212.07016.

``L = CE(s * cos(f_ft(x_adv), t_y))`` with ``x_adv = argmax_{|d|_inf <= eps} CE(...)`` found
by PGD on the fine-tuned model itself (pixels in [0,1], normalisation inside the classifier).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from explorer.data import Task

from .common import FinetuneConfig, generator, pgd_linf, run_steps, task_batches, vision_setup


def tecoa(model: nn.Module, tokenizer, task: Task, cfg: FinetuneConfig) -> list[float]:
    """Adversarially fine-tune ``model.visual`` in place (supervised). Returns the losses."""
    clf, params = vision_setup(model, tokenizer, task, cfg)
    gen = generator(cfg)

    def step(x, y):
        x_adv = pgd_linf(lambda z: F.cross_entropy(clf(z), y, reduction="sum"), x,
                         cfg.eps, cfg.pgd_steps, cfg.pgd_step_size, gen)
        logits = clf(x_adv)
        return F.cross_entropy(logits, y), {"adv_acc": float((logits.argmax(1) == y).float().mean())}

    batches = task_batches(task, cfg.batch_size, cfg.pool, cfg.seed, cfg.device)
    return run_steps(params, step, batches, cfg, desc=f"tecoa ({task.name})")
