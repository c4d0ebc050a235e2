"""Natural and robust fine-tuning of open_clip models, and the demo-zoo recipe.

Every method works on any open_clip ``CLIP`` model, CPU or GPU, with pixels in [0, 1]:

- ``pretrain``: contrastive CLIP pretraining on an image-caption stream (all weights);
- ``natural``: cross-entropy through the frozen zero-shot text head (vision tower);
- ``tecoa``, ``fare``, ``caw``: robust fine-tuning of the vision tower (Linf PGD inner loop).

``METHODS`` maps the vision fine-tuning names to their functions,
``(model, tokenizer, task, cfg) -> losses``.
"""
from __future__ import annotations

from .caw import caw
from .common import FinetuneConfig, load_checkpoint, pgd_linf, save_checkpoint, visual_state
from .fare import fare
from .natural import natural
from .pretrain import pretrain
from .tecoa import tecoa

METHODS = {"natural": natural, "tecoa": tecoa, "fare": fare, "caw": caw}
ROBUST_METHODS = ("tecoa", "fare", "caw")

__all__ = ["METHODS", "ROBUST_METHODS", "FinetuneConfig", "caw", "fare", "load_checkpoint",
           "natural", "pgd_linf", "pretrain", "save_checkpoint", "tecoa", "visual_state"]
