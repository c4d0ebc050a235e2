"""Contrastive (CLIP) pretraining on an image-caption stream.

Loss (symmetric InfoNCE, Radford et al. 2021, https://arxiv.org/abs/2103.00020):
``L = (CE(s * I T^T, P) + CE(s * T I^T, P)) / 2`` with unit-norm image/text embeddings I, T,
learned temperature ``s = exp(logit_scale)`` (capped at 100) and target distribution P.
P is the identity, except that captions that are the *same string* within a batch share
their probability mass (a procedural corpus repeats short captions like "a star"; treating
those as negatives would punish correct matches).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from explorer.evaluation.zeroshot import NORMALISATIONS

from .common import FinetuneConfig, run_steps

log = logging.getLogger(__name__)


def caption_targets(captions: list[str], device: str | torch.device) -> torch.Tensor:
    """Row-stochastic target matrix: uniform over the batch items with an identical caption."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    key = torch.tensor([ids[c] for c in captions], device=device)
    same = (key[:, None] == key[None, :]).float()
    return same / same.sum(1, keepdim=True)


def contrastive_loss(model: nn.Module, tokenizer, images: torch.Tensor, captions: list[str],
                     normalize: str = "clip") -> torch.Tensor:
    """Symmetric InfoNCE of a batch. Shape: images [B,3,H,W] in [0,1], len(captions) == B."""
    mean, std = (torch.tensor(v, device=images.device).view(1, 3, 1, 1) for v in NORMALISATIONS[normalize])
    size = model.visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    if images.shape[-2:] != size:
        images = F.interpolate(images, size=size, mode="bicubic", align_corners=False)
    img = F.normalize(model.encode_image((images - mean) / std), dim=-1)
    txt = F.normalize(model.encode_text(tokenizer(captions).to(images.device)), dim=-1)
    scale = model.logit_scale.exp().clamp(max=100)
    logits = scale * img @ txt.t()
    target = caption_targets(captions, images.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target.t()))


def pretrain(model: nn.Module, tokenizer, batches: Iterator[tuple[torch.Tensor, list[str]]],
             cfg: FinetuneConfig) -> list[float]:
    """Train all weights of an open_clip model contrastively, in place. Returns the losses.

    Args:
        model: an open_clip ``CLIP`` model (any architecture).
        tokenizer: its tokenizer.
        batches: endless (images [B,3,H,W] in [0,1], captions) batches, e.g.
            ``explorer.data.synthetic_tasks.caption_batches``.
        cfg: steps, lr, warm-up, seed, device (``eps`` is unused).
    """
    torch.manual_seed(cfg.seed)
    model.to(cfg.device).train()
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)

    def step(x: torch.Tensor, caps: list[str]):
        loss = contrastive_loss(model, tokenizer, x.to(cfg.device), caps, cfg.normalize)
        with torch.no_grad():  # CLIP's cap on the temperature
            model.logit_scale.clamp_(0, math.log(100))
        return loss, {"T": float(model.logit_scale.detach().exp())}

    history = run_steps(params, step, batches, cfg, desc="pretrain (contrastive)")
    model.eval()
    return history
