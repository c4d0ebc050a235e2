"""Natural fine-tuning through the zero-shot head: the vision tower, optionally the text tower too.

Loss: ``L = CE(s * cos(f_ft(x), t_y))`` over the task's class embeddings ``t`` (prompt
ensembles of the text tower), as in WiSE-FT / task-vector fine-tuning of CLIP
(Ilharco et al. 2023, https://arxiv.org/abs/2212.04089). By default only ``model.visual`` changes
(``t`` frozen). With ``cfg.options["text"]`` true the text tower is tuned as well, ``t`` recomputed
from it every step (FLYP-style, Goyal et al. 2023, https://arxiv.org/abs/2212.00638): needed when
the pretrained class embeddings are too close for a vision-only fine-tune to separate them (the
Fashion-MNIST base's tops, whose corpus names them interchangeably).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from explorer.data import Task

from .common import FinetuneConfig, run_steps, task_batches, vision_setup


def natural(model: nn.Module, tokenizer, task: Task, cfg: FinetuneConfig) -> list[float]:
    """Fine-tune ``model.visual`` (and the text tower with ``options["text"]``) in place with
    cross-entropy on the task's train split.

    Args:
        model: an open_clip ``CLIP`` model (any architecture, on any device).
        tokenizer: its tokenizer (builds the zero-shot head).
        task: classes, templates and the "train" images ([0,1] pixels).
        cfg: steps, batch size, lr, seed, device; ``options={"text": True}`` tunes both towers.

    Returns: the per-step losses.
    """
    clf, params = vision_setup(model, tokenizer, task, cfg)
    step = _vision_step(clf)
    if cfg.options.get("text"):
        text = [p for n, p in model.named_parameters() if not n.startswith("visual.") and n != "logit_scale"]
        for p in text:
            p.requires_grad_(True)
        params = params + text
        step = _both_step(model, clf, tokenizer, task, cfg.device)
    batches = task_batches(task, cfg.batch_size, cfg.pool, cfg.seed, cfg.device)
    return run_steps(params, step, batches, cfg, desc=f"natural ({task.name})")


def _vision_step(clf):
    def step(x, y):
        logits = clf(x)
        acc = (logits.argmax(1) == y).float().mean()
        return F.cross_entropy(logits, y), {"acc": float(acc)}
    return step


def _both_step(model: nn.Module, clf, tokenizer, task: Task, device: str):
    tokens = tokenizer([t.format(c) for c in task.classnames for t in task.templates]).to(device)
    k, m = len(task.classnames), len(task.templates)

    def step(x, y):
        emb = F.normalize(model.encode_text(tokens).float(), dim=-1).view(k, m, -1).mean(1)
        head = F.normalize(emb, dim=-1)
        img = F.normalize(model.encode_image(clf.preprocess(x)).float(), dim=-1)
        logits = model.logit_scale.exp().detach().float().clamp(max=100) * img @ head.t()
        acc = (logits.argmax(1) == y).float().mean()
        return F.cross_entropy(logits, y), {"acc": float(acc)}
    return step


def tuned_towers(cfg: FinetuneConfig) -> list[str]:
    """The towers a natural run changes (what its checkpoint must hold)."""
    return ["visual", "text"] if cfg.options.get("text") else ["visual"]

