"""Frontier engine: merged models on the clean vs robust accuracy plane, streamed and stored.

The engine keeps theta_pre and every fine-tuned model as flat float32 buffers on the device and
the model's parameters as views into one flat buffer, so a merge is one pass written into the
resident model (no state-dict rebuild, no disk read, no re-creation). Eval sets and text heads
are cached. Every point is committed to the store as it finishes; a re-run is served from the store.

A point's number depends only on its spec: by default every point is attacked afresh, so
alpha = 0 / 1 of a sweep equal the endpoints evaluated alone, bit for bit, whatever ran before.
Carrying adversarial examples between points (``use_bank=True``: examples found at one point are
tried first at the next) is an explicit variant: its rows' attack label ends in ``REUSE_TAG``
and its store key differs, so its numbers (tighter, history-dependent) never pass for the others.
Invalid merges and non-finite logits fail the point (``finite.InvalidPointError``); nothing is stored.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from explorer.calibrate import prepare_context
from explorer.config import AttackSpec, EvalSpec, MergeSpec, PointSpec, SweepSpec, resolve_defaults
from explorer.core.cancel import Cancelled, check_cancelled
from explorer.core.device import check_device, check_precision, default_device, float32_precision, in_own_precision
from explorer.core.finite import InvalidPointError
from explorer.core.heap import release_freed_heap
from explorer.evaluation.activation import budget_for
from explorer.evaluation.evaluate import EvalOptions, Images, evaluate
from explorer.merging import canonical_spec
from explorer.store import Store
from explorer.zoo import Manifest, ModelEntry, load_manifest

from . import keys
from .inputs import EvalInputs
from .merge_cache import MergeCache, Merged
from .models import ResidentModels
from .points import failed_row, point_row, sweep_grid
from .resident import Vector, flat_digest
from .runner import PointRunner

log = logging.getLogger(__name__)

# Suffix of the attack label of points whose attack also tried adversarial examples carried over
# from earlier points (the ``use_bank=True`` variant).
REUSE_TAG = " +reuse"

__all__ = ["Engine", "Vector", "default_device", "flat_digest"]


def _part(part: str, name: str, doc: str) -> property:
    """A read-only attribute of the engine that is its part's (``self.<part>.<name>``)."""
    return property(lambda self: getattr(getattr(self, part), name), doc=doc)


class Engine:
    """Resident merge + evaluation engine for one manifest and base model: a thin composition of
    ``models`` (the weights on the device, ``ResidentModels``), ``merges`` (which merge theta holds,
    ``MergeCache``), ``inputs`` (classifiers, attack twins, eval images, batch plans: ``EvalInputs``)
    and ``runner`` (points grown over the per-image store, ``PointRunner``).

    Args:
        manifest: a ``Manifest`` or the path of one (default: the demo zoo); never modified
            (checkpoints added at run time live in ``models.added``; ``manifest`` shows them).
        base: manifest name of the pretrained model (default: the manifest's default).
        device: ``"cuda"``/``"cpu"`` (default: cuda when available).
        store: results store (default: none, nothing persisted).
        batch_size: the most images per evaluation/attack batch (default 256 on CPU, 512 on
            CUDA); the batch used is smaller where autograd's saved activations of that many
            images would exceed ``activation_budget`` (``batch_plan``; results do not depend on it
            for the preview attacks, which seed every image by its id).
        activation_budget: bytes of saved activations one attack batch may hold (default
            ``activation.BUDGETS``: 128 MiB on CPU, 640 MiB on CUDA; a constant per device type, so
            a point's batch, hence its AutoAttack numbers, never depend on free memory).
        fast_attack: compute attack gradients on an ``AttackTwin`` (BatchNorm folded,
            channels-last) where the tower has one; proofs are still checked on the model.
        precision: ``"tf32"`` (default) lets CUDA matmuls/convolutions use TF32; ``"fp32"``
            forbids it; set around the engine's own work only (``merge``, ``point`` and what they
            run, ``precision_scope`` for callers attacking its model), the process's switches
            as they were outside. No effect on CPU.
    """

    manifest = _part("models", "manifest", "The zoo plus the checkpoints added at run time (a view).")
    model = _part("models", "model", "The open_clip model; its parameters are views into ``theta``.")
    tokenizer = _part("models", "tokenizer", "The model's tokenizer.")
    reference = _part("models", "reference", "The state dict as storage-free ``meta`` tensors.")
    layout = _part("models", "layout", "Keys and flat segments of ``pre``, ``theta`` and every vector.")
    pre = _part("models", "pre", "theta_pre, flat ``(N,)`` float32 on the device.")
    theta = _part("models", "theta", "The merged weights, flat ``(N,)`` float32 (backs ``model``).")
    base_digest = _part("models", "base_digest", "Content hash of theta_pre.")
    base_report = _part("models", "base_report", "How the base was read (``flatload.LoadReport``).")
    cache_dir = _part("models", "cache_dir", "Where remote checkpoints are cached.")
    _vectors = _part("models", "vectors", "The resident vectors by name.")
    _text_segments = _part("models", "text_segments", "Flat segments outside the visual tower.")
    calibration = _part("merges", "calibration", "Scores/posteriors of data-aware methods.")
    normalization = _part("inputs", "normalization", "``EvalInputs.normalization`` (the vectors' input form).")
    classifier = _part("inputs", "classifier", "``EvalInputs.classifier``: the task's zero-shot classifier.")
    attack_model = _part("inputs", "attack_model", "``EvalInputs.attack_model``: the classifier's twin.")
    eval_data = _part("inputs", "eval_data", "``EvalInputs.eval_data``: an eval set's images on the device.")
    batch_plan = _part("inputs", "batch_plan", "``EvalInputs.batch_plan``: the batch for an eval set.")
    bank = _part("inputs", "bank", "``EvalInputs.bank``: adversarial examples so far (``+reuse``).")
    preprocess_cfg = _part("inputs", "preprocess_cfg", "``EvalInputs.preprocess_cfg``: open_clip's.")

    def __init__(self, manifest: Manifest | str | Path | None = None, base: str | None = None,
                 device: str | None = None, store: Store | None = None, batch_size: int | None = None,
                 fast_attack: bool = True, precision: str = "tf32",
                 activation_budget: int | None = None) -> None:
        zoo = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        self.base = base or resolve_defaults(zoo.defaults, zoo.names("base")).base
        self.device = torch.device(check_device(device) or default_device())
        self.precision = check_precision(precision)   # tests/test_cuda.py bounds TF32's effect
        self.store = store
        # At the memory floor (explorer.engine.resident): meta reference, flat pre + theta, the model's
        # parameters views into theta; integer buffers are the model's own (set from the file).
        self.models = ResidentModels(zoo, self.base, self.device)
        self.merges = MergeCache(self.models)
        self.inputs = EvalInputs(self.models, self.device, fast_attack,
                                 batch_size or (512 if self.device.type == "cuda" else 256),
                                 activation_budget or budget_for(self.device))
        self.runner = PointRunner(self)   # history-free points, grown over the per-image store

    # ------------------------------------------------------------------ models
    def vector(self, name: str) -> Vector:
        """The named fine-tune, loaded once and kept resident (missing towers = pretrained)."""
        return self.models.vector(name)

    def vectors(self, names: Sequence[str]) -> list[Vector]:
        return [self.models.vector(n) for n in names]

    def unload(self, name: str) -> None:
        """Drop a resident vector (its memory is freed once no caller holds it)."""
        self.models.unload(name)

    def add_entry(self, entry: ModelEntry, tensors: dict[str, torch.Tensor] | None = None) -> Vector:
        """Register a new checkpoint (validated against the base architecture) and load it
        (``ResidentModels.add``); nothing is registered when validation fails."""
        return self.models.add(entry, tensors)

    def remove_entry(self, name: str) -> None:
        """Forget a checkpoint added at run time: its entry and its resident vector."""
        self.models.remove(name)

    def vector_bytes(self) -> int:
        """Resident bytes of one task vector (its flat fine-tuned weights)."""
        return self.models.vector_bytes()

    def precision_scope(self) -> AbstractContextManager[None]:
        """This engine's ``precision`` inside, the caller's switches after (``float32_precision``)."""
        return float32_precision(self.precision)

    @in_own_precision
    def merge(self, names: Sequence[str], spec: MergeSpec) -> Merged:
        """Write ``theta_pre + sum_i c_i * tau_i`` (method ``spec.method``) into the resident model;
        the ``Merged`` record (names, spec, the preparer's cost). ``MergeCache.merge`` raises."""
        done = self.merges.merge(names, spec, self)
        self.inputs.refresh(done)
        return done

    @in_own_precision
    def ensure_merged(self, names: Sequence[str], spec: MergeSpec) -> Merged:
        """``merge`` unless the resident model holds that merge already; the record either way."""
        done, written = self.merges.ensure(names, spec, self)
        if written:
            self.inputs.refresh(done)
        return done

    def context(self, names: Sequence[str], spec: MergeSpec) -> dict:
        """Extras a method needs (e.g. stability scores): its record's preparer, run against this
        engine (a ``CalibrationHost``) and ``self.calibration``, so computed once per setting."""
        return prepare_context(self, names, spec, self.calibration)

    def merged_state_dict(self, names: Sequence[str], spec: MergeSpec) -> dict[str, torch.Tensor]:
        """The merged weights as a complete CPU state dict (for download / the plain path).

        Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are not merged: the base's.
        """
        self.merge(names, spec)
        out = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
               if not v.is_floating_point()}
        out.update({k: v.detach().cpu().clone() for k, v in self.layout.unflatten(self.theta).items()})
        return {k: out[k] for k in self.reference if k in out}

    # ------------------------------------------------------------------ points
    def point_key(self, names: Sequence[str], spec: MergeSpec, attack: AttackSpec, ev: EvalSpec,
                  use_bank: bool = False) -> str:
        """Store key of a point: a hash of (code version, weights digests, merge, attack, eval)
        (``keys.point_key``; loads the vectors for their digests)."""
        return keys.point_key(self.base_digest, [self.vector(n).digest for n in names], spec, attack, ev,
                              use_bank, self.normalization(names))

    def image_key(self, names: Sequence[str], spec: MergeSpec, attack: AttackSpec, ev: EvalSpec) -> str:
        """Key of a point's per-image rows (``Store.images``): the point key without ``ev.n``."""
        return keys.image_key(self.base_digest, [self.vector(n).digest for n in names], spec, attack, ev,
                              self.normalization(names))

    @in_own_precision
    def point(self, natural: Sequence[str], robust: Sequence[str], spec: MergeSpec, attack: AttackSpec,
              ev: EvalSpec, *, use_store: bool = True, use_bank: bool = False, sweep: str | None = None,
              progress: bool = False) -> dict[str, Any]:
        """Merge, evaluate and store one point; served from the store when already computed.

        Under a set cancel token (``explorer.core.cancel``) the point is abandoned inside its
        attack (``Cancelled``; nothing stored) and the model stays as merged. Settings the
        method ignores are reset first (``canonical_spec``): the row reports what was computed.
        ``use_bank=True`` is the labelled reuse variant (module docstring).

        The merge is evaluated with its vectors' declared input normalisation (row ``normalize``).

        Raises:
            InvalidPointError: the merged weights or the logits are invalid (nothing stored).
            Cancelled: the enclosing cancel scope's token was set (nothing stored).
            ValueError: the vectors declare different normalisations (``normalization``).
        """
        spec = canonical_spec(spec)
        names = [*natural, *robust]
        key = self.point_key(names, spec, attack, ev, use_bank)
        if use_store and self.store is not None:
            row = self.store.get(key)
            if row is not None:
                return {**row, "cached": True}
        if not use_bank:   # history-free: grown over the per-image store (explorer.engine.runner)
            return self._grown_point(PointSpec(tuple(natural), tuple(robust), spec, attack, ev), use_store, sweep)
        t0 = time.perf_counter()
        merged = self.merge(names, spec)
        t1 = time.perf_counter()
        normalize = self.normalization(names)
        clf = self.classifier(ev.task, normalize)
        x, y = self.eval_data(ev)
        attacked = attack.name != "none" and attack.eps > 0
        res = evaluate(clf, Images(x, y), attack,
                       EvalOptions(batch_size=self.batch_plan(ev, normalize, attacked).batch, progress=progress),
                       attack_model=self.attack_model(ev.task, normalize) if attacked else None,
                       bank=self.bank(ev, attack))
        release_freed_heap()   # the attack's activations: resident memory back to the floor (explorer.core.heap)
        row = point_row(res, spec, attack, ev, natural, robust, self.base, key,
                        seconds=time.perf_counter() - t0, merge_seconds=t1 - t0, device=str(self.device))
        row["reuse"] = use_bank
        if merged.prep_cost is not None:
            row["prep_cost"] = merged.prep_cost   # forward/backward passes and seconds of the scores
        row["normalize"] = normalize
        row["attack"] += REUSE_TAG
        if self.store is not None:
            self.store.put(key, row, res.clean_correct.numpy(), res.robust.numpy(), sweep=sweep)
        return row

    def _grown_point(self, p: PointSpec, use_store: bool, sweep: str | None) -> dict[str, Any]:
        """A whole point through the runner, one chunk per attack batch (no batch efficiency is
        lost: the attack would split the images into such batches anyway); ``use_store=False``
        computes every image afresh."""
        # A private image store unless this engine has a real one: ``use_store=False``, and a Ray
        # worker (its store an Outbox) computes every point afresh, as before.
        runner = self.runner if use_store and isinstance(self.store, Store) else PointRunner(self, Store(":memory:"))
        normalize = self.normalization(p.names)
        attacked = p.attack.name != "none" and p.attack.eps > 0
        chunk = self.batch_plan(p.eval, normalize, attacked).batch
        rows = list(runner.grow(p, p.eval.n, chunk, sweep=sweep))
        assert rows and rows[-1]["final"], "a grown point ends final"
        return rows[-1]

    def model_point(self, name: str, attack: AttackSpec, ev: EvalSpec, **kwargs: Any) -> dict[str, Any]:
        """One manifest model by itself: the base (no vectors) or a fine-tune at lambda = 1."""
        if name == self.base:
            return self.point([], [], MergeSpec(lambdas=()), attack, ev, **kwargs)
        names = [name]
        nat, rob = ([], names) if self.manifest.get(name).role == "robust" else (names, [])
        return self.point(nat, rob, MergeSpec(lambdas=(1.0,)), attack, ev, **kwargs)

    def point_or_failure(self, p: PointSpec, *, use_bank: bool = False) -> dict[str, Any]:
        """``point`` of ``p``; a point whose merge or logits are invalid (``finite.InvalidPointError``)
        is its failure row instead (``points.failed_row``: ``error`` set, accuracies None, not stored)."""
        try:
            return self.point(p.natural, p.robust, p.spec, p.attack, p.eval, sweep=p.sweep, use_bank=use_bank)
        except InvalidPointError as exc:   # this point has no accuracy; the others do
            log.warning("point %s lambdas=%s failed: %s", p.spec.method, p.spec.lambdas, exc)
            return failed_row(exc, canonical_spec(p.spec), p.attack, p.eval, p.natural, p.robust, self.base)

    def sweep(self, spec: SweepSpec, *, on_point: Callable[[dict], None] | None = None,
              progress: bool = True, use_bank: bool = False) -> Iterator[dict]:
        """Stream the points of alpha x keep x method, in that nesting (neighbours adjacent).

        Every point is attacked afresh (numbers independent of what the session computed
        before); ``use_bank=True`` is the labelled reuse variant (faster, history-dependent). A grid point that is the same merge as an earlier one once
        the settings its method ignores are dropped (task arithmetic at every keep) is yielded
        once. A point whose merge or logits are invalid (``finite.InvalidPointError``) is
        yielded as a failure row (``failed_row``: ``error`` set, accuracies None, not stored) and
        the sweep goes on. A set cancel token (``explorer.core.cancel``; iterate with
        ``cancel.scoped`` when the steps run in different threads) ends the stream, within the
        point in flight, which is abandoned; the points before it are in the store.
        """
        self.normalization([*spec.natural, *spec.robust])   # refuse mixed declarations up front
        sweep_id = spec.digest()[:16]
        for ms in tqdm(sweep_grid(spec), desc="sweep", disable=not progress):
            try:
                check_cancelled()
                row = self.point_or_failure(PointSpec(spec.natural, spec.robust, ms, spec.attack, spec.eval,
                                                      sweep=sweep_id), use_bank=use_bank)
            except Cancelled:
                log.info("sweep stopped by the caller; the points before this one are in the store")
                return
            if on_point is not None:
                on_point(row)
            yield row
