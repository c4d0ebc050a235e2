"""Models tab: the manifest with provenance, task-vector statistics, adding a local checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pandas as pd

from .. import plots
from ..service import Service
from .common import readable_errors
from .form import Form

MODEL_COLUMNS = ["name", "role", "arch", "towers", "normalize", "weights", "provenance"]


def manifest_table(service: Service) -> pd.DataFrame:
    recs = [{"name": e.name, "role": e.role, "arch": e.arch, "towers": "+".join(e.towers),
             "normalize": e.normalize,
             "weights": Path(e.weights).name if e.is_local() else e.weights,
             "provenance": json.dumps(e.provenance, default=str) if e.provenance else ""}
            for e in service.manifest.models.values()]
    return pd.DataFrame(recs, columns=MODEL_COLUMNS)


class ModelsHandlers:
    def __init__(self, service: Service) -> None:
        self.service = service

    @readable_errors
    def stats(self, base: str, names: list[str] | None, progress=gr.Progress(track_tqdm=True)):
        """Norms table, cosine heatmap and per-layer magnitudes of the chosen vectors."""
        names = list(names or [])
        if not names:
            raise gr.Error("choose at least one task vector")
        progress(0, desc="loading task vectors")
        s = self.service.vector_stats(base or self.service.default_base, names)
        table = pd.DataFrame(s["table"]).round(5)
        return table, plots.cosine_heatmap(names, s["cos"]), plots.layer_magnitude_figure(s["layers"],
                                                                                           s["layer_norms"])

    @readable_errors
    def add(self, base: str, path: str, name: str, role: str):
        """Validate and register a local checkpoint; refresh the tables and vector choices."""
        if not (path or "").strip():
            raise gr.Error("type the path of a .safetensors / .pt / .bin checkpoint")
        try:
            added = self.service.add_checkpoint(base or self.service.default_base, path.strip(),
                                                (name or "").strip() or None, role)
        except (ValueError, FileNotFoundError) as exc:   # CheckpointError is a ValueError
            raise gr.Error(f"Checkpoint rejected: {exc}") from None
        m = self.service.manifest
        return (manifest_table(self.service), f"Added **{added}** as a {role} vector.",
                gr.update(choices=m.names("natural")), gr.update(choices=m.names("robust")),
                gr.update(choices=m.names("natural") + m.names("robust")))


def build_models_tab(service: Service, form: Form) -> None:
    """Lay out the tab inside the current ``gr.Tab``; the base and vector lists are the frontier's."""
    h = ModelsHandlers(service)
    m = service.manifest
    vec_names = m.names("natural") + m.names("robust")
    table = gr.Dataframe(manifest_table(service), label="Manifest (with provenance)", interactive=False,
                         wrap=True, elem_id="manifest-table")
    with gr.Row():
        pick = gr.Dropdown(vec_names, value=vec_names, multiselect=True, label="Task vectors", scale=4)
        stats_btn = gr.Button("Compute statistics", variant="primary", scale=1, elem_id="stats-btn")
    norms = gr.Dataframe(label="Task-vector norms (τ = θ_ft − θ_pre)", interactive=False)
    with gr.Row():
        heat = gr.Plot(label="Cosine similarity")
        layers = gr.Plot(label="Per-layer magnitude")
    with gr.Accordion("Add a local checkpoint", open=False):
        gr.Markdown(f"Checked against the base architecture ({m.get(service.default_base).arch}): keys, "
                    "shapes and finite weights. Loaded safely (safetensors or weights-only torch).")
        with gr.Row():
            path = gr.Textbox(label="Path", placeholder="/path/to/checkpoint.safetensors", scale=3)
            name = gr.Textbox(label="Name (default: file name)", scale=2)
            role = gr.Radio(["robust", "natural"], value="robust", label="Role", scale=1)
        add_btn = gr.Button("Validate and add", elem_id="add-btn")
        added = gr.Markdown("")
    fc = form
    stats_btn.click(h.stats, [fc.base, pick], [norms, heat, layers], api_name="vector_stats",
                    concurrency_id="engine")
    add_btn.click(h.add, [fc.base, path, name, role], [table, added, fc.natural, fc.robust, pick],
                  api_name="add_checkpoint", concurrency_id="engine")
