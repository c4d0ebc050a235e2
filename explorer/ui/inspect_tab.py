"""Inspect tab layout: an image, its adversarial version, and predictions of three models."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from explorer.app.service import Service
from explorer.data import task_names
from explorer.zoo import default_manifest_path

from .form import Form
from .frontier_tab import MERGE
from .guard import uploaded_image
from .inspect_handlers import ATTACK_KINDS, FILMSTRIP, INSPECT, MODELS, TRANSFER, InspectHandlers

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "examples"


def examples_dir(manifest_path: str | Path | None) -> Path:
    """A zoo's own ``examples/`` beside its manifest (``None``: the default manifest) when it has one
    (images of its data: ``assets/zoo/examples`` for the shapes zoo), else ``assets/examples`` (the
    default Fashion-MNIST zoo's held-out test photographs)."""
    own = Path(manifest_path or default_manifest_path()).parent / "examples"
    return own if own.is_dir() else EXAMPLES_DIR


def example_images(manifest_path: str | Path | None = None) -> list[str]:
    return [str(p) for p in sorted(examples_dir(manifest_path).glob("*.png"))][:12]


# Offered when the manifest's task is not a known one: ten classes (CIFAR-10's), so the targeted
# attacks (APGD-T and both AutoAttacks need >= 4 classes; 9 targets at 10) run on them.
FALLBACK_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def build_inspect_tab(service: Service, form: Form) -> None:
    """Lay out the tab inside the current ``gr.Tab``; the merged model is the frontier's (``form``
    already holds its group ``"merge"``); this tab's inputs join ``form`` as group ``"inspect"``."""
    h = InspectHandlers(service, form)
    d = service.defaults
    default_classes = h.task_classes(d.task) if d.task in task_names() else ", ".join(FALLBACK_CLASSES)
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            image = uploaded_image(label="Image", sources=["upload", "clipboard"], height=240,
                                   elem_id="inspect-image")
            examples = example_images(service.manifest_path)
            if examples:
                gr.Examples(examples, inputs=image, label="Examples (demo tasks)", examples_per_page=12)
            source = gr.Dropdown(["custom", *task_names()], value=d.task, allow_custom_value=True,
                                 label="Class names from")
            classes = gr.Textbox(default_classes, lines=2, label="Class names (comma separated)")
            with gr.Row():
                kind = gr.Dropdown(ATTACK_KINDS, value="pgd", label="Attack")
                eps = gr.Textbox(d.eps, label="eps")
                steps = gr.Number(10, precision=0, minimum=1, label="PGD steps")
            frames = gr.Slider(5, 11, value=6, step=1, label="Filmstrip: α values from 0 to 1",
                               elem_id="frames-slider")
            with gr.Row():
                run = gr.Button("Attack and classify", variant="primary", elem_id="inspect-btn", scale=3)
                stop_btn = gr.Button("Stop", variant="stop", elem_id="inspect-stop-btn", scale=1)
            gr.Markdown("The *current merge* is the one set on the Frontier tab (vectors, method, α or λ, "
                        "keep, norm).", elem_classes="hint")
        with gr.Column(scale=2):
            summary = gr.Markdown("", elem_id="inspect-summary")
            with gr.Row(elem_id="inspect-images"):
                clean = gr.Image(label="clean", interactive=False, height=200)
                # Short labels: the image's toolbar covers the right half of a longer one.
                adv = gr.Image(label="adversarial", interactive=False, height=200)
                delta = gr.Image(label="δ amplified", interactive=False, height=200)
            with gr.Row():
                bars = [gr.Plot(label=name, elem_id=f"bars-{i}")
                        for i, name in enumerate(MODELS)]
            download = gr.DownloadButton("Download adversarial PNG", size="sm")
            film = gr.Plot(label="Image by image: attacked at each α", elem_id="filmstrip-plot")
            with gr.Row():
                crafted = gr.Plot(label="Crafted on each model", elem_id="transfer-images")
                transfer = gr.Plot(label="Transfer between the models", elem_id="transfer-plot")
    source.input(h.task_classes, source, classes, queue=False, api_visibility="private")
    form.add("inspect", image=image, classes=classes, kind=kind, inspect_eps=eps, steps=steps, frames=frames)
    inputs = form.inputs("inspect", MERGE, *(["theme"] if "theme" in form else []))
    out = dict(clean=clean, adv=adv, delta=delta, **{f"bars_{i}": b for i, b in enumerate(bars)}, summary=summary,
               download=download, film=film, crafted=crafted, transfer=transfer)
    first = run.click(h.inspect, inputs, INSPECT.components(out), api_name="inspect", concurrency_id="engine")
    second = first.success(h.filmstrip, inputs, FILMSTRIP.components(out), api_name="filmstrip",
                           concurrency_id="engine")
    third = second.success(h.transfer, inputs, TRANSFER.components(out), api_name="transfer",
                           concurrency_id="engine")
    stop_btn.click(h.stop, None, summary, cancels=[first, second, third], queue=False, api_name="stop_inspect")
