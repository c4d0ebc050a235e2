"""Zero-shot CLIP classification with the pixel-space contract.

``ZeroShotClassifier`` takes images in [0, 1] (NCHW, any size), resizes and normalises them
inside ``forward`` (so attacks see the real threat model) and returns logits
``logit_scale * cos(image_emb, class_emb)``, never probabilities.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from explorer.core.heap import release_freed_heap
from explorer.core.towers import is_vision
from explorer.evaluation.activation import budget_for

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALISATIONS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")
DISK_MIN_PROMPTS = 1000    # heads of at least this many prompts are cached on disk (auto mode)
# Activation bytes one prompt holds at the peak of a no-grad text-tower forward, in float32
# [context_length, width] tensors. Measured on ViT-B/32's text tower (width 512, context 77, CPU):
# peak resident over the weights 61 / 127 / 208 / 343 MiB at 15 / 30 / 60 / 120 prompts, 26-29
# such tensors a prompt at small batches (the MLP's 4 x width hidden before and after the GELU,
# q/k/v, the attention weights, glibc's slack); 32 keeps a batch within its budget.
TEXT_UNITS = 32


def text_digest(model: nn.Module) -> str:
    """Content digest of every weight outside the visual tower (what the text head depends on)."""
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        if not is_vision(name):
            h.update(name.encode())
            h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def prompt_bytes(model: nn.Module) -> int:
    """Activation bytes of one prompt in a text-tower forward: ``TEXT_UNITS x context x width x 4``.

    Reads open_clip's ``context_length`` and ``transformer.width`` (``text.*`` for custom text
    towers); a tower without them is priced as context 77, width 1024.
    """
    text = getattr(model, "text", None)
    ctx = getattr(model, "context_length", None) or getattr(text, "context_length", None) or 77
    tower = getattr(model, "transformer", None) or text
    width = getattr(tower, "width", None) or 1024
    return TEXT_UNITS * int(ctx) * int(width) * 4


@torch.no_grad()
def build_text_head(
    model: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str],
    progress: bool = False, budget: int | None = None,
) -> torch.Tensor:
    """Class embeddings: mean of the normalised prompt embeddings of each class, renormalised.

    Prompts go through the text tower in batches of whole classes, as many as fit ``budget``
    bytes of activations (``prompt_bytes`` each; default ``activation.budget_for`` the device:
    128 MiB on CPU: 26 ViT-B/32 prompts, where a fixed 1000 held ~2 GiB), at least one class;
    each class's mean reads only its own prompts, so the batching changes the head by float
    rounding at most. A tqdm bar when ``progress``; freed heap goes back to the OS afterwards
    (``heap.release_freed_heap``). Shape: returns [n_classes, embed_dim], rows of unit norm.
    """
    if not classnames:
        raise ValueError("the class list is empty: give at least two class names")
    if not templates:
        raise ValueError("no prompt templates given")
    device = next(model.parameters()).device
    prompts = (budget or budget_for(device)) // prompt_bytes(model)
    per = max(1, prompts // len(templates))
    rows = []
    for i in tqdm(range(0, len(classnames), per), desc="zero-shot head", unit="batch", disable=not progress):
        names = classnames[i:i + per]
        tokens = tokenizer([t.format(c) for c in names for t in templates]).to(device)
        emb = F.normalize(model.encode_text(tokens).float(), dim=-1)
        rows.append(emb.view(len(names), len(templates), -1).mean(1))
        del tokens, emb
    head = F.normalize(torch.cat(rows), dim=-1)
    release_freed_heap()
    return head


def heads_dir() -> Path:
    """``$EXPLORER_HOME/heads`` (default ``~/.cache/trade-off-explorer/heads``)."""
    return Path(os.environ.get("EXPLORER_HOME", Path.home() / ".cache" / "trade-off-explorer")) / "heads"


def head_cache_key(model: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str]) -> str:
    """sha256 of (text-tower content digest, class names, templates, tokenizer length, device type)."""
    device = next(model.parameters()).device
    parts = [text_digest(model), json.dumps([list(classnames), list(templates)]),
             str(getattr(tokenizer, "context_length", "")), device.type]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def cached_text_head(model: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str],
                     progress: bool = True) -> torch.Tensor:
    """``build_text_head`` served from ``heads_dir()`` when this text tower built it before.

    The head is a function of the key's parts alone, so a cached head is the computed one bit for
    bit (same device type). A corrupt cache file is recomputed and rewritten.
    """
    device = next(model.parameters()).device
    path = heads_dir() / f"{head_cache_key(model, tokenizer, classnames, templates)[:40]}.safetensors"
    if path.exists():
        try:
            head = load_file(str(path))["head"]
            if head.shape[0] == len(classnames):
                return head.to(device)
        except Exception as exc:  # unreadable cache entry: recompute
            log.warning("ignoring unreadable head cache %s: %s", path, exc)
    head = build_text_head(model, tokenizer, classnames, templates, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    save_file({"head": head.detach().cpu().contiguous()}, str(tmp),
              metadata={"classes": str(len(classnames)), "templates": str(len(templates))})
    tmp.replace(path)
    return head


class ZeroShotClassifier(nn.Module):
    """CLIP as an image classifier over a fixed class list.

    Args:
        model: an open_clip CLIP model (its weights may change in place between calls;
            call ``refresh_text_head`` if anything outside ``visual.`` changed).
        tokenizer: the model's tokenizer.
        classnames: class names, in label order.
        templates: prompt templates with one ``{}``.
        normalize: ``"clip"`` or ``"imagenet"`` mean/std, or an explicit (mean, std) pair.
        image_size: side the images are resized to before the visual tower.
        text_key: cheap name of the current text weights (see ``refresh_text_head``).
        disk_cache: serve the head from ``heads_dir()`` (``cached_text_head``); None: on for
            heads of at least ``DISK_MIN_PROMPTS`` prompts (ImageNet: 1000 x 80), where a
            recomputation costs minutes.

    Shape:
        forward: x [N, 3, H, W] float in [0, 1] -> logits [N, n_classes].
    """

    def __init__(self, model: nn.Module, tokenizer, classnames: Sequence[str],
                 templates: Sequence[str] = DEFAULT_TEMPLATES,
                 normalize: str | tuple = "clip", image_size: int | None = None,
                 text_key: str | None = None, disk_cache: bool | None = None) -> None:
        super().__init__()
        self.model = model
        # The wrapper reports the wrapped model's mode: a fresh Module says "training", and
        # torchattacks restores a model that said so with a recursive .train(), which put every
        # BatchNorm of an eval-mode model into training mode after the first attack.
        self.training = model.training
        self.tokenizer = tokenizer
        self.classnames = tuple(classnames)
        self.templates = tuple(templates)
        mean, std = NORMALISATIONS[normalize] if isinstance(normalize, str) else normalize
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        size = image_size or getattr(model.visual, "image_size", 224)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        prompts = len(self.classnames) * len(self.templates)
        self.disk_cache = prompts >= DISK_MIN_PROMPTS if disk_cache is None else disk_cache
        self._head_key: str | None = None
        self.text_head: torch.Tensor | None = None
        self.refresh_text_head(key=text_key)

    def refresh_text_head(self, key: str | None = None, force: bool = False) -> bool:
        """Recompute the class embeddings if the text weights changed. Returns True if it did.

        ``key`` names the text weights (the engine passes a cheap one); by default it is a
        digest of every non-visual weight.
        """
        key = (key if key is not None else text_digest(self.model)) + repr((self.classnames, self.templates))
        if not force and key == self._head_key:
            return False
        if self.disk_cache:
            self.text_head = cached_text_head(self.model, self.tokenizer, self.classnames, self.templates)
        else:
            self.text_head = build_text_head(self.model, self.tokenizer, self.classnames, self.templates)
        self._head_key = key
        return True

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[0,1] pixels -> normalised model input at the tower's resolution (differentiable)."""
        if x.shape[-2:] != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def head_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``logit_scale * cos(image_features, class embeddings)``. Shape: [N, D] -> [N, n_classes]."""
        feats = F.normalize(image_features.float(), dim=-1)
        return self.model.logit_scale.exp().float() * feats @ self.text_head.to(feats.device).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_logits(self.model.encode_image(self.preprocess(x)))
