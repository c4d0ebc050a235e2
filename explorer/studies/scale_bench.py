"""``bench --scale ARCH``: load, memory, merge and attack-step costs at real model size, in one run.

On the synthetic fixture (``zoo.synth``; random weights, accuracies meaningless) it measures:

- load seconds per checkpoint (each layout: safetensors, .bin, hf-hub, .pt wrapped and raw, fp16);
- peak resident memory over load + sweep + one full attack batch's forward+backward against the
  floor ``(2 + k) x`` the model's float32 bytes (theta_pre, the merged theta, one flat copy per
  vector), as ``memory / floor``, where
  memory is the peak resident set minus the resident set before loading (the interpreter,
  torch and open_clip libraries), and the absolute peak against the bound ``1.25 x floor + 1 GiB``;
  on CUDA the same for device memory (peak allocated; nothing is resident before loading);
- merge seconds per point (the weight write alone) against a bandwidth floor from the same run:
  ``(2 + k)`` model sizes moved (pre and k fine-tunes read, theta written) at the bandwidth of a
  model-size tensor copy timed alternately with the merge;
- the attack batch the engine chose from its activation budget (``activation``) and the
  forward+backward seconds per image at that batch; the engine against the plain path on the same points.
"""
from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import torch

from explorer.config import AttackSpec, EvalSpec, MergeSpec, SweepSpec
from explorer.engine.frontier import Engine
from explorer.engine.resident import constant_coefficients
from explorer.merging import apply_coefficients
from explorer.zoo import load_manifest

log = logging.getLogger(__name__)
GiB = 2 ** 30
NATURAL, ROBUST = "natural", "robust"          # k = 2: full safetensors + wrapped visual-only .pt
OTHER_LAYOUTS = ("natural_bin", "natural_hub", "robust_raw", "robust_fp16")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (``clear_refs`` 5); returns the current RSS in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:
        log.warning("cannot reset the peak RSS mark (%s); the peak then includes earlier work", exc)
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    """Peak resident set (bytes) since the last ``reset_peak_rss``."""
    return _status_kib("VmHWM") * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def merge_and_copy(engine: Engine, names: list[str], spec: MergeSpec, reps: int = 5) -> tuple[float, float]:
    """Best seconds of the weight write for ``spec`` and of a model-size copy, interleaved.

    The copy (``theta.copy_(pre)``: one model size read, one written) gives the bandwidth floor
    of this run; timing both in alternation makes them share whatever else loads the machine.
    The merge is rewritten last, so theta ends as ``spec``'s merge.
    """
    coeffs = constant_coefficients(spec)
    if coeffs is None:
        raise ValueError("merge_and_copy measures constant-coefficient merges (task arithmetic)")
    vecs = engine.vectors(names)
    fts, untouched = [v.ft for v in vecs], [v.untouched for v in vecs]
    best_copy = best_merge = float("inf")
    for _ in range(reps):
        _sync(engine.device)
        t = time.perf_counter()
        engine.theta.copy_(engine.pre)
        _sync(engine.device)
        best_copy = min(best_copy, time.perf_counter() - t)
        t = time.perf_counter()
        apply_coefficients(engine.pre, fts, coeffs, out=engine.theta, untouched=untouched)
        _sync(engine.device)
        best_merge = min(best_merge, time.perf_counter() - t)
    return best_merge, best_copy


def measure_engine(manifest_path: Path, device: str, alphas: tuple[float, ...], attack: AttackSpec,
                   ev: EvalSpec) -> dict:
    """Load base + 2 vectors and sweep, measuring peak memory; then the other layouts' load times."""
    dev = torch.device(device)
    rss0 = reset_peak_rss()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    cuda0 = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
    t = time.perf_counter()
    engine = Engine(load_manifest(manifest_path), device=device, store=None)   # its own batch choice
    loads = {engine.base: (time.perf_counter() - t, engine.base_report)}
    for name in (NATURAL, ROBUST):
        t = time.perf_counter()
        v = engine.vector(name)
        loads[name] = (time.perf_counter() - t, v.report)
    spec = SweepSpec(manifest=str(manifest_path), base=engine.base, natural=(NATURAL,), robust=(ROBUST,),
                     alphas=alphas, attack=attack, eval=ev)
    t = time.perf_counter()
    rows = list(engine.sweep(spec, progress=False, use_bank=False))
    sweep_s = time.perf_counter() - t
    # Random weights are right on ~1 image in n_classes, so the sweep's attack may see fewer
    # images than a batch: a full attack batch's forward+backward is timed inside the window.
    from .bench import step_seconds
    plan = engine.batch_plan(ev, attacked=True)
    net = engine.attack_model(ev.task) or engine.classifier(ev.task)
    step_s = step_seconds(net, *engine.eval_data(ev), batch=plan.batch, reps=3)
    out = {"rss_before": rss0, "rss_peak": peak_rss(), "rows": rows, "sweep_seconds": sweep_s,
           "params": engine.layout.numel, "device": str(engine.device), "plan": plan, "step_seconds": step_s}
    if dev.type == "cuda":
        out["cuda_peak"] = torch.cuda.max_memory_allocated(dev) - cuda0
    timed = [merge_and_copy(engine, [NATURAL, ROBUST], MergeSpec.from_alpha(a)) for a in alphas]
    out["merge_seconds"] = [m for m, _ in timed]
    out["copy_seconds"] = min(c for _, c in timed)
    for name in OTHER_LAYOUTS:            # outside the memory window: one more copy, then dropped
        if name in engine.manifest.models:
            t = time.perf_counter()
            v = engine.vector(name)
            loads[name] = (time.perf_counter() - t, v.report)
            del v
            engine.unload(name)
    out["loads"] = loads
    del engine, net
    gc.collect()
    return out


def run_scale_bench(manifest_path: Path, device: str, attack: AttackSpec, ev: EvalSpec,
                    alphas: tuple[float, ...] = (0.0, 0.5, 1.0), plain: bool = True) -> dict:
    """Everything ``bench --scale`` prints, as a dict (see the module docstring)."""
    r = measure_engine(manifest_path, device, alphas, attack, ev)
    model_bytes = r["params"] * 4
    r["floor_bytes"] = (2 + 2) * model_bytes
    r["memory"] = r["rss_peak"] - r["rss_before"]
    r["bound_bytes"] = 1.25 * r["floor_bytes"] + GiB
    r["bandwidth"] = 2 * model_bytes / r["copy_seconds"]
    r["merge_floor_seconds"] = (2 + 2) * model_bytes / r["bandwidth"]
    if plain:
        from .bench import plain_point
        m = load_manifest(manifest_path)
        t = time.perf_counter()
        r["plain_rows"] = [plain_point(m, m.defaults.get("base", "pretrained"), [NATURAL], [ROBUST],
                                       MergeSpec.from_alpha(a), attack, ev, device) for a in alphas]
        r["plain_seconds"] = time.perf_counter() - t
    return r


def format_report(r: dict, arch: str) -> list[str]:
    """The lines ``bench --scale`` prints (ratios last)."""
    mb = r["params"] * 4
    lines = [f"scale bench: {arch}, {r['params'] / 1e6:.1f}M params ({mb / GiB:.3f} GiB float32), "
             f"device {r['device']}, base + 2 vectors ({NATURAL}: full .safetensors, {ROBUST}: visual-only .pt "
             "in vision_encoder_state_dict); SYNTHETIC weights: accuracies meaningless"]
    for name, (sec, rep) in r["loads"].items():
        src = Path(rep.path).name if rep else "?"
        lines.append(f"  load {name:12s} {sec:7.2f} s  (file read {rep.seconds:.2f} s; {', '.join(rep.dtypes)} from {src}"
                     f"{'; text tower = base rounded to fp16, not a text vector' if rep.text_rounding_only else ''})")
    for row, m in zip(r["rows"], r["merge_seconds"]):
        lines.append(f"  alpha={row['alpha']:.2f}  clean={row['clean_acc']:.3f} robust={row['robust_acc']:.3f}  "
                     f"point {row['seconds']:.2f} s, weight merge {m * 1e3:.1f} ms")
    lines.append("  (load = file read + digest; the base's also creates the architecture)")
    plan = r["plan"]
    lines.append(f"attack batch: {plan.batch} images (the engine's choice: {plan.per_image / 2 ** 20:.1f} MiB of "
                 f"saved activations per image, budget {plan.budget / 2 ** 20:.0f} MiB)")
    lines.append(f"forward+backward: {r['step_seconds'] * 1e3:.2f} ms per image at batch {plan.batch}")
    if "plain_rows" in r:
        lines.append(f"engine: {r['sweep_seconds']:.2f} s for {len(r['rows'])} points (after loading); "
                     f"plain path: {r['plain_seconds']:.2f} s (loads every point)")
        for p, e in zip(r["plain_rows"], r["rows"]):
            lines.append(f"  alpha={p['alpha']:.2f} plain robust={p['robust_acc']:.3f} engine "
                         f"robust={e['robust_acc']:.3f}")
    lines.append(f"memory: peak resident {r['rss_peak'] / GiB:.2f} GiB, {r['rss_before'] / GiB:.2f} GiB before "
                 f"loading (libraries); floor (2 + 2) x {mb / GiB:.3f} = {r['floor_bytes'] / GiB:.2f} GiB; "
                 f"bound 1.25 x floor + 1 GiB = {r['bound_bytes'] / GiB:.2f} GiB: "
                 f"{'within' if r['rss_peak'] <= r['bound_bytes'] else 'EXCEEDED'}")
    if "cuda_peak" in r:
        lines.append(f"device memory: peak allocated {r['cuda_peak'] / GiB:.2f} GiB; "
                     f"device memory / floor: {r['cuda_peak'] / r['floor_bytes']:.3f}")
    merge = max(r["merge_seconds"])     # the interior point: both terms written
    lines.append(f"bandwidth (model-size tensor copy): {r['bandwidth'] / 1e9:.1f} GB/s -> merge floor "
                 f"{r['merge_floor_seconds'] * 1e3:.1f} ms ((2 + 2) model sizes moved)")
    lines.append(f"memory / floor: {r['memory'] / r['floor_bytes']:.3f}")
    lines.append(f"merge / bandwidth floor: {merge / r['merge_floor_seconds']:.2f}")
    return lines
