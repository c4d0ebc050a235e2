"""The key layouts real checkpoints use, as one list of data.

Three kinds of layout (``LAYOUTS``, tried in list order), applied by ``checkpoints`` (wrapper;
strip in ``convert``) and ``architecture`` (strip, tower):

- ``wrapper``: the state dict sits under a key of an outer dict (``{"state_dict": {...}}``);
  ``unwrap_state_dict`` peels up to four nested wrappers.
- ``strip``: keys carry a prefix the model's own keys lack (``module.`` from DataParallel);
  ``normalize_keys`` strips it from keys the model does not know, ``convert`` when every key
  has it.
- ``tower``: a dict of one tower whose keys lack that tower's prefix (the vision-tower-only
  FARE/TeCoA releases); ``normalize_keys`` adds the prefix when more keys fit with it.

Supporting a new release format is one ``Layout`` line here (plus a test in test_zoo.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from explorer.core.towers import VISION_PREFIX

LayoutKind = Literal["wrapper", "strip", "tower"]


@dataclass(frozen=True)
class Layout:
    kind: LayoutKind     # wrapper key | prefix to strip | tower prefix to add
    key: str             # the wrapper's key, or the prefix (with its trailing dot)
    seen_in: str         # who writes checkpoints this way (documentation)


LAYOUTS: tuple[Layout, ...] = (
    Layout("wrapper", "state_dict", "PyTorch Lightning and most training scripts"),
    Layout("wrapper", "model", "scripts saving {'model': ..., 'optimizer': ...}"),
    Layout("wrapper", "model_state_dict", "the PyTorch tutorials' checkpoint recipe"),
    Layout("wrapper", "vision_encoder_state_dict", "RobustVLM's FARE / TeCoA training code"),
    Layout("wrapper", "module", "DeepSpeed checkpoints"),
    Layout("strip", "module.", "nn.DataParallel / DistributedDataParallel"),
    Layout("strip", "model.", "a CLIP held as .model of a wrapper module"),
    Layout("tower", VISION_PREFIX, "vision-tower-only releases (FARE, TeCoA, PMG-AFT on the hub)"),
)


def keys_of(kind: LayoutKind) -> tuple[str, ...]:
    """The wrapper keys or prefixes of one kind, in list order."""
    return tuple(layout.key for layout in LAYOUTS if layout.kind == kind)
