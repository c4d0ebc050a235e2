"""Natural fine-tuning of the vision tower through the frozen zero-shot text head.

Loss: ``L = CE(s * cos(f_ft(x), t_y))`` over the task's class embeddings ``t`` (prompt
ensembles of the frozen text tower), as in WiSE-FT / task-vector fine-tuning of CLIP
(Ilharco et al. 2023, https://arxiv.org/abs/2212.04089). Only ``model.visual`` changes.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from explorer.data import Task

from .common import FinetuneConfig, run_steps, task_batches, vision_setup


def natural(model: nn.Module, tokenizer, task: Task, cfg: FinetuneConfig) -> list[float]:
    """Fine-tune ``model.visual`` in place with cross-entropy on the task's train split.

    Args:
        model: an open_clip ``CLIP`` model (any architecture, on any device).
        tokenizer: its tokenizer (builds the zero-shot head).
        task: classes, templates and the "train" images ([0,1] pixels).
        cfg: steps, batch size, lr, seed, device.

    Returns: the per-step losses.
    """
    clf, params = vision_setup(model, tokenizer, task, cfg)

    def step(x, y):
        logits = clf(x)
        acc = (logits.argmax(1) == y).float().mean()
        return F.cross_entropy(logits, y), {"acc": float(acc)}

    batches = task_batches(task, cfg.batch_size, cfg.pool, cfg.seed, cfg.device)
    return run_steps(params, step, batches, cfg, desc=f"natural ({task.name})")
