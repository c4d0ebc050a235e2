"""The resident models: one base and its fine-tunes as flat float32 buffers on the device.

``ResidentModels`` owns the weights an ``Engine`` merges: the base model (its parameters views
into the flat ``theta``), ``pre`` (theta_pre), and one ``Vector`` per fine-tune, loaded on first
use and kept (``explorer.engine.resident`` has the loaders and the memory floor they keep).

Checkpoints added at run time (an upload, a file a trusted caller names) live in this object's
own ``added`` map: the manifest it was given is never changed, and ``manifest`` is a view of
that manifest plus the added entries (a new ``Manifest`` each time either changes).
"""
from __future__ import annotations

import logging

import torch

from explorer.zoo import Manifest, ModelEntry, create_model
from explorer.zoo.flatload import cache_dir_of

from .resident import Vector, flat_digest, load_base, load_vector, text_segments, vector_from_tensors

log = logging.getLogger(__name__)


class ResidentModels:
    """A base model and its fine-tunes, resident on ``device`` (see the module docstring).

    Args:
        manifest: the zoo (read, never written).
        base: manifest name of the pretrained model.
        device: where every flat buffer lives.

    Attributes:
        model: the open_clip model; its floating-point parameters are views into ``theta``.
        tokenizer: its tokenizer.
        reference: the state dict as storage-free ``meta`` tensors (keys, shapes, dtypes).
        layout: keys and flat segments of ``pre`` / ``theta`` / every ``Vector.ft``.
        pre: theta_pre, flat ``(N,)`` float32; ``theta``: the merged weights, same shape.
        base_digest: content hash of ``pre`` (part of every store key).
        text_segments: flat (start, end) of every tensor outside the visual tower.
    """

    def __init__(self, manifest: Manifest, base: str, device: torch.device) -> None:
        self._zoo = manifest
        self.added: dict[str, ModelEntry] = {}
        self.manifest = manifest
        self.base = base
        entry = manifest.get(base)
        model, self.tokenizer = create_model(entry)
        self.cache_dir = cache_dir_of(manifest.defaults, manifest.path)
        self.reference, self.layout, self.pre, self.theta, self.base_report = load_base(
            entry, model, device, self.cache_dir)
        self.model = model
        self.base_digest = flat_digest(self.pre)
        self.text_segments = text_segments(self.layout)
        self.vectors: dict[str, Vector] = {}

    def vector(self, name: str) -> Vector:
        """The named fine-tune, loaded once and kept resident (missing towers = pretrained).

        Raises:
            KeyError: no such model in the manifest or among the added entries.
        """
        if name not in self.vectors:
            self.vectors[name] = load_vector(self.manifest.get(name), self.reference, self.layout, self.pre,
                                             self.text_segments, self.cache_dir)
        return self.vectors[name]

    def unload(self, name: str) -> None:
        """Drop a resident vector (its memory is freed once no caller holds it)."""
        self.vectors.pop(name, None)

    def add(self, entry: ModelEntry, tensors: dict[str, torch.Tensor] | None = None) -> Vector:
        """Register a new checkpoint (validated against the base architecture) and load it.

        ``tensors``: the checkpoint's tensors already read (an upload); the entry's ``weights``
        is then a label and never opened. Nothing is registered when validation fails.

        Raises:
            CheckpointError: keys, shapes or weights that do not fit the base.
        """
        if tensors is not None:
            vec = vector_from_tensors(entry, tensors, self.reference, self.layout, self.pre, self.text_segments)
        else:
            vec = load_vector(entry, self.reference, self.layout, self.pre, self.text_segments, self.cache_dir)
        self.added[entry.name] = entry
        self.manifest = self._view()
        self.vectors[entry.name] = vec
        return vec

    def remove(self, name: str) -> None:
        """Forget a checkpoint added at run time: its entry and its resident vector."""
        self.added.pop(name, None)
        self.manifest = self._view()
        self.unload(name)

    def vector_bytes(self) -> int:
        """Resident bytes of one task vector (its flat fine-tuned weights)."""
        return self.pre.numel() * self.pre.element_size()

    def _view(self) -> Manifest:
        """The given manifest plus the added entries, as a new ``Manifest`` (the given one untouched)."""
        if not self.added:
            return self._zoo
        return Manifest(self._zoo.path, self._zoo.defaults, {**self._zoo.models, **self.added})

