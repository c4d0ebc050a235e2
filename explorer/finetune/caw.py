"""CAW: confidence-aware weighting for zero-shot adversarial robustness.

Naghavian & Tavassolipour, "Zero-Shot Robustness of Vision Language Models Via
Confidence-Aware Weighting", NeurIPS 2025, https://arxiv.org/abs/2510.02913.

``L = CE(P_adv_ft, y) + a * KL(P_adv_ft || P_clean_frozen) * (1 - P_adv_ft[y])
      + b * || f_ft(x_adv) - f_frozen(x_adv) ||_2``

``P`` are zero-shot softmax predictions through the frozen text head, ``f`` unit-norm image
embeddings (the zero-shot head only sees their direction; on raw embeddings the regulariser's
scale depends on the architecture: on the demo ResNet it dwarfed the other terms and stopped
learning altogether), ``x_adv`` from a short PGD (2 steps by default) maximising the fine-tuned model's CE.
The confidence weight ``1 - P_adv_ft[y]`` is a per-sample weight (no gradient flows through
it): uncertain adversarial examples get the largest pull towards the frozen clean prediction.
Options (``cfg.options``): ``a`` (default 1.0), ``b`` (default 1.0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from explorer.data import Task

from .common import (
    FinetuneConfig,
    frozen_visual,
    generator,
    head_logits,
    pgd_linf,
    run_steps,
    task_batches,
    vision_setup,
)


def caw_loss(logits_adv: torch.Tensor, logits_clean_frozen: torch.Tensor, y: torch.Tensor,
             feat_adv: torch.Tensor, feat_adv_frozen: torch.Tensor, a: float, b: float
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """The CAW objective of one batch (mean over samples) and its three terms."""
    logp_adv = F.log_softmax(logits_adv, 1)
    kl = (logp_adv.exp() * (logp_adv - F.log_softmax(logits_clean_frozen, 1))).sum(1)
    weight = 1 - logp_adv.exp().gather(1, y[:, None]).squeeze(1).detach()
    ce = F.nll_loss(logp_adv, y)
    ca = (kl * weight).mean()
    reg = (feat_adv - feat_adv_frozen).norm(dim=1).mean()
    return ce + a * ca + b * reg, {k: float(v.detach()) for k, v in (("ce", ce), ("ca", ca), ("reg", reg))}


def caw(model: nn.Module, tokenizer, task: Task, cfg: FinetuneConfig) -> list[float]:
    """Adversarially fine-tune ``model.visual`` in place with the CAW loss. Returns the losses."""
    clf, params = vision_setup(model, tokenizer, task, cfg)
    ref = frozen_visual(model)
    gen = generator(cfg)
    a, b = float(cfg.options.get("a", 1.0)), float(cfg.options.get("b", 1.0))

    def step(x, y):
        x_adv = pgd_linf(lambda z: F.cross_entropy(clf(z), y, reduction="sum"), x,
                         cfg.eps, cfg.pgd_steps, cfg.pgd_step_size, gen)
        with torch.no_grad():
            logits_clean_frozen = head_logits(clf, ref(clf.preprocess(x)))
            feat_adv_frozen = ref(clf.preprocess(x_adv))
        feat_adv = model.visual(clf.preprocess(x_adv))
        return caw_loss(head_logits(clf, feat_adv), logits_clean_frozen, y, F.normalize(feat_adv, dim=-1),
                        F.normalize(feat_adv_frozen, dim=-1), a, b)

    batches = task_batches(task, cfg.batch_size, cfg.pool, cfg.seed, cfg.device)
    return run_steps(params, step, batches, cfg, desc=f"caw ({task.name})")
