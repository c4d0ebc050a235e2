"""Where points run: ``local`` (the in-process engine, the default) or ``ray`` (Ray actors).

Both take the same ``config.PointSpec`` list and yield the engine's rows; points are history-free by
default (``use_bank=False``), so a Ray sweep's points equal the local sweep's exactly. The
driver alone writes the store. ``make_executor`` is the one entry the CLI and the app use.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Executor, ExecutorError, Outbox, run_anytime, run_in_order, run_sweep, sweep_jobs
from .local import LocalExecutor

if TYPE_CHECKING:
    from explorer.store import Store
    from explorer.zoo import Manifest

EXECUTORS = ("local", "ray")

__all__ = ["EXECUTORS", "Executor", "ExecutorError", "LocalExecutor", "Outbox", "check_executor_options",
           "make_executor", "run_anytime", "run_in_order", "run_sweep", "sweep_jobs"]


def check_executor_options(kind: str, address: str | None = None, workers: int | None = None) -> None:
    """Raise ``ExecutorError`` (one line) for an unknown kind or Ray options on the local executor."""
    if kind not in EXECUTORS:
        raise ExecutorError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    if kind == "local" and (address is not None or workers is not None):
        raise ExecutorError("a Ray address or --workers needs the Ray executor (--executor ray; the app: --ray)")
    if workers is not None and workers < 1:
        raise ExecutorError(f"--workers must be >= 1, got {workers}")


def make_executor(kind: str = "local", *, manifest: Manifest | str | Path | None = None, base: str | None = None,
                  device: str | None = None, store: Store | None = None, address: str | None = None,
                  workers: int | None = None, **engine_kwargs: Any) -> Executor:
    """An executor of ``kind`` for one manifest and base.

    Args:
        kind: ``"local"`` (an ``Engine`` in this process) or ``"ray"``.
        manifest, base, device, store: as for ``Engine``; ``store`` is written by this process only.
        address: Ray cluster address (``ray`` only; None starts a local Ray).
        workers: number of Ray actors (``ray`` only; default one per GPU or per CPU).
        engine_kwargs: ``batch_size``, ``fast_attack``.

    Raises:
        ExecutorError: unknown kind, Ray options given to the local executor, Ray missing or
            unreachable.
    """
    check_executor_options(kind, address, workers)
    if kind == "local":
        from explorer.engine.frontier import Engine
        return LocalExecutor(Engine(manifest, base=base, device=device, store=store, **engine_kwargs))
    from .ray_executor import RayExecutor
    return RayExecutor(manifest, base=base, store=store, address=address, workers=workers,
                       device=device, **engine_kwargs)
