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

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from explorer.calibrate import CalibrationCache, prepare_context
from explorer.config import (
    CODE_VERSION,
    AttackSpec,
    EvalSpec,
    MergeSpec,
    PointSpec,
    SweepSpec,
    resolve_defaults,
)
from explorer.core.cancel import Cancelled, check_cancelled
from explorer.core.device import check_device, check_precision, default_device, float32_precision, in_own_precision
from explorer.core.finite import InvalidPointError, check_merged
from explorer.core.heap import release_freed_heap
from explorer.evaluation.activation import BatchPlan, budget_for
from explorer.evaluation.evaluate import AdversarialBank, EvalOptions, Images, evaluate
from explorer.evaluation.zeroshot import ZeroShotClassifier
from explorer.merging import (
    MergedDelta,
    MergeInputs,
    apply_coefficients,
    canonical_spec,
    merge_coefficients,
    method_version,
    validate_spec,
)
from explorer.store import Store
from explorer.zoo import Manifest, ModelEntry, create_model, load_manifest
from explorer.zoo.flatload import cache_dir_of

from .attack_twin import AttackTwin
from .inputs import EvalInputs
from .points import failed_row, point_row, sweep_grid
from .resident import (
    Vector,
    constant_coefficients,
    flat_digest,
    load_base,
    load_vector,
    text_segments,
    vector_from_tensors,
)
from .runner import PointRunner

log = logging.getLogger(__name__)

# Suffix of the attack label of points whose attack also tried adversarial examples carried over
# from earlier points (the ``use_bank=True`` variant).
REUSE_TAG = " +reuse"

__all__ = ["Engine", "Vector", "default_device", "flat_digest"]


class Engine(EvalInputs):
    """Resident merge + evaluation engine for one manifest and base model.

    Args:
        manifest: a ``Manifest`` or the path of one (default: the demo zoo).
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

    def __init__(self, manifest: Manifest | str | Path | None = None, base: str | None = None,
                 device: str | None = None, store: Store | None = None, batch_size: int | None = None,
                 fast_attack: bool = True, precision: str = "tf32",
                 activation_budget: int | None = None) -> None:
        self.manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        self.base = base or resolve_defaults(self.manifest.defaults, self.manifest.names("base")).base
        self.device = torch.device(check_device(device) or default_device())
        self.precision = check_precision(precision)   # tests/test_cuda.py bounds TF32's effect
        self.store = store
        self.batch_size = batch_size or (512 if self.device.type == "cuda" else 256)
        self.activation_budget = activation_budget or budget_for(self.device)
        self._plans: dict[tuple, BatchPlan] = {}
        entry = self.manifest.get(self.base)
        model, self.tokenizer = create_model(entry)
        # At the memory floor (explorer.engine.resident): meta reference, flat pre + theta, the model's
        # parameters views into theta; integer buffers are the model's own (set from the file).
        self.cache_dir = cache_dir_of(self.manifest.defaults, self.manifest.path)
        self.reference, self.layout, self.pre, self.theta, self.base_report = load_base(
            entry, model, self.device, self.cache_dir)
        self.model = model
        self.base_digest = flat_digest(self.pre)
        self._text_segments = text_segments(self.layout)
        self._vectors: dict[str, Vector] = {}
        self._classifiers: dict[tuple[str, str], ZeroShotClassifier] = {}   # (task, normalize)
        self.fast_attack = fast_attack
        self._twins: dict[tuple[str, str], AttackTwin | None] = {}
        self._data: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._banks: dict[tuple, AdversarialBank] = {}
        self._text_key: Any = None
        self.calibration = CalibrationCache()  # scores/posteriors of data-aware methods (explorer.calibrate)
        self.last_prep_cost: dict | None = None  # the last merge's preparer cost (context["prep_cost"])
        self.merged: tuple[tuple[str, ...], MergeSpec] | None = None   # what the resident model holds
        self.runner = PointRunner(self)   # history-free points, grown over the per-image store

    # ------------------------------------------------------------------ models
    def vector(self, name: str) -> Vector:
        """The named fine-tune, loaded once and kept resident (missing towers = pretrained)."""
        if name not in self._vectors:
            self._vectors[name] = load_vector(self.manifest.get(name), self.reference, self.layout,
                                              self.pre, self._text_segments, self.cache_dir)
        return self._vectors[name]

    def unload(self, name: str) -> None:
        """Drop a resident vector (its memory is freed once no caller holds it)."""
        self._vectors.pop(name, None)

    def add_entry(self, entry: ModelEntry, tensors: dict[str, torch.Tensor] | None = None) -> Vector:
        """Register a new checkpoint (validated against the base architecture) and load it.

        ``tensors``: the checkpoint's tensors already read (an upload); the entry's ``weights``
        is then a label and never opened. Nothing is registered when validation fails.
        """
        if tensors is not None:
            vec = vector_from_tensors(entry, tensors, self.reference, self.layout, self.pre,
                                      self._text_segments)
            self.manifest.add(entry)
            self._vectors[entry.name] = vec
            return vec
        self.manifest.add(entry)
        self._vectors.pop(entry.name, None)
        try:
            return self.vector(entry.name)
        except Exception:
            self.manifest.models.pop(entry.name, None)
            raise

    def remove_entry(self, name: str) -> None:
        """Forget a checkpoint added at run time: its manifest entry and its resident vector."""
        self.manifest.models.pop(name, None)
        self.unload(name)

    def vector_bytes(self) -> int:
        """Resident bytes of one task vector (its flat fine-tuned weights)."""
        return self.pre.numel() * self.pre.element_size()

    def vectors(self, names: Sequence[str]) -> list[Vector]:
        return [self.vector(n) for n in names]

    def precision_scope(self) -> AbstractContextManager[None]:
        """This engine's ``precision`` inside, the caller's switches after (``float32_precision``)."""
        return float32_precision(self.precision)

    @in_own_precision
    def merge(self, names: Sequence[str], spec: MergeSpec) -> None:
        """Write ``theta_pre + sum_i c_i * tau_i`` (method ``spec.method``) into the resident model.

        ``self.merged`` is then ``(tuple(names), spec)`` (None while a merge is under way or failed),
        so a caller that finds the model already so merged may skip the pass.
        """
        self.merged = None
        self._merge(names, spec)
        self.merged = (tuple(names), spec)

    def _merge(self, names: Sequence[str], spec: MergeSpec) -> None:
        validate_spec(spec)
        vecs = self.vectors(names)
        if len(spec.lambdas) != len(vecs):
            raise ValueError(f"{len(spec.lambdas)} lambdas for {len(vecs)} task vectors {list(names)}")
        self.last_prep_cost = None
        if not vecs:                      # the pretrained model itself
            self.theta.copy_(self.pre)
            check_merged(self.theta, self.layout.keys, self.layout.segments, (), what=f"base {self.base!r}")
            self._refresh_twins()
            self._refresh_text(())
            return
        coeffs = constant_coefficients(spec)
        if coeffs is None:   # the method reads the task vectors: tau made for this merge only
            context = self.context(names, spec)
            self.last_prep_cost = context.get("prep_cost")   # what the method's scores cost to build
            inputs = MergeInputs(taus=[v.tau for v in vecs], segments=self.layout.segments,
                                 names=list(self.layout.keys), shapes=list(self.layout.shapes), context=context)
            coeffs = merge_coefficients(inputs, spec)
            del inputs
        apply_coefficients(self.pre, [v.ft for v in vecs], coeffs, out=self.theta,
                           untouched=[v.untouched for v in vecs])
        # Before anything reads the weights (twins, text head, an attack): no NaN, no negative variance.
        check_merged(self.theta, self.layout.keys, self.layout.segments, spec.lambdas,
                     what=f"{spec.method} merge of {', '.join(names)}")
        self._refresh_twins()
        if isinstance(coeffs, MergedDelta):   # no per-vector coefficients: key the text by the spec
            self._refresh_text(((spec.digest(),) if any(v.touches_text for v in vecs) else ()))
            return
        self._refresh_text(tuple((v.name, c if isinstance(c, float) else spec.digest())
                                 for v, c in zip(vecs, coeffs)
                                 if v.touches_text and (not isinstance(c, float) or c != 0)))

    def _refresh_twins(self) -> None:
        for twin in self._twins.values():
            if twin is not None:
                twin.refresh()

    def _refresh_text(self, text_key: tuple) -> None:
        """Recompute the class embeddings when the merged text tower changed."""
        if text_key != self._text_key:
            self._text_key = text_key
            for clf in self._classifiers.values():
                clf.refresh_text_head(key=repr(text_key))

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
        """Store key of a point: a hash of (code version, weights digests, merge, attack, eval)."""
        return hashlib.sha256("|".join(self.key_parts(names, spec, attack, ev.to_json(), use_bank)).encode()).hexdigest()

    def image_key(self, names: Sequence[str], spec: MergeSpec, attack: AttackSpec, ev: EvalSpec) -> str:
        """Key of a point's per-image rows (``Store.images``): the point key's parts with the eval
        set's ``n`` left out, since image i is the same image at every n (nested sets)."""
        ev_part = {k: v for k, v in ev.to_dict().items() if k != "n"}
        parts = self.key_parts(names, spec, attack, "images:" + json.dumps(ev_part, sort_keys=True), False)
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def key_parts(self, names: Sequence[str], spec: MergeSpec, attack: AttackSpec, ev_part: str,
                  use_bank: bool) -> list[str]:
        parts = [CODE_VERSION, self.base_digest, *[self.vector(n).digest for n in names],
                 spec.to_json(), attack.to_json(), ev_part]
        # History-free numbers and reuse-tightened ones are stored apart ("fresh" is the marker
        # history-free points always had; rows stored without a marker came from the old default).
        parts.append("reuse" if use_bank else "fresh")
        normalize = self.normalization(names)
        if normalize != "clip":   # CLIP's is what every point was evaluated with before it was named
            parts.append(f"normalize={normalize}")
        if method_version(spec.method) > 1:
            parts.append(f"{spec.method}@{method_version(spec.method)}")
        return parts

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
        self.merge(names, spec)
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
        if self.last_prep_cost is not None:
            row["prep_cost"] = self.last_prep_cost   # forward/backward passes and seconds of the scores
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
                row = self.point(spec.natural, spec.robust, ms, spec.attack, spec.eval, sweep=sweep_id,
                                 use_bank=use_bank)
            except Cancelled:
                log.info("sweep stopped by the caller; the points before this one are in the store")
                return
            except InvalidPointError as exc:   # this point has no accuracy; the others do
                log.warning("sweep point %s lambdas=%s failed: %s", ms.method, ms.lambdas, exc)
                row = failed_row(exc, ms, spec.attack, spec.eval, spec.natural, spec.robust, self.base)
            if on_point is not None:
                on_point(row)
            yield row
