#!/usr/bin/env python
"""The README's GPU table: ViT-B/32 (the synthetic fixture), 256 images, on one CUDA device.

Targets (issue 12 item 5): slider -> refined pgd-10 point <= 0.5 s; an 11-point autoattack-fast
frontier <= 2 min. Every measurement prints (flushed) as soon as it exists, in this order:

1. one-time costs: engine (base load + model build), the two vectors, eval data + text head,
   and the first point (CUDA/cuDNN warm-up);
2. the engine's attack batch (from its activation budget), forward+backward ms per image there
   (and per step at the fixture's attacked batch), and from it the worst case of each target
   (every image attacked for the attack's full cost; forward+backward alone, no attack overhead);
3. each slider point (pgd-10, alphas 0.3..0.8) with its seconds;
4. each frontier point (autoattack-fast, alphas 0..1) with its seconds, images attacked and
   image-steps, then ``finished: ...`` or ``not finished: N of 11 points in X s`` (the sweep
   stops at ``--seconds``; a SIGTERM from ``timeout`` also ends it there);
5. the summary table of what was measured (always, also after a stop).

On the fixture the weights are random: ~1/16 of the images are classified correctly and only
those are attacked, but those all survive every stage (the random model's prediction hardly
depends on the input), so each costs the attack's full steps. Exit status: 0 when everything
was measured, 1 when the budget or a signal cut the frontier short.

Usage: python scripts/gpu_table.py --fixture DIR [--device cuda] [--seconds S] [--n N] [--points P]
(DIR from ``python -m explorer zoo synth``; ``--n 16 --points 3 --device cpu`` on a tiny ViT
fixture is the CPU dry run of the mechanics.)
"""
from __future__ import annotations

import time

T0 = time.monotonic()   # the --seconds budget counts from here (before torch is imported)

import argparse  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from explorer.attacks import attack_cost  # noqa: E402
from explorer.config import AttackSpec, EvalSpec, MergeSpec, SweepSpec, parse_alphas  # noqa: E402
from explorer.core.cancel import CancelToken, scoped  # noqa: E402
from explorer.engine.frontier import Engine  # noqa: E402
from explorer.studies.bench import step_seconds  # noqa: E402

EPS = 4 / 255
SLIDER_ALPHAS = (0.3, 0.4, 0.6, 0.7, 0.8)
NAT, ROB = ("natural",), ("robust",)


class Stopped(Exception):
    """A SIGTERM arrived (``timeout`` ran out): stop measuring, print what was measured."""


@dataclass
class Table:
    """What was measured so far (``None`` / empty: not measured)."""

    n: int
    points: int
    slider_attack: AttackSpec
    frontier_attack: AttackSpec
    header: str = ""
    step_s: float | None = None
    slider_s: list[float] = field(default_factory=list)
    frontier_s: list[float] = field(default_factory=list)
    frontier_attacked: list[int] = field(default_factory=list)
    frontier_started: float | None = None
    frontier_ended: float | None = None

    @property
    def finished(self) -> bool:
        return len(self.frontier_s) == self.points

    def worst(self, attack: AttackSpec, points: int = 1) -> float | None:
        """Seconds if every image were attacked for ``attack``'s full cost (+1 clean pass)."""
        return None if self.step_s is None else points * self.n * (attack_cost(attack) + 1) * self.step_s


def emit(line: str) -> None:
    """Print one measured line at once (flushed: a later kill keeps it in the log)."""
    print(line, flush=True)


def setup(fixture: Path, device: str, n: int) -> tuple[Engine, EvalSpec]:
    """Load the fixture's base and two vectors; print each one-time cost."""
    t = time.perf_counter()
    eng = Engine(fixture / "manifest.toml", device=device, store=None)
    emit(f"one-time: engine (base load + model build) {time.perf_counter() - t:.2f} s; "
         f"{eng.layout.numel / 1e6:.1f}M params")
    for name in (*NAT, *ROB):
        t = time.perf_counter()
        eng.vector(name)
        emit(f"one-time: vector {name} {time.perf_counter() - t:.2f} s")
    ev = EvalSpec("shapes", n=n)
    t = time.perf_counter()
    eng.eval_data(ev)
    eng.classifier(ev.task, eng.normalization([*NAT, *ROB]))
    emit(f"one-time: {n} eval images + text head ({ev.task}) {time.perf_counter() - t:.2f} s")
    return eng, ev


def timed_point(eng: Engine, ev: EvalSpec, attack: AttackSpec, alpha: float) -> tuple[dict, float]:
    """One history-free point, not stored; (row, wall seconds including the merge)."""
    t = time.perf_counter()
    row = eng.point(NAT, ROB, MergeSpec.from_alpha(alpha), attack, ev, use_store=False)
    return row, time.perf_counter() - t


def describe(kind: str, row: dict, seconds: float) -> str:
    """One measured point: what ran (attack, eps, n, alpha), its accuracies and its seconds."""
    if row.get("failed"):   # an invalid merge or non-finite logits: no accuracy (engine.sweep)
        return (f"{kind}: {row['attack']} n={row['n']} alpha={row['alpha']:.2f} failed: {row['error']} "
                f"{seconds:.3f} s")
    return (f"{kind}: {row['attack']} n={row['n']} alpha={row['alpha']:.2f} clean={row['clean_acc']:.3f} "
            f"robust={row['robust_acc']:.3f} attacked={row['n_attacked']} {seconds:.3f} s "
            f"(merge {row['merge_seconds'] * 1e3:.1f} ms, attack {row['attack_seconds']:.3f} s)")


def measure_step(eng: Engine, ev: EvalSpec, tab: Table) -> None:
    """Forward+backward per image at the engine's attack batch (and per step at the batch a
    fixture point attacks); prints them and both worst cases."""
    row, s = timed_point(eng, ev, tab.slider_attack, 0.5)
    emit(describe("one-time: first point (warm-up)", row, s))
    plan = eng.batch_plan(ev, eng.normalization([*NAT, *ROB]), attacked=True)
    batch = min(plan.batch, ev.n)
    emit(f"attack batch: {batch} images (the engine's plan {plan.batch}: {plan.per_image / 2 ** 20:.2f} MiB "
         f"saved activations per image, budget {plan.budget / 2 ** 20:.0f} MiB)")
    net, data = attack_net(eng, ev), eng.eval_data(ev)
    tab.step_s = step_seconds(net, *data, batch=batch, reps=3)
    emit(f"forward+backward: {tab.step_s * 1e3:.4f} ms per image at batch {batch}")
    small = row.get("n_attacked") or 0
    if 0 < small < batch:   # the batch the fixture's attacks run at: per-step latency
        step = step_seconds(net, *data, batch=small, reps=3)
        emit(f"forward+backward: {step * small * 1e3:.2f} ms per step at batch {small} "
             f"(the {small} images attacked at a point; {step * 1e3:.4f} ms per image)")
    emit(f"worst case (all {ev.n} images, full cost, forward+backward alone): "
         f"{tab.slider_attack.name} point {tab.worst(tab.slider_attack):.2f} s; "
         f"{tab.points}-point {tab.frontier_attack.name} frontier "
         f"{tab.worst(tab.frontier_attack, tab.points):.1f} s")


def attack_net(eng: Engine, ev: EvalSpec) -> torch.nn.Module:
    """The module the attacks differentiate: the attack twin, else the classifier itself."""
    normalize = eng.normalization([*NAT, *ROB])
    return eng.attack_model(ev.task, normalize) or eng.classifier(ev.task, normalize)


def run_slider(eng: Engine, ev: EvalSpec, tab: Table, past_deadline: Callable[[], bool]) -> None:
    for a in SLIDER_ALPHAS:
        if past_deadline():
            emit(f"slider: stopped at the deadline after {len(tab.slider_s)} of {len(SLIDER_ALPHAS)} points")
            return
        row, s = timed_point(eng, ev, tab.slider_attack, a)
        tab.slider_s.append(s)
        emit(describe("slider point", row, s))


def run_frontier(eng: Engine, ev: EvalSpec, tab: Table, past_deadline: Callable[[], bool]) -> None:
    """The frontier as one sweep, each point printed as it lands; stops at the deadline."""
    spec = SweepSpec(manifest=str(eng.manifest.path), base=eng.base, natural=NAT, robust=ROB,
                     alphas=parse_alphas(f"0:1:{tab.points}"), attack=tab.frontier_attack, eval=ev)
    steps = [0]

    def count(_module, args, _out) -> None:   # rows of forward+backward (as explorer.studies.bench counts)
        if torch.is_grad_enabled():
            steps[0] += args[0].shape[0]

    hook = attack_net(eng, ev).register_forward_hook(count)
    tab.frontier_started = last = time.perf_counter()
    try:
        for i, row in enumerate(scoped(CancelToken(also=past_deadline), eng.sweep(spec, progress=False)), 1):
            now = time.perf_counter()
            tab.frontier_s.append(now - last)
            tab.frontier_attacked.append(row.get("n_attacked") or 0)
            per_step = row.get("attack_seconds", 0.0) / steps[0] * 1e3 if steps[0] else 0.0
            emit(describe(f"frontier point {i}/{tab.points}", row, now - last)
                 + f" image-steps {steps[0]} ({per_step:.3f} ms each); {now - tab.frontier_started:.1f} s so far")
            steps[0], last = 0, now
    finally:
        hook.remove()
        tab.frontier_ended = time.perf_counter()


def frontier_status(tab: Table) -> str:
    """``finished: ...`` or ``not finished: N of P points in X s`` (with a projection)."""
    if tab.frontier_started is None:
        return f"not finished: 0 of {tab.points} points (the frontier did not start)"
    total = (tab.frontier_ended or time.perf_counter()) - tab.frontier_started
    done = len(tab.frontier_s)
    if tab.finished:
        return f"finished: {done} of {tab.points} points in {total:.1f} s"
    line = f"not finished: {done} of {tab.points} points in {total:.1f} s"
    if done:
        per = statistics.mean(tab.frontier_s)
        line += f" ({per:.1f} s per point; {tab.points} points projected {per * tab.points:.0f} s)"
    return line


def summary(tab: Table) -> list[str]:
    """The README's GPU table from what was measured ("not measured" where nothing was)."""
    def secs(x: float | None, unit: str = "s") -> str:
        if x is None:
            return "not measured"
        return f"{x / 60:.1f} min" if unit == "min" else f"{x:.2f} s"

    slider = (f"median {statistics.median(tab.slider_s):.3f} s over {len(tab.slider_s)} "
              f"(max {max(tab.slider_s):.3f} s)" if tab.slider_s else "not measured")
    frontier = frontier_status(tab)
    if tab.frontier_attacked:
        frontier += f"; images attacked per point {statistics.mean(tab.frontier_attacked):.0f} of {tab.n}"
    f_name = tab.frontier_attack.name
    return [
        "", tab.header,
        "| measure | target | measured on the fixture | worst case: every image attacked in full |",
        "|---|---|---|---|",
        f"| slider -> refined {tab.slider_attack.name} point | <= 0.5 s | {slider} | "
        f"{secs(tab.worst(tab.slider_attack))} |",
        f"| {tab.points}-point {f_name} frontier | <= 2 min | {frontier} | "
        f"{secs(tab.worst(tab.frontier_attack, tab.points), 'min')} |",
    ]


def measure(fixture: Path, device: str, tab: Table, deadline: float) -> None:
    """Run every measurement in order, printing each; ``tab`` holds what was measured."""
    past_deadline = lambda: time.monotonic() >= deadline  # noqa: E731
    eng, ev = setup(fixture, device, tab.n)
    cuda = eng.device.type == "cuda"
    name = torch.cuda.get_device_name(eng.device) if cuda else "cpu"
    tf32 = cuda and torch.backends.cuda.matmul.allow_tf32
    tab.header = (f"GPU table: {eng.manifest.get(eng.base).arch} (synthetic fixture, {eng.layout.numel / 1e6:.1f}M params), "
              f"{tab.n} images, eps {EPS * 255:.0f}/255, {name}, torch {torch.__version__}, "
              f"TF32 {'on' if tf32 else 'off'}")
    emit(tab.header)
    measure_step(eng, ev, tab)
    run_slider(eng, ev, tab, past_deadline)
    run_frontier(eng, ev, tab, past_deadline)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", required=True, help="folder written by `python -m explorer zoo synth`")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=256, help="eval images (default 256)")
    ap.add_argument("--points", type=int, default=11, help="frontier points, alpha 0..1 (default 11)")
    ap.add_argument("--frontier-attack", default="autoattack-fast")
    ap.add_argument("--seconds", type=float, default=math.inf,
                    help="stop the frontier this long after start and print what was measured")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None, t0: float = T0) -> int:
    """Measure and print (``t0``: the ``time.monotonic()`` the ``--seconds`` budget counts from).

    Returns 0 when every point was measured, 1 when the budget or a SIGTERM cut it short.
    """
    args = parse_args(argv)
    tab = Table(n=args.n, points=args.points, slider_attack=AttackSpec("pgd-10", EPS),
                frontier_attack=AttackSpec(args.frontier_attack, EPS),
                header=f"GPU table: {Path(args.fixture).name}, {args.n} images (stopped during set-up)")

    def on_term(signum: int, _frame: object) -> None:
        raise Stopped(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        measure(Path(args.fixture), args.device, tab, t0 + args.seconds)
    except Stopped as exc:
        emit(f"stopped by {exc} after {time.monotonic() - t0:.0f} s")
    finally:
        signal.signal(signal.SIGTERM, previous)
        emit(frontier_status(tab))
        for line in summary(tab):
            emit(line)
    return 0 if tab.finished else 1


if __name__ == "__main__":
    sys.exit(main())
