"""Caches of calibration results: content keys, score files on disk, per-key memos.

- :func:`content_key`: a stable hash of a score setting (kind + JSON payload).
- :class:`ScoreCache`: tensors keyed by content, in memory and as safetensors under
  ``$EXPLORER_HOME/scores`` (default ``~/.cache/trade-off-explorer/scores``); ``computed``
  counts fresh computations (tests assert reuse with it).
- :class:`CalibrationCache`: what one owner (the Engine) holds: a ScoreCache per kind and a
  memo per prepared setting, handed to the merge method in ``MergeInputs.context["memo"]``
  (e.g. stability's sort orders and masks, reused by every alpha and keep).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .host import CalibrationHost

log = logging.getLogger(__name__)


def content_key(kind: str, payload: dict[str, Any]) -> str:
    """Stable content hash of a score setting (kind + JSON payload, sorted keys)."""
    text = json.dumps({"kind": kind, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def scores_dir() -> Path:
    """``$EXPLORER_HOME/scores`` (default ``~/.cache/trade-off-explorer/scores``)."""
    home = Path(os.environ.get("EXPLORER_HOME", Path.home() / ".cache" / "trade-off-explorer"))
    return home / "scores"


def vector_identity(host: CalibrationHost, names: Sequence[str]) -> list[dict[str, str]]:
    """Digest and role of each named vector (what a score depends on), plus the base's digest
    and, when it is not CLIP's (keys computed before it was named stay valid), the input
    normalisation the vectors are evaluated with."""
    normalize = host.normalization(names)
    head = {"base": host.base_digest, **({"normalize": normalize} if normalize != "clip" else {})}
    return [head] + [{"digest": host.vector(n).digest, "role": host.vector(n).role} for n in names]


class ScoreCache:
    """Named tensors per content key: memory first, then ``<scores_dir>/<kind>-<key>.safetensors``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.memory: dict[str, dict[str, Tensor]] = {}
        self.computed = 0  # fresh computations (neither memory nor disk hit)

    def path(self, key: str) -> Path:
        return scores_dir() / f"{self.kind}-{key}.safetensors"

    def get_or_compute(self, key: str, compute: Callable[[], dict[str, Tensor]],
                       device: torch.device) -> dict[str, Tensor]:
        """The cached tensors for ``key`` on ``device``; ``compute()`` only on a full miss."""
        if key in self.memory:
            return self.memory[key]
        path = self.path(key)
        if path.exists():
            tensors = {k: v.to(device) for k, v in load_file(str(path)).items()}
            log.info("%s scores %s read from %s", self.kind, key, path)
        else:
            tensors = compute()
            self.computed += 1
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
            os.replace(tmp, path)
            tensors = {k: v.to(device) for k, v in tensors.items()}
        self.memory[key] = tensors
        return tensors


class CalibrationCache:
    """The calibration state one engine owns: a :class:`ScoreCache` per kind, memos per key.

    Memos are plain dicts a merge method may fill with what it derives from prepared tensors
    (sort orders, masks); only the most recent key's memo of each kind is kept, so memory stays
    that of one setting.
    """

    def __init__(self) -> None:
        self.scores: dict[str, ScoreCache] = {}
        self._memos: dict[str, tuple[str, dict[Any, Any]]] = {}

    def kind(self, kind: str) -> ScoreCache:
        """The ScoreCache of ``kind`` (``stability``, ``variational``, ...), created on first use."""
        if kind not in self.scores:
            self.scores[kind] = ScoreCache(kind)
        return self.scores[kind]

    def memo(self, kind: str, key: str) -> dict[Any, Any]:
        """The memo of ``(kind, key)``; asking for another key of the same kind drops the old one."""
        held = self._memos.get(kind)
        if held is None or held[0] != key:
            held = (key, {})
            self._memos[kind] = held
        return held[1]
