"""The application service shared by the web UI and the CLI: the one layer that touches engines.

A ``Service`` serves one manifest on one device with one results store. Its operations take
plain values (manifest names, config objects, uint8 images, file paths) and return plain values
(result rows, uint8 images, probability dicts, statistics), so the UI's handlers never see a
tensor; ``engine()`` hands the resident engine itself to core callers (CLI commands, reports).
Engines are built on first use, one per base, each behind its own lock (``EngineCache``), and
shared by every session of the app; they never live in ``gr.State``.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save_file

from explorer.attacks import find_attack
from explorer.config import AttackSpec, Defaults, EvalSpec, MergeSpec, PointSpec, SweepSpec, resolve_defaults
from explorer.core.cancel import Cancelled, CancelToken, check_cancelled, current_token, scoped
from explorer.core.device import check_device
from explorer.core.fairlock import FairRLock
from explorer.core.taskvec import flat_stats
from explorer.engine.anytime import FIRST_CHUNK, NO_RULE, StopRule
from explorer.engine.frontier import Engine
from explorer.engine.points import sweep_grid
from explorer.executors import (
    Executor,
    run_anytime,
    sweep_jobs,
)
from explorer.executors.pool import ExecutorPool
from explorer.store import Store
from explorer.zoo import Manifest, entry_from_path, load_manifest

from . import imageops
from .background import BackgroundSweep
from .engines import EngineCache
from .images import DEFAULT_MAX_PIXELS, check_input_form, read_image, to_input_form
from .jobs import Limits
from .policy import Serving

log = logging.getLogger(__name__)


class Service:
    """What one running app or command serves: a manifest, a device, a results store.

    Args:
        manifest_path: TOML manifest (None: the demo zoo's).
        device: ``cpu``, ``cuda``, ``cuda:1`` ... (None: the best available).
        store_path: SQLite results store; ``"none"`` for no store (None: the default path).
        max_pixels: images with more pixels are refused before decoding (``decode_image``).
        executor: where sweeps run: ``local`` (the resident engine) or ``ray`` (Ray actors).
        ray_address: the Ray cluster to join (``ray`` only; None starts Ray on this machine).
        workers: number of Ray actors (``ray`` only; default one per GPU, else per CPU).

    Raises:
        ExecutorError: an unknown executor, or Ray options without ``executor="ray"``.
    """

    def __init__(self, manifest_path: str | None = None, device: str | None = None,
                 store_path: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, *,
                 executor: str = "local", ray_address: str | None = None, workers: int | None = None) -> None:
        self.zoo: Manifest = load_manifest(manifest_path)   # as read: never modified
        self.manifest_path = str(self.zoo.path)
        # how uploads are brought to the zoo's data (images.INPUT_FORMS); "as-is" by default
        self.input_form = check_input_form(str(self.zoo.defaults.get("input", "as-is")))
        self.device = check_device(device)
        self.store: Store | None = Store(store_path) if store_path != "none" else None
        self.defaults: Defaults = resolve_defaults(self.zoo.defaults, self.zoo.names("base"))
        self.engines = EngineCache(self._build)
        # Where points run: the one place that knows (explorer.executors.pool).
        self.executors = ExecutorPool(executor, self.engines.with_lock, lambda: self.manifest, device=self.device,
                                      store=self.store, address=ray_address, workers=workers)
        self.max_pixels = int(max_pixels)
        self._background: dict[str, BackgroundSweep] = {}   # sweep digest -> its background run
        self._background_guard = threading.Lock()
        # The background AutoAttack curve gives the engine to interactive requests (anytime_sweep's
        # ``yielding``); False: it holds the engine for its whole chunk (bench --interactive compares).
        self.background_yields = True
        self.serving = Serving(self, Limits.for_device(device))

    def _build(self, base: str) -> Engine:
        log.info("building the engine for base %r on %s", base, self.device or "auto")
        return Engine(self.zoo, base=base, device=self.device, store=self.store)

    @property
    def manifest(self) -> Manifest:
        """The zoo plus the checkpoints added at run time (to any base's engine): a view."""
        added = self.engines.added()
        return Manifest(self.zoo.path, self.zoo.defaults, {**self.zoo.models, **added}) if added else self.zoo

    @property
    def default_base(self) -> str:
        if self.defaults.base is None:
            raise ValueError(f"the manifest {self.manifest_path} names no base model")
        return self.defaults.base

    def engine(self, base: str | None = None) -> Engine:
        """The resident engine of ``base`` (default: the manifest's), built on first use."""
        return self.engines.get(base or self.default_base)

    def lock(self, base: str | None = None) -> FairRLock:
        return self.engines.lock(base or self.default_base)

    def decode_image(self, source: Any) -> np.ndarray:
        """An uploaded image (path, bytes, PIL image or array) as a viewer shows it, then brought to
        the zoo's input form (manifest ``[defaults] input``, e.g. ``fashion-mnist``: 28x28 grey
        silhouette on black): HxWx3 uint8, the picture the model sees.

        Raises:
            ImageError: unreadable, or more than ``max_pixels`` pixels (checked before decoding).
        """
        return to_input_form(read_image(source, self.max_pixels), self.input_form)

    @property
    def executor_kind(self) -> str:
        """``local`` or ``ray``: where sweeps run."""
        return self.executors.kind

    def executor(self, base: str | None = None) -> Executor:
        """Where the sweeps of ``base`` run: its resident engine (under its lock), or this service's
        Ray actors (joined on first use; ``ExecutorError`` when Ray is missing or unreachable)."""
        return self.executors.get(base or self.default_base)

    def close(self) -> None:
        """Release the Ray actors (and Ray, when this service started it)."""
        self.executors.close()

    # ------------------------------------------------------------------ points
    def point(self, base: str, natural: Sequence[str], robust: Sequence[str], spec: MergeSpec,
              attack: AttackSpec, ev: EvalSpec, reuse: bool = False) -> dict[str, Any]:
        """One merged model's clean and robust accuracy (served from the store when known).

        Raises ``Cancelled`` (before it starts, or inside the attack) once the enclosing cancel
        token is set (``explorer.core.cancel``).
        ``reuse=True`` (the live preview) also tries adversarial examples carried over from
        earlier points: faster, history-dependent, labelled ``+reuse`` and stored apart.
        """
        with self.lock(base):
            check_cancelled()   # superseded while it waited for the lock
            return self.engine(base).point(list(natural), list(robust), spec, attack, ev, use_bank=reuse)

    def sweep(self, spec: SweepSpec) -> Iterator[dict]:
        """Stream the points of a sweep, starting with the pretrained model (all lambdas 0), from
        ``executor(spec.base)``: locally in order, on Ray as they finish (any order).

        Under a reported-tier attack (AutoAttack, APGD) this is ``anytime_sweep``: rows after every
        chunk, partial ones ``final=False``. The engine lock is held per point only (per chunk when
        anytime), so other sessions interleave. A set cancel token ends the stream (iterate with
        ``cancel.scoped(token, ...)`` from a handler whose steps run in different threads); finished
        points are in the store.
        """
        if find_attack(spec.attack.name).tier == "reported":   # AutoAttack / APGD: coarse first
            yield from self.anytime_sweep(spec)
            return
        yield from (row for _, row in self.executor(spec.base).run(_with_pretrained(spec)))

    def anytime_sweep(self, spec: SweepSpec, *, rule: StopRule = NO_RULE, first: int = FIRST_CHUNK,
                      token: CancelToken | None = None, chunk: int | None = None,
                      yielding: bool = False) -> Iterator[dict]:
        """The sweep's points (the pretrained model first) grown coarse first: a contract row after
        every chunk (``n_done`` of ``n``, ``final``, accuracies and Wilson intervals over the images
        done; the same ``key`` each time a point grows: replace by key).

        The engine lock is held per chunk only, so sliders and other sessions interleave; ``token``
        (or the caller's cancel scope) stops it between or inside chunks, every finished image
        kept. ``chunk`` caps the images per chunk, so the lock is never held for more (default: a
        round's growth at once). On Ray, whole points come back as they finish (every row final;
        see ``executors.run_anytime``).

        ``yielding=True`` (the app's background curve, from a thread marked background): whenever
        another request waits for the engine lock (a slider's preview, Inspect, a page user's own
        sweep), the chunk in flight is abandoned at the attack's next step, the lock goes to that
        request, and the sweep resumes from the store where it was (``LocalExecutor.anytime``).
        Interactive work then waits for one attack step, not one chunk.
        """
        token = token if token is not None else current_token()
        gen = run_anytime(self.executor(spec.base), _with_pretrained(spec), rule=rule, first=first, chunk=chunk,
                          yielding=yielding)
        try:
            for _, row in scoped(token, gen):
                yield row
        except Cancelled:
            log.info("anytime sweep stopped; every finished image is in the store")
        finally:
            gen.close()

    def background_sweep(self, spec: SweepSpec, after: BackgroundSweep | None = None) -> BackgroundSweep:
        """The sweep ``spec`` computed in a background thread, started on the first call and
        shared by every later call with the same spec (the app's default curve); ``after``: a
        sweep to finish first. Under a reported-tier attack it is an anytime sweep (coarse first)
        in chunks of ``FIRST_CHUNK`` images that yields the engine to any interactive request
        (``anytime_sweep``, ``yielding=True``)."""
        key = spec.digest()
        with self._background_guard:
            job = self._background.get(key)
            if job is None:
                total = 1 + len(sweep_grid(spec))
                anytime = find_attack(spec.attack.name).tier == "reported"

                def rows() -> Iterator[dict]:
                    if anytime:
                        return self.anytime_sweep(spec, chunk=FIRST_CHUNK, yielding=self.background_yields)
                    return self.sweep(spec)
                job = self._background[key] = BackgroundSweep(rows, total, after=after, label=spec.attack.label)
        return job.start()

    def background_rows(self) -> list[dict]:
        """The latest row of every point of the background sweeps started so far (partial ones
        included: ``final=False``), without starting any."""
        with self._background_guard:
            jobs = list(self._background.values())
        return [row for job in jobs for row in job.snapshot().rows]

    def merged_checkpoint(self, base: str, names: Sequence[str], spec: MergeSpec, out: Path) -> Path:
        """Write the merged weights as ``.safetensors`` (provenance in the metadata)."""
        with self.lock(base):
            sd = self.engine(base).merged_state_dict(list(names), spec)
        meta = {"base": base, "vectors": ",".join(names), "merge": spec.to_json()}
        save_file({k: v.contiguous() for k, v in sd.items()}, str(out), metadata=meta)
        return out

    # ------------------------------------------------------------------ inspect
    def inspect(self, base: str, models: imageops.Models, image: np.ndarray, classnames: Sequence[str],
                attack: AttackSpec, templates: Sequence[str] | None = None) -> dict[str, Any]:
        """Zero-shot predictions before/after a white-box attack, for each named merged model
        (``imageops.inspect``: its arguments, return value and errors)."""
        imageops.check_class_count(attack, classnames)   # before waiting for the lock
        with self.lock(base):
            return imageops.inspect(self.engine(base), models, image, classnames, attack, templates)

    def filmstrip(self, base: str, natural: Sequence[str], robust: Sequence[str], merge: MergeSpec,
                  alphas: Sequence[float], image: np.ndarray, classnames: Sequence[str],
                  attack: AttackSpec) -> list[dict[str, Any]]:
        """One image attacked on the merge at each alpha (``imageops.filmstrip``)."""
        with self.lock(base):
            return imageops.filmstrip(self.engine(base), natural, robust, merge, alphas, image, classnames, attack)

    def transfer(self, base: str, models: imageops.Models, image: np.ndarray, classnames: Sequence[str],
                 attack: AttackSpec) -> dict[str, Any]:
        """One image attacked on each model, classified by every model (``imageops.transfer``)."""
        with self.lock(base):
            return imageops.transfer(self.engine(base), models, image, classnames, attack)

    # ------------------------------------------------------------------ models
    def vector_stats(self, base: str, names: Sequence[str]) -> dict[str, Any]:
        """Norms, pairwise cosine similarity and per-layer L2 norms of the named task vectors.

        Returns: ``{"table": [row per vector], "cos": k x k, "layers": labels,
        "layer_norms": {name: [norm per layer]}}`` (``taskvec.flat_stats`` computes them).
        """
        with self.lock(base):
            eng = self.engine(base)
            vecs = [eng.vector(n) for n in names]
            s = flat_stats([v.tau for v in vecs], eng.layout)
            roles = [eng.manifest.get(n).role for n in names]
        table = [{"vector": n, "role": role, "L2 norm": l2, "Linf norm": linf,
                  "nonzero fraction": round(nz, 4), "touches text tower": v.touches_text}
                 for n, role, v, l2, linf, nz in zip(names, roles, vecs, s.l2, s.linf, s.nonzero)]
        return {"table": table, "cos": s.cosine, "layers": s.layers,
                "layer_norms": dict(zip(names, s.layer_norms))}

    def add_checkpoint(self, base: str, path: str, name: str | None, role: str) -> str:
        """Validate a local checkpoint against the base architecture and register it; its name.

        For trusted callers (Python, the CLI): any local path. A page user adds checkpoints
        through ``self.serving.add_checkpoint`` (uploads or an allowed folder, bounded, scoped).

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: keys, shapes or weights that do not fit the base, or a name in use.
        """
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"no file at {p}")
        with self.lock(base):
            eng = self.engine(base)
            entry = entry_from_path(p, like=eng.manifest.get(eng.base), name=name or None, role=role)
            if entry.name in eng.manifest.models:
                raise ValueError(f"a model named {entry.name!r} already exists; choose another name")
            eng.add_entry(entry)
        return entry.name


def _with_pretrained(spec: SweepSpec) -> list[PointSpec]:
    """The sweep's points after its pretrained model (every lambda 0: the base itself)."""
    pre = MergeSpec(method="task_arithmetic", lambdas=(0.0,) * (len(spec.natural) + len(spec.robust)))
    return [PointSpec(spec.natural, spec.robust, pre, spec.attack, spec.eval, spec.base), *sweep_jobs(spec)]
