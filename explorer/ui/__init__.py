"""The Trade-off Explorer web app (Gradio 6 Blocks).

``build_demo(manifest, device, store_path)`` lays out three tabs (Frontier, Inspect, Models);
``launch(args)`` serves it with one queue (engine jobs one at a time), local-only by default.
Handlers call the application service (``explorer.service.Service``), which holds the engines;
inputs are registered by name in one ``Form`` per page (``ui/form.py``).
"""
from __future__ import annotations

import argparse
import logging
import threading
import warnings
from pathlib import Path

import gradio as gr

from ..config import MergeSpec
from ..service import Service
from .common import PREVIEW_ATTACK, PREVIEW_N
from .form import Form
from .frontier_tab import build_frontier_tab
from .inspect_tab import EXAMPLES_DIR, build_inspect_tab
from .models_tab import build_models_tab

log = logging.getLogger(__name__)
# Gradio 6's queue sets pandas options that pandas 3 deprecates, on every event (its code, not
# ours); silence exactly those so the console keeps our own messages.
warnings.filterwarnings("ignore", message=r"('future\.no_silent_downcasting'|The copy keyword)",
                        module=r"gradio\.queueing")
CSS_PATH = Path(__file__).resolve().parents[2] / "assets" / "style.css"
INTRO = ("**Trade-off Explorer** — merge natural and robust task vectors of a CLIP model and watch "
         "where the merge lands on the clean vs robust accuracy plane. Every number names the attack, "
         "eps and n that produced it; live points are a *preview* tier, then refined.")


def build_demo(manifest: str | None = None, device: str | None = None,
               store_path: str | None = None) -> gr.Blocks:
    """The app's Blocks (cheap: reads the manifest; engines are built on first use)."""
    service, form = Service(manifest, device, store_path), Form()
    with gr.Blocks(title="Trade-off Explorer") as demo:
        gr.Markdown(INTRO, elem_id="intro")
        with gr.Tabs():
            with gr.Tab("Frontier", id="frontier"):
                fn, inputs, outputs = build_frontier_tab(service, form)
            with gr.Tab("Inspect", id="inspect"):
                build_inspect_tab(service, form)
            with gr.Tab("Models", id="models"):
                build_models_tab(service, form)
        demo.load(fn, inputs, outputs, api_visibility="private")
    demo.queue(default_concurrency_limit=1)
    demo.explorer_service = service  # for tests and warm-up
    demo.explorer_form = form
    return demo


def warm_up(demo: gr.Blocks) -> threading.Thread:
    """Build the default engine and its preview-tier caches in the background (fast first move)."""
    service: Service = demo.explorer_service

    def work() -> None:
        try:
            m, d = service.manifest, service.defaults
            nat, rob = m.names("natural")[:1], m.names("robust")[:1]
            if nat and rob:
                service.point(service.default_base, nat, rob, MergeSpec.from_alpha(0.5),
                              d.attack_spec(PREVIEW_ATTACK), d.eval_spec(n=min(d.n, PREVIEW_N)))
            else:
                service.engine()
        except Exception:  # reported again, readably, on first use
            log.exception("warm-up failed")

    t = threading.Thread(target=work, name="explorer-warm-up", daemon=True)
    t.start()
    return t


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``user:password`` -> tuple; a readable error otherwise."""
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--auth must look like USER:PASSWORD")
    return user, password


def launch_kwargs(args: argparse.Namespace) -> dict:
    """``demo.launch`` keyword arguments from the serve flags (local only unless asked)."""
    return dict(server_name=args.host, server_port=args.port, auth=parse_auth(args.auth),
                share=bool(args.share), max_file_size=args.max_file_size, show_error=True,
                theme=gr.themes.Soft(), css_paths=[CSS_PATH] if CSS_PATH.exists() else None,
                allowed_paths=[str(EXAMPLES_DIR)] if EXAMPLES_DIR.exists() else None,
                footer_links=["api", "settings"])


def launch(args: argparse.Namespace, **overrides) -> gr.Blocks:
    """Build and serve the demo with the flags of ``explorer.serve_args.add_serve_args``."""
    demo = build_demo(args.manifest, args.device, args.store)
    warm_up(demo)
    demo.launch(**{**launch_kwargs(args), **overrides})
    return demo


__all__ = ["build_demo", "launch", "launch_kwargs", "parse_auth", "warm_up"]
