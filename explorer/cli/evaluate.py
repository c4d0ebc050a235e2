"""``python -m explorer evaluate``: clean and robust accuracy of one manifest model."""
from __future__ import annotations

import argparse

from .common import add_eval_flags, open_service, resolve_specs, write_points

HELP = "clean and robust accuracy of one model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_eval_flags(p)
    p.add_argument("--model", required=True, help="manifest name")


def run(args: argparse.Namespace) -> int:
    service = open_service(args)
    attack, ev = resolve_specs(args, service.manifest)
    row = service.engine().model_point(args.model, attack, ev)
    row.pop("alpha", None)
    row["model"] = args.model
    write_points([row], args.out)
    return 0
