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
STAT_COLUMNS = ["vector", "role", "L2 norm", "Linf norm", "nonzero fraction", "touches text tower"]


def manifest_table(service: Service) -> pd.DataFrame:
    recs = [{"name": e.name, "role": e.role, "arch": e.arch, "towers": "+".join(e.towers),
             "normalize": e.normalize,
             "weights": Path(e.weights).name if e.is_local() else e.weights,
             "provenance": json.dumps(e.provenance, default=str) if e.provenance else ""}
            for e in service.manifest.models.values()]
    return pd.DataFrame(recs, columns=MODEL_COLUMNS)


class ModelsHandlers:
    """The tab's handlers; vector statistics are computed once per (base, vectors) and kept
    (plain values: tables and lists), so opening the tab again costs nothing."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._stats: dict[tuple[str, tuple[str, ...]], dict] = {}

    def vector_stats(self, base: str, names: list[str]) -> dict:
        key = (base, tuple(names))
        if key not in self._stats:
            self._stats[key] = self.service.vector_stats(base, names)
        return self._stats[key]

    @readable_errors
    def stats(self, base: str, names: list[str] | None, theme: str | None = None,
              progress=gr.Progress(track_tqdm=True)):
        """Norms table, cosine heatmap and per-layer magnitudes of the chosen vectors (on opening
        the tab and on the button; computed once per base and vectors)."""
        names = list(names or [])
        if not names:
            raise gr.Error("choose at least one task vector")
        progress(0, desc="loading task vectors")
        s = self.vector_stats(base or self.service.default_base, names)
        table = pd.DataFrame(s["table"], columns=STAT_COLUMNS).round(5)
        return (table, plots.cosine_heatmap(names, s["cos"], theme=theme),
                plots.layer_magnitude_figure(s["layers"], s["layer_norms"], theme=theme))

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


def build_models_tab(service: Service, form: Form, tab: gr.Tab | None = None) -> None:
    """Lay out the tab inside the current ``gr.Tab``; the base and vector lists are the frontier's.
    Selecting ``tab`` shows the statistics (computed on the first opening, then kept)."""
    h = ModelsHandlers(service)
    m = service.manifest
    vec_names = m.names("natural") + m.names("robust")
    table = gr.Dataframe(manifest_table(service), label="Manifest (with provenance)", interactive=False,
                         wrap=True, elem_id="manifest-table")
    with gr.Row():
        pick = gr.Dropdown(vec_names, value=vec_names, multiselect=True, label="Task vectors", scale=4)
        stats_btn = gr.Button("Compute statistics", variant="primary", scale=1, elem_id="stats-btn")
    norms = gr.Dataframe(pd.DataFrame(columns=STAT_COLUMNS), label="Task-vector norms (τ = θ_ft − θ_pre)",
                         interactive=False, elem_id="norms-table")
    with gr.Row():
        heat = gr.Plot(label="Cosine similarity", elem_id="cosine-plot")
        layers = gr.Plot(label="Per-layer magnitude", elem_id="layers-plot")
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
    stat_inputs = [fc.base, pick, *([fc.theme] if "theme" in fc else [])]
    stats_btn.click(h.stats, stat_inputs, [norms, heat, layers], api_name="vector_stats",
                    concurrency_id="engine")
    if tab is not None:
        tab.select(h.stats, stat_inputs, [norms, heat, layers], api_visibility="private",
                   concurrency_id="engine")
    add_btn.click(h.add, [fc.base, path, name, role], [table, added, fc.natural, fc.robust, pick],
                  api_name="add_checkpoint", concurrency_id="engine")
