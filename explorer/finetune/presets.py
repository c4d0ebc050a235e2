"""The zoo presets: every setting that defines a demo zoo (architecture, data, schedules).

- ``fashion`` (``assets/zoo-fashion/``, the app's default; the README's "The demo zoo" gives its
  measured criteria): an open_clip ViT (28 px, patch 7 -> 16
  tokens + class token, width 128, 4 layers, 4 heads, MLP ratio 2; text: 2 layers of width 64,
  context 16) pretrained contrastively on Fashion-MNIST photographs with noisy, coarse captions
  (``explorer.data.fashion_corpus``), fine-tuned on the labelled half of the train split.
  Patch 7 keeps a pgd-10 point about as cheap as the former ResNet's (16 tokens per image).
  A second real task, handwritten digits (``explorer.data.digits``), adds the natural vector
  ``natural-digits`` (both towers: the base's text tower, pretrained on clothes captions only,
  gives the ten digit names near-identical embeddings, cosine 0.99), for many-vector merging.
- ``shapes`` (``assets/zoo/``, the test suite's fixture zoo): open_clip's
  ModifiedResNet (width 16, 32 px) on the procedural shapes (``explorer.data.synthetic_scenes``).
- ``micro``: a tiny ResNet and a few steps of everything on the shapes (seconds; the tests).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .common import FinetuneConfig


@dataclass(frozen=True)
class ExtraTask:
    """A further task of a zoo: natural fine-tunes of the same base on its data, named
    ``natural-<task>`` (``zoo build --only <task>`` builds them alone, into an existing zoo)."""

    task: str                                   # evaluation task (registry name)
    data: str                                   # task whose "train" split the fine-tune learns
    natural: FinetuneConfig


@dataclass(frozen=True)
class ZooPreset:
    """Everything that defines a zoo; ``seed`` is added by ``build_zoo``."""

    arch: str                                   # open_clip model name (= config file stem)
    model_cfg: dict                             # open_clip model config (written as JSON)
    pretrain: FinetuneConfig                    # contrastive pretraining
    natural: FinetuneConfig                     # natural fine-tune of the vision tower
    robust: dict[str, FinetuneConfig] = field(default_factory=dict)  # method -> settings
    task: str = "shapes"                        # the demo's default evaluation task
    natural_task: str = "shapes-mixed"          # data of the natural fine-tune (shifted + replay)
    robust_task: str = "shapes"                 # data of the robust fine-tunes
    corpus: str = "synthetic"                   # pretraining corpus: synthetic | fashion
    eval_n: int = 256                           # manifest default evaluation size
    eval_eps: float = 4 / 255                   # manifest default attack radius
    folder: str = "zoo"                  # default output folder under assets/
    input: str = "as-is"                        # upload form (explorer.app.images.INPUT_FORMS)
    extra: tuple[ExtraTask, ...] = ()           # further tasks' natural vectors (many-vector merging)


def _resnet(embed: int, width: int, t_width: int, t_layers: int, t_heads: int, context: int = 16) -> dict:
    return {"embed_dim": embed,
            "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": width, "head_width": 16},
            "text_cfg": {"context_length": context, "vocab_size": 49408, "width": t_width,
                         "heads": t_heads, "layers": t_layers}}


def _vit(embed: int, width: int, layers: int, heads: int, patch: int, size: int = 28) -> dict:
    return {"embed_dim": embed,
            "vision_cfg": {"image_size": size, "patch_size": patch, "width": width, "layers": layers,
                           "head_width": width // heads, "mlp_ratio": 2.0},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def _fashion() -> ZooPreset:
    # Robust fine-tunes trained at 8/255 (3-step PGD); the default evaluation radius is the
    # manifest's eval_eps.
    eps = 8 / 255
    robust = FinetuneConfig(steps=300, batch_size=128, lr=5e-4, warmup=20, eps=eps, pgd_steps=3, pool=30000)
    return ZooPreset(
        arch="fashion-vit", model_cfg=_vit(64, 128, 4, 4, 7),
        pretrain=FinetuneConfig(steps=1200, batch_size=128, lr=1e-3, warmup=50, weight_decay=0.05),
        natural=FinetuneConfig(steps=1000, batch_size=128, lr=5e-4, warmup=30, pool=30000,
                               options={"text": True}),
        robust={"tecoa": robust, "fare": robust,
                "caw": replace(robust, pgd_steps=2, options={"a": 1.0, "b": 1.0})},
        task="fashion", natural_task="fashion-train", robust_task="fashion-train", corpus="fashion",
        eval_eps=8 / 255, folder="zoo-fashion", input="fashion-mnist",
        extra=(ExtraTask("digits", "digits-train",
                         FinetuneConfig(steps=300, batch_size=128, lr=5e-4, warmup=30, pool=1197,
                                        options={"text": True})),))


def _shapes() -> ZooPreset:
    # Trained at 8/255, evaluated at 4/255 (``eval_eps``): trained at 4/255 FARE kept the
    # pretrained model's clean accuracy (above the natural fine-tune's): no trade-off to show.
    eps = 8 / 255
    robust = FinetuneConfig(steps=200, batch_size=128, lr=5e-4, warmup=20, eps=eps, pgd_steps=3)
    return ZooPreset(
        arch="demo-clip", model_cfg=_resnet(64, 16, 64, 2, 2),
        pretrain=FinetuneConfig(steps=1000, batch_size=128, lr=2e-3, warmup=30, weight_decay=0.05),
        natural=FinetuneConfig(steps=400, batch_size=128, lr=1e-3, warmup=20),
        robust={"tecoa": robust, "fare": robust,
                "caw": replace(robust, pgd_steps=2, options={"a": 1.0, "b": 1.0})})


def _micro() -> ZooPreset:
    eps = 4 / 255
    robust = FinetuneConfig(steps=4, batch_size=16, lr=1e-3, warmup=1, eps=eps, pgd_steps=2, pool=64)
    return ZooPreset(
        arch="micro-clip", model_cfg=_resnet(16, 8, 8, 1, 1),
        pretrain=FinetuneConfig(steps=6, batch_size=16, lr=2e-3, warmup=1),
        natural=FinetuneConfig(steps=4, batch_size=16, lr=1e-3, warmup=1, pool=64),
        robust={"tecoa": robust, "fare": robust, "caw": replace(robust, options={"a": 1.0, "b": 1.0})},
        eval_n=64, folder="zoo-micro")


PRESETS = {"fashion": _fashion, "shapes": _shapes, "micro": _micro}
