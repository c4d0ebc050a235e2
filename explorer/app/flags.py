"""Flags of the web app (shared by ``app.py`` and ``python -m explorer serve``); no gradio here.

The serving caps (``--max-*``) bound what one page user can make the server do; the defaults
of the job caps depend on the device (``explorer.app.jobs.Limits.for_device``: generous on a GPU).
"""
from __future__ import annotations

import argparse
import math

from .images import DEFAULT_MAX_PIXELS
from .jobs import Limits


def port(text: str) -> int:
    """``--port``: an integer in [0, 65535] (0 = any free port)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must lie in [0, 65535], got {text}")
    return value


def positive_int(text: str) -> int:
    """A count cap (``--max-points``, ``--workers``, ...): an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """A size or time cap (``--max-job-seconds``, ...): a finite number > 0."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def add_serve_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--manifest", default=None, help="TOML manifest (default: the demo zoo)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: local only)")
    p.add_argument("--port", type=port, default=7860)
    p.add_argument("--auth", default=None, help="USER:PASSWORD required to open the app")
    p.add_argument("--share", action="store_true", help="create a public share link (off by default)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--store", default=None, help="SQLite results store")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run sweeps on Ray actors: join the cluster at ADDRESS (host:port of `ray start "
                        "--head`), or start Ray on this machine when no ADDRESS is given")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="with --ray: number of actors (default: one per GPU, else one per CPU)")
    d = Limits()
    g = p.add_argument_group("serving safely (caps on what a page user can do)")
    g.add_argument("--max-file-size", default=None,
                   help="upload size cap, e.g. 200mb (default: --max-checkpoint-mb)")
    g.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="page users may add checkpoints by naming a file inside DIR (default: uploads only)")
    g.add_argument("--allow-any-path", action="store_true",
                   help="page users may add checkpoints by any path on this machine: single-user local use only")
    g.add_argument("--share-added-checkpoints", action="store_true",
                   help="checkpoints a page user adds are visible to every session (default: its own)")
    g.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help=f"images with more pixels are refused before decoding (default {DEFAULT_MAX_PIXELS:,})")
    g.add_argument("--max-job-cost", type=positive_float, default=None,
                   help=f"image-passes per job, points x images x attack cost (default {d.max_job_cost:g} "
                        "on CPU, 1e8 on a GPU)")
    g.add_argument("--max-job-seconds", type=positive_float, default=None,
                   help=f"a running job stops after this long (default {d.max_job_seconds:g} on CPU, 1800 on a GPU)")
    g.add_argument("--max-points", type=positive_int, default=None, help=f"points per sweep (default {d.max_points})")
    g.add_argument("--max-queue", type=positive_int, default=32, help="jobs waiting in the queue at most (default 32)")
    g.add_argument("--max-added", type=positive_int, default=None,
                   help=f"added checkpoints resident at once, all sessions (default {d.max_added})")
    g.add_argument("--max-added-mb", type=positive_float, default=None,
                   help=f"resident MB of added checkpoints' vectors (default {d.max_added_mb:g})")
    g.add_argument("--max-checkpoint-mb", type=positive_float, default=None,
                   help=f"size of one checkpoint file (default {d.max_checkpoint_mb:g})")
    return p


def limits_from_args(args: argparse.Namespace) -> Limits:
    """The serving caps of the flags (device defaults for the ones not given)."""
    return Limits.for_device(getattr(args, "device", None), **{
        k: getattr(args, k, None) for k in ("max_job_cost", "max_job_seconds", "max_points", "max_added",
                                            "max_added_mb", "max_checkpoint_mb")})
