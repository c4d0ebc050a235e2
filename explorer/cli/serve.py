"""``python -m explorer serve``: the web app (the flags are ``app.py``'s, see ``serve_args``)."""
from __future__ import annotations

import argparse

from explorer.app.flags import add_serve_args

HELP = "run the web app"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_serve_args(p)


def run(args: argparse.Namespace) -> int:
    """Check the manifest before gradio starts (a bad path is one line), then serve until stopped."""
    from explorer.ui import launch
    from explorer.zoo import load_manifest

    load_manifest(args.manifest)
    launch(args)   # blocks serving
    return 0
