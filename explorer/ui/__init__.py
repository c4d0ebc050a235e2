"""The Trade-off Explorer web app (Gradio 6 Blocks).

``build_demo(manifest, device, store_path)`` lays out three tabs (Frontier, Inspect, Models);
``launch(args)`` serves it with one queue (engine jobs one at a time), local-only by default.
Handlers call the application service (``explorer.app.service.Service``), which holds the engines;
inputs are registered by name in one ``Form`` per page (``ui/form.py``).
"""
from __future__ import annotations

import argparse
import logging
import threading
import warnings
from pathlib import Path
from typing import Any

import gradio as gr

from explorer.app.flags import add_serve_args, limits_from_args
from explorer.app.service import Service

from .common import THEMES
from .form import Form
from .frontier_tab import build_frontier_tab
from .gradio_adapter import check_version
from .guard import quiet_input_checks
from .inspect_tab import build_inspect_tab, examples_dir
from .models_tab import build_models_tab
from .tiers import first_view_jobs

log = logging.getLogger(__name__)
# Gradio 6's queue sets pandas options that pandas 3 deprecates, on every event (its code, not
# ours); silence exactly those so the console keeps our own messages.
warnings.filterwarnings("ignore", message=r"('future\.no_silent_downcasting'|The copy keyword)",
                        module=r"gradio\.queueing")
CSS_PATH = Path(__file__).resolve().parents[2] / "assets" / "style.css"
INTRO = ("**Trade-off Explorer** — merge natural and robust task vectors of a CLIP model and watch "
         "where the merge lands on the clean vs robust accuracy plane. Every number names the attack, "
         "eps and n that produced it; live points are a *preview* tier, then refined.")
# Typing and keys act like dragging: Enter in a slider's number box leaves the box (Gradio's
# slider fires its release event on blur) and an arrow/page/home/end key on a range input sends
# the pointer-up its release listens to. The theme radio switches the page's dark class.
KEYS_JS = """() => {
  const keys = ['ArrowLeft', 'ArrowRight', 'ArrowUp', 'ArrowDown', 'PageUp', 'PageDown', 'Home', 'End'];
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    if (e.key === 'Enter' && t.matches && t.matches('input[type=number]')
        && (t.getAttribute('aria-label') || '').startsWith('number input for')) { t.blur(); }
  }, true);
  document.addEventListener('keyup', (e) => {
    const t = e.target;
    if (keys.includes(e.key) && t.matches && t.matches('input[type=range]')) {
      t.dispatchEvent(new PointerEvent('pointerup', {bubbles: true}));
    }
  }, true);
}"""
THEME_JS = "(t) => { document.body.classList.toggle('dark', t === 'dark'); return t; }"


def build_demo(manifest: str | None = None, device: str | None = None,
               store_path: str | None = None, args: argparse.Namespace | None = None,
               **executor: Any) -> gr.Blocks:
    """The app's Blocks (cheap: reads the manifest; engines are built on first use).

    ``args``: the serve flags (``serve_args``): caps, the checkpoint folder, the queue size;
    their defaults when not given. ``executor``: ``Service``'s ``executor``/``ray_address``/
    ``workers`` (where sweeps run).
    """
    args = args or add_serve_args(argparse.ArgumentParser()).parse_args([])
    service = Service(manifest, device, store_path, max_pixels=args.max_pixels, **executor)
    service.serving.configure(limits_from_args(argparse.Namespace(**{**vars(args), "device": device})),
                              checkpoint_dir=args.checkpoint_dir, allow_any_path=args.allow_any_path,
                              share_added=args.share_added_checkpoints)
    form = Form()
    # delete_cache: uploads (images, checkpoints) leave the server's disk within two hours.
    with gr.Blocks(title="Trade-off Explorer", delete_cache=(3600, 3600)) as demo:
        with gr.Row(equal_height=True):
            gr.Markdown(INTRO, elem_id="intro")
            form.add(theme=gr.Radio(THEMES, value="light", label="Theme", scale=0, min_width=160,
                                    elem_id="theme-radio"))
        with gr.Tabs():
            with gr.Tab("Frontier", id="frontier"):
                fn, inputs, outputs = build_frontier_tab(service, form)
            with gr.Tab("Inspect", id="inspect"):
                build_inspect_tab(service, form)
            with gr.Tab("Models", id="models") as models:
                build_models_tab(service, form, models)
        # The first view streams while the default curve is computed: not in the engine's queue.
        demo.load(fn, inputs, outputs, api_visibility="private", concurrency_limit=None)
        demo.load(None, js=KEYS_JS)
        form.theme.input(None, form.theme, None, js=THEME_JS, queue=False)
    # One engine job at a time (concurrency id "engine"); a bounded queue; each job priced and
    # time-capped (explorer.app.jobs), so no job holds the queue for long.
    quiet_input_checks(demo)   # Gradio's range/choice checks: one line naming the control, no traceback
    demo.queue(default_concurrency_limit=1, max_size=args.max_queue)
    demo.explorer_service = service  # for tests and warm-up
    demo.explorer_form = form
    return demo


def warm_up(demo: gr.Blocks) -> threading.Thread:
    """Right after start-up, in the background: build the default engine and compute the default
    curve (``common.default_curve``), then the same curve under ``autoattack-fast`` coarse first
    (``tiers.first_view_jobs``; resumed from the store after a restart), so the first visitor sees
    them streamed in or already there."""
    service: Service = demo.explorer_service

    def work() -> None:
        try:
            if not first_view_jobs(service):   # the default curve, then its AutoAttack twin (ui.tiers)
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
    cap_mb = limits_from_args(args).max_checkpoint_mb
    examples = examples_dir(getattr(args, "manifest", None))
    # show_error=False: an exception that is not a gr.Error (Gradio's own input checks included)
    # shows no text in the page; our handlers raise gr.Error with one readable line.
    return dict(server_name=args.host, server_port=args.port, auth=parse_auth(args.auth),
                share=bool(args.share), max_file_size=args.max_file_size or f"{cap_mb:g}mb", show_error=False,
                theme=gr.themes.Soft(), css_paths=[CSS_PATH] if CSS_PATH.exists() else None,
                allowed_paths=[str(examples)] if examples.exists() else None,
                footer_links=["api", "settings"])


def _executor_options(args: argparse.Namespace) -> dict:
    """``Service`` keyword arguments for where sweeps run (``--ray [ADDRESS]``, ``--workers``)."""
    ray = getattr(args, "ray", None)
    return {"executor": "local" if ray is None else "ray", "ray_address": ray or None,
            "workers": getattr(args, "workers", None)}


def launch(args: argparse.Namespace, **overrides) -> gr.Blocks:
    """Build and serve the demo with the flags of ``explorer.app.flags.add_serve_args``.

    Raises:
        SystemExit: a Gradio version the app's private uses were not checked in (one line).
    """
    check_version()
    demo = build_demo(args.manifest, args.device, args.store, args, **_executor_options(args))
    if demo.explorer_service.executor_kind == "ray":
        demo.explorer_service.executor()     # join Ray now: a bad address fails before serving
    warm_up(demo)
    demo.launch(**{**launch_kwargs(args), **overrides})
    return demo


__all__ = ["build_demo", "launch", "launch_kwargs", "parse_auth", "warm_up"]
