"""``python -m explorer convert``: re-save a ``.pt``/``.bin`` checkpoint as ``.safetensors``."""
from __future__ import annotations

import argparse

HELP = "re-save a .pt/.bin checkpoint as .safetensors (safe loading)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src")
    p.add_argument("dst")


def run(args: argparse.Namespace) -> int:
    from explorer.zoo import convert

    from .common import check_out

    check_out(args.dst, "dst")   # before reading the source (was safetensors' traceback after it)
    print(convert(args.src, args.dst))
    return 0
