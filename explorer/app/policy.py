"""What a served app lets its page users do: the policy beside ``Service`` (no gradio here).

- **Checkpoints** are added by upload, or by a name inside the folder the operator allowed
  (``checkpoint_dir``); arbitrary server paths only with ``allow_any_path`` (single-user local
  use). Files are read by ``zoo.files.read_checkpoint_file`` (regular files, size cap, generic
  refusal) outside the engine lock, so reading a file never holds up other users' jobs.
- **Added checkpoints** are bounded, scoped to the session that added them (or shared by the
  operator) and evicted least recently used (``added.AddedCheckpoints``); an evicted one is
  dropped from the engine (manifest entry and resident vectors).
- **Jobs** are priced before they start and stopped by their owner, their time cap or their
  client's departure (``jobs``).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from explorer.config import AttackSpec
from explorer.zoo import (
    CheckpointRefused,
    Manifest,
    read_checkpoint_file,
    refused_message,
    resolve_in_folder,
)

from .added import AddedCheckpoints
from .jobs import Job, JobBoard, Limits, check_cost


class Service(Protocol):
    """What the policy needs of ``explorer.app.service.Service`` (typed here: no import cycle)."""

    manifest: Manifest
    device: str | None

    def engine(self, base: str | None = None) -> Any: ...

    def lock(self, base: str | None = None) -> Any: ...

log = logging.getLogger(__name__)
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


class Serving:
    """The served-app policy of one ``Service`` (``configure`` sets it from the serve flags)."""

    def __init__(self, service: Service, limits: Limits) -> None:
        self.service = service
        self.configure(limits)

    def configure(self, limits: Limits | None = None, checkpoint_dir: str | None = None,
                  allow_any_path: bool = False, share_added: bool = False) -> Serving:
        """Set caps, the allowed checkpoint folder, the any-path opt-in and sharing of added ones."""
        self.limits = limits or Limits.for_device(self.service.device)
        self.checkpoint_dir = Path(checkpoint_dir).resolve() if checkpoint_dir else None
        self.allow_any_path = bool(allow_any_path)
        self.jobs = JobBoard(self.limits)
        self.added = AddedCheckpoints(self.limits.max_added, int(self.limits.max_added_mb * 2**20), share_added)
        return self

    @property
    def max_bytes(self) -> int:
        return int(self.limits.max_checkpoint_mb * 2**20)

    # ------------------------------------------------------------------ names
    def names(self, owner: str, role: str | None = None) -> list[str]:
        """The manifest's names of ``role`` that ``owner`` may use (others' added ones hidden)."""
        m = self.service.manifest
        return [n for n in m.names(role) if self.added.can_use(owner, n)]

    def check_names(self, owner: str, names: Sequence[str]) -> None:
        """``ValueError`` for a name that is not in the manifest or is another session's."""
        for n in names:
            if n not in self.service.manifest.models or not self.added.can_use(owner, n):
                raise ValueError(f"no task vector named {str(n)[:64]!r} here (an added checkpoint may "
                                 "have been evicted: add it again)")
        self.added.touch(names)

    # ------------------------------------------------------------------ jobs
    def job(self, owner: str, what: str, points: int, images: int, attack: AttackSpec,
            submitted: float | None = None, alive: Callable[[], bool] | None = None) -> Job:
        """Price a job (``JobRefused`` over the cap) and start it for ``owner``."""
        check_cost(self.limits, what, points, images, attack)
        return self.jobs.start(owner, submitted, alive)

    # ------------------------------------------------------------------ checkpoints
    def resolve(self, text: str) -> Path:
        """A typed checkpoint name -> a path the policy allows (``CheckpointRefused`` otherwise)."""
        if self.allow_any_path:
            return Path((text or "").strip()).expanduser()
        if self.checkpoint_dir is None:
            raise CheckpointRefused("Adding checkpoints by name is off on this server: upload the file "
                                    "(or start the app with --checkpoint-dir DIR).")
        return resolve_in_folder(self.checkpoint_dir, text, self.max_bytes)

    def add_checkpoint(self, owner: str, base: str, path: str | Path, role: str,
                       name: str | None = None, label: str = "upload") -> str:
        """Read, validate and register a checkpoint for ``owner``; the name it got.

        Args:
            path: an uploaded file or a path from ``resolve``.
            label: its provenance as shown to users (``upload`` or the name typed); never a path.

        Raises:
            CheckpointRefused: the file (one generic line, ``zoo.files``).
            CheckpointError: tensors that do not fit the base (keys, shapes, non-finite).
            ValueError: a bad role, or a checkpoint over the resident-bytes cap.
        """
        if role not in ("natural", "robust"):
            raise ValueError("role must be natural or robust")
        tensors = read_checkpoint_file(path, self.max_bytes)   # outside the engine lock
        stem = _NAME.sub("-", (name or Path(str(path)).stem).strip())[:48].strip("-.") or "checkpoint"
        svc = self.service
        with svc.lock(base):
            eng = svc.engine(base)
            nbytes = eng.vector_bytes()
            for victim in self.added.admit(stem, owner, nbytes):
                log.info("evicting added checkpoint %r (least recently used)", victim)
                eng.remove_entry(victim)
                self.added.remove(victim)
            final, i = stem, 2
            while final in eng.manifest.models:
                final, i = f"{stem}-{i}", i + 1
            entry = replace(eng.manifest.get(eng.base), name=final, role=role, weights=f"added:{final}",
                            towers=("visual", "text"), provenance={"source": label[:80]})
            eng.add_entry(entry, tensors)
            self.added.add(final, owner, nbytes)
        return final

    def refused(self) -> str:
        return refused_message(self.max_bytes)
