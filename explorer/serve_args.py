"""Flags of the web app (shared by ``app.py`` and ``python -m explorer serve``); no gradio here."""
from __future__ import annotations

import argparse


def add_serve_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--manifest", default=None, help="TOML manifest (default: the demo zoo)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: local only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", default=None, help="USER:PASSWORD required to open the app")
    p.add_argument("--share", action="store_true", help="create a public share link (off by default)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--max-file-size", default="10mb", help="upload size cap")
    p.add_argument("--store", default=None, help="SQLite results store")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run sweeps on Ray actors: join the cluster at ADDRESS (host:port of `ray start "
                        "--head`), or start Ray on this machine when no ADDRESS is given")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="with --ray: number of actors (default: one per GPU, else one per CPU)")
    return p



def serve(args: argparse.Namespace) -> int:
    """Build the demo and block serving it."""
    from .ui import launch

    launch(args)
    return 0
