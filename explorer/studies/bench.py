"""``python -m explorer bench``: the engine against a plain per-point path, on the same work.

The plain path is what one writes without the engine: for every point, read the checkpoints,
build task vectors and the merged state dict, create a fresh model, rebuild the text head, and
run torchattacks on every image. The engine's points are its default, history-free ones (no
adversarial examples carried between points). Both paths run the same sweep in one process;
the output gives both times, both robust accuracies and, last, ``speedup ratio: X``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

from explorer.attacks import ATTACKS, find_attack
from explorer.attacks.records import pgd_steps
from explorer.attacks.safety import attack_context
from explorer.config import AttackSpec, EvalSpec, MergeSpec, SweepSpec, resolve_defaults
from explorer.core.taskvec import TaskVector, sum_vectors
from explorer.data import get_task
from explorer.engine.frontier import Engine
from explorer.evaluation.zeroshot import ZeroShotClassifier
from explorer.zoo import Manifest, create_model, load_weights

log = logging.getLogger(__name__)


def plain_classifier(manifest: Manifest, base: str, state_dict: dict[str, torch.Tensor], task: str,
                     device: str | torch.device = "cpu", normalize: str | None = None) -> ZeroShotClassifier:
    """A freshly created model holding ``state_dict``, wrapped as a zero-shot classifier
    (``normalize``: the merged vectors' declared mean/std; default the base's)."""
    entry = manifest.get(base)
    model, tok = create_model(entry)
    model.load_state_dict(state_dict, strict=False)
    model = model.to(device).eval()
    t = get_task(task)
    return ZeroShotClassifier(model, tok, t.classnames, t.templates, normalize=normalize or entry.normalize)


def torchattacks_attack(model: torch.nn.Module, spec: AttackSpec, n_classes: int):
    """The torchattacks object a plain script would use for ``spec`` (all images attacked):
    the attack record's ``plain`` builder (the same published stage settings as the engine's).

    Raises:
        ValueError: the attack has no plain twin (``none``, ``autoattack``).
    """
    record = find_attack(spec.name)
    if record.plain is None:
        names = ", ".join(r.name for r in ATTACKS.values() if r.plain is not None)
        raise ValueError(f"bench supports {names}; got {spec.name}")
    return record.plain(model, spec, n_classes)


def plain_point(manifest: Manifest, base: str, natural: Sequence[str], robust: Sequence[str],
                spec: MergeSpec, attack: AttackSpec, ev: EvalSpec, device: str = "cpu") -> dict:
    """One point the plain way (task arithmetic on state dicts; torchattacks on every image)."""
    t0 = time.perf_counter()
    ref = create_model(manifest.get(base))[0].state_dict()
    pre = load_weights(manifest.get(base), ref)
    vecs = [TaskVector.extract(pre, load_weights(manifest.get(n), ref), n) for n in [*natural, *robust]]
    merged = sum_vectors(vecs, spec.lambdas).apply_to(pre)
    norms = {manifest.get(n).normalize for n in [*natural, *robust]}
    clf = plain_classifier(manifest, base, merged, ev.task, device, norms.pop() if len(norms) == 1 else None)
    x, y = get_task(ev.task).load(ev.split, ev.n, ev.seed)
    x, y = x.to(device), y.to(device)
    torch.manual_seed(attack.seed)
    atk = torchattacks_attack(clf, attack, len(clf.classnames))
    correct, robust_ok = 0, 0
    for i in range(0, x.shape[0], 256):
        xb, yb = x[i:i + 256], y[i:i + 256]
        with torch.no_grad():
            correct += int((clf(xb).argmax(1) == yb).sum())
        adv = atk(xb, yb)
        with torch.no_grad():
            robust_ok += int((clf(adv).argmax(1) == yb).sum())
    n = x.shape[0]
    return {"alpha": spec.alpha, "clean_acc": correct / n, "robust_acc": robust_ok / n,
            "seconds": time.perf_counter() - t0}


def step_seconds(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, reps: int = 10) -> float:
    """Seconds per image of one forward+backward (input gradient of the summed CE) at ``batch``."""
    rows = torch.arange(batch, device=x.device) % len(x)
    xb, yb = x[rows], y[rows]

    def step() -> None:
        xa = xb.clone().requires_grad_(True)
        with torch.enable_grad():
            loss = torch.nn.functional.cross_entropy(net(xa), yb, reduction="sum")
        torch.autograd.grad(loss, xa)

    with attack_context(net):
        for _ in range(3):
            step()
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            step()
        if x.device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - t) / (reps * batch)


def spectral_merge_seconds(engine: Engine, natural: str, robust: str,
                           alphas: Sequence[float]) -> dict[str, list[float]]:
    """Seconds of each merge of the spectral methods over the interior ``alphas`` (0 < alpha < 1:
    one set of live vectors), the decomposition cache (``merging.spectral.CACHE``) emptied
    first: the first merge pays the SVDs, the later ones what the cache leaves."""
    from explorer.merging.spectral import CACHE, SPECTRAL_METHODS

    out: dict[str, list[float]] = {}
    for method in SPECTRAL_METHODS:
        CACHE.clear()
        out[method] = []
        for a in (a for a in alphas if 0.0 < a < 1.0):
            t0 = time.perf_counter()
            engine.merge([natural, robust], MergeSpec.from_alpha(a, method=method))
            out[method].append(time.perf_counter() - t0)
    return out


def run_bench(manifest: Manifest, natural: str, robust: str, attack: AttackSpec, ev: EvalSpec,
              alphas: Sequence[float], device: str | None = None) -> dict:
    """Time the plain path and the engine on the same sweep; returns both and the ratio.

    Also counts the engine's image-steps (rows of forward+backward on its attack model) and,
    for ``pgd-K``, the ones it cannot skip: K for every image robust at a point.
    """
    engine_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    base = resolve_defaults(manifest.defaults, manifest.names("base")).base
    plain_rows, t0 = [], time.perf_counter()
    for a in alphas:
        plain_rows.append(plain_point(manifest, base, [natural], [robust], MergeSpec.from_alpha(a), attack, ev,
                                      engine_device))
    plain_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    engine = Engine(manifest, device=engine_device, store=None)
    spec = SweepSpec(manifest=str(manifest.path), base=engine.base, natural=(natural,), robust=(robust,),
                     alphas=tuple(alphas), attack=attack, eval=ev)
    rows, calls = [0], [0]

    def count(_module, args, _out):
        if torch.is_grad_enabled():
            rows[0] += args[0].shape[0]
            calls[0] += 1

    net = engine.attack_model(ev.task) or engine.classifier(ev.task)
    hook = net.register_forward_hook(count)
    try:
        engine_rows = list(engine.sweep(spec, progress=False))
    finally:
        hook.remove()
    engine_s = time.perf_counter() - t1
    mean = lambda rows: sum(r["robust_acc"] for r in rows) / len(rows)  # noqa: E731
    k = pgd_steps(attack.name)
    batch = max(1, round(rows[0] / max(calls[0], 1)))
    step_s = step_seconds(net, *engine.eval_data(ev), batch)
    spectral = spectral_merge_seconds(engine, natural, robust, alphas)
    return {"device": str(engine.device), "params": engine.layout.numel, "points": len(alphas),
            "attack": attack.label, "n": ev.n, "plain_seconds": plain_s, "engine_seconds": engine_s,
            "plain_robust": mean(plain_rows), "engine_robust": mean(engine_rows),
            "plain_rows": plain_rows, "engine_rows": engine_rows, "speedup": plain_s / engine_s,
            "image_steps": rows[0], "attack_seconds": sum(r["attack_seconds"] for r in engine_rows),
            "step_seconds": step_s, "step_batch": batch, "spectral_merge_seconds": spectral,
            "floor_steps": None if k is None else sum(round(r["robust_acc"] * r["n"]) * k for r in engine_rows)}
