"""FARE: unsupervised adversarial fine-tuning of the vision tower.

Schlarmann et al., "Robust CLIP: Unsupervised Adversarial Fine-Tuning of Vision Embeddings
for Robust Large Vision-Language Models", ICML 2024, https://arxiv.org/abs/2402.12336.

``L = || f_ft(x_adv) - f_frozen(x) ||_2^2`` with ``x_adv = argmax_{|d|_inf <= eps}`` of the same
quantity (PGD), ``f`` the unnormalised image embedding and ``f_frozen`` the original tower.
No labels and no text: the robust tower stays close to the original embedding, so every
downstream zero-shot head keeps working.
"""
from __future__ import annotations

import torch
from torch import nn

from explorer.data import Task

from .common import FinetuneConfig, frozen_visual, generator, pgd_linf, run_steps, task_batches, vision_setup


def fare(model: nn.Module, tokenizer, task: Task, cfg: FinetuneConfig) -> list[float]:
    """Adversarially fine-tune ``model.visual`` in place, label-free. Returns the losses.

    ``task`` only supplies the training images (labels are ignored); ``tokenizer`` builds the
    same preprocessing as every other method.
    """
    clf, params = vision_setup(model, tokenizer, task, cfg)
    ref = frozen_visual(model)
    gen = generator(cfg)

    def step(x, _y):
        with torch.no_grad():
            target = ref(clf.preprocess(x))

        def dist(z):  # per-sample squared distance of the embeddings
            return (model.visual(clf.preprocess(z)) - target).pow(2).sum(1)

        x_adv = pgd_linf(lambda z: dist(z).sum(), x, cfg.eps, cfg.pgd_steps, cfg.pgd_step_size, gen)
        return dist(x_adv).mean(), {}

    batches = task_batches(task, cfg.batch_size, cfg.pool, cfg.seed, cfg.device)
    return run_steps(params, step, batches, cfg, desc=f"fare ({task.name})")
