"""``python -m explorer zoo build | list | report | measure | multitask | synth``: build the demo zoo, list or
measure a manifest, merge its task vectors across their tasks, or write a synthetic scale fixture
(random-init checkpoints of a real architecture); ``measure`` prints the demo zoo's criteria table
(autoattack-fast at n=1000 by default), ``multitask`` the many-vector merges on every vector's task."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_eval_flags, open_service, resolve_specs

HELP = "build, list, report, measure (criteria) or multitask-merge the demo zoo"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["build", "list", "report", "measure", "multitask", "synth"])
    p.add_argument("--arch", default="ViT-B-32", help="synth: open_clip architecture (default ViT-B-32)")
    p.add_argument("--arch-config", default=None, help="synth: a custom open_clip JSON model config")
    p.add_argument("--preset", default="fashion", choices=["shapes", "fashion", "micro"],
                   help="build: fashion (default: the Fashion-MNIST ViT zoo the app opens on, assets/zoo-fashion; "
                   "needs dataset-fashion-mnist), shapes (the tests' ResNet zoo, assets/zoo) or micro (seconds)")
    p.add_argument("--into", default=None, help="build: output folder (default: the preset's folder in assets/)")
    p.add_argument("--only", default=None, metavar="TASK",
                   help="build: only the preset's extra task TASK (fashion: digits) into the existing zoo, "
                        "from its pretrained checkpoint (the digits need scikit-learn)")
    p.add_argument("--vector", action="append", default=None, metavar="NAME=TASK",
                   help="multitask: a task vector and the task it was fine-tuned on (repeatable, >= 2; default: "
                        "every natural vector whose provenance names a task's train data, e.g. natural=fashion)")
    p.add_argument("--also", action="append", default=None, help="report: clean accuracy on this task too")
    p.add_argument("--sweep", action="append", default=None, help="report: robust vector(s) to sweep to")
    p.add_argument("--alphas", default=None, help="report / measure: alphas of the sweep (default 0:1:11 / 0:1:5)")
    add_eval_flags(p)


def run(args: argparse.Namespace) -> int:
    from explorer.zoo import load_manifest

    if args.action == "build":
        import torch

        from explorer.finetune.recipe import build_extra_task, build_zoo, default_folder
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
        out = Path(args.into) if args.into else default_folder(args.preset)
        if args.only:
            print(build_extra_task(out, args.preset, args.only, device=args.device or "cpu"))
            return 0
        print(build_zoo(out, preset=args.preset, seed=args.seed, device=args.device or "cpu"))
        return 0
    if args.action == "synth":
        from explorer.zoo.synth import synth_zoo
        if not args.into:
            raise ValueError("zoo synth needs --into DIR")
        print(synth_zoo(args.arch, args.into, seed=args.seed, arch_config=args.arch_config))
        return 0
    m = load_manifest(args.manifest)
    if args.action == "list":
        for name, e in m.models.items():
            print(f"{name:16s} {e.role:8s} {e.arch:14s} {e.weights}  {e.provenance}")
        return 0
    from explorer.studies.criteria import measure
    from explorer.studies.report import zoo_report

    service = open_service(args)
    if args.action == "measure":   # the reported tier and the criteria's n unless told otherwise
        args.attack = args.attack or "autoattack-fast"
        args.n = args.n or 1000
    if args.action == "multitask":
        return run_multitask_table(args, service)
    attack, ev = resolve_specs(args, service.manifest)
    engine = service.engine()
    if args.action == "measure":
        blocks = measure(engine, attack, ev, alphas=args.alphas or "0:1:5")
    else:
        blocks = zoo_report(engine, attack, ev, also=args.also or (), sweeps=args.sweep or (),
                            alphas=args.alphas or "0:1:11")
    for i, block in enumerate(blocks):    # printed as each is measured
        print(f"\n{block}" if i else block)
    return 0


def vector_tasks(manifest, pairs: list[str] | None) -> list[tuple[str, str]]:
    """``NAME=TASK`` pairs, or the default: every natural vector whose provenance ``data`` is a
    registered task's train data (``digits-train (train)`` -> ``digits``).

    Raises:
        KeyError: an unknown vector or task. ValueError: a malformed pair, or fewer than two.
    """
    from explorer.data import get_task, task_names

    out = []
    if pairs:
        for pair in pairs:
            name, sep, task = pair.partition("=")
            if not sep or not name.strip() or not task.strip():
                raise ValueError(f"--vector takes NAME=TASK, got {pair!r}")
            out.append((manifest.get(name.strip()).name, get_task(task.strip()).name))
    else:
        known = set(task_names())
        for name in manifest.names("natural"):
            data = str(manifest.get(name).provenance.get("data", "")).removesuffix(" (train)")
            task = data.removesuffix("-train")
            if data.endswith("-train") and task in known:
                out.append((name, task))
    if len(out) < 2:
        raise ValueError(f"multitask needs two or more task vectors with their tasks (found {len(out)}): "
                         "name them with --vector NAME=TASK")
    return out


def run_multitask_table(args: argparse.Namespace, service) -> int:
    """``zoo multitask``: the merges of ``explorer.studies.multitask`` on every vector's task."""
    from explorer.data import get_task
    from explorer.studies.multitask import run_multitask, table

    pairs = vector_tasks(service.manifest, args.vector)
    args.attack = args.attack or "none"   # clean accuracy, the multi-task metric, unless told otherwise
    attack, _ = resolve_specs(args, service.manifest)
    evals = []
    for _, task in pairs:   # each task's held-out images: --n, else up to 1,000 of them
        t = get_task(task)
        n = args.n or min(1000, t.sizes.get(args.split, 1000))
        t.check_n(args.split, n)
        evals.append(service.defaults.eval_spec(task, n, args.seed, args.split))
    tasks = [t for _, t in pairs]
    rows = run_multitask(service.engine(), [v for v, _ in pairs], tasks, attack, evals)
    print(table(rows, tasks, attack))
    return 0
