"""Models tab: the manifest with provenance, task-vector statistics, adding a local checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pandas as pd

from explorer.app.service import Service
from explorer.viz import plots
from explorer.zoo import LOCAL_SUFFIXES, CheckpointError, CheckpointRefused

from .common import one_line, readable_errors
from .form import Form
from .guard import session_of
from .outputs import Outputs

MODEL_COLUMNS = ["name", "role", "arch", "towers", "normalize", "weights", "provenance"]
STAT_COLUMNS = ["vector", "role", "L2 norm", "Linf norm", "nonzero fraction", "touches text tower"]
# Each event's outputs by name: build_models_tab wires these components, the handlers return these values.
STATS = Outputs("norms", "heat", "layers")
ADD = Outputs("table", "added", "natural", "robust", "pick")


def manifest_table(service: Service, owner: str = "default") -> pd.DataFrame:
    """The models ``owner`` may use (the manifest and the checkpoints this session added)."""
    m = service.manifest
    recs = [{"name": e.name, "role": e.role, "arch": e.arch, "towers": "+".join(e.towers),
             "normalize": e.normalize,
             "weights": Path(e.weights).name if e.is_local() else e.weights,
             "provenance": json.dumps(e.provenance, default=str) if e.provenance else ""}
            for e in (m.models[n] for n in service.serving.names(owner))]
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
            if len(self._stats) >= 64:           # bounded: the oldest setting goes
                self._stats.pop(next(iter(self._stats)))
            self._stats[key] = self.service.vector_stats(base, names)
        return self._stats[key]

    @readable_errors
    def stats(self, base: str, names: list[str] | None, theme: str | None = None, request: gr.Request = None,
              progress=gr.Progress(track_tqdm=True)):
        """Norms table, cosine heatmap and per-layer magnitudes of the chosen vectors (on opening
        the tab and on the button; computed once per base and vectors)."""
        names = list(names or [])
        if not names:
            raise gr.Error("choose at least one task vector")
        if len(names) > 32:
            raise gr.Error("at most 32 task vectors at a time")
        self.service.serving.check_names(session_of(request), names)
        progress(0, desc="loading task vectors")
        s = self.vector_stats(base or self.service.default_base, names)
        table = pd.DataFrame(s["table"], columns=STAT_COLUMNS).round(5)
        return STATS(norms=table, heat=plots.cosine_heatmap(names, s["cos"], theme=theme),
                     layers=plots.layer_magnitude_figure(s["layers"], s["layer_norms"], theme=theme))

    @readable_errors
    def add(self, base: str, upload: str | None, path: str | None, name: str | None, role: str,
            request: gr.Request = None):
        """Validate and register an uploaded checkpoint, or one named inside the server's allowed
        folder, for this session; refresh its tables and vector choices.

        Every refusal of the file itself is one generic line (``explorer.zoo.files``); a file that
        loads but does not fit the base says which keys or shapes are wrong.
        """
        serving, owner = self.service.serving, session_of(request)
        if base and base not in self.service.manifest.names("base"):
            raise gr.Error("choose a base model of the manifest")
        if role not in ("natural", "robust"):
            raise gr.Error("role must be natural or robust")
        name = (name or "").strip() or None
        if not upload and not (path or "").strip():
            raise gr.Error("upload a .safetensors / .pt / .pth / .bin checkpoint"
                           + (" or type its name in the server's folder" if serving.checkpoint_dir else ""))
        try:
            source, label = (str(upload), "upload") if upload else (serving.resolve(path), path.strip()[:80])
            added = serving.add_checkpoint(owner, base or self.service.default_base, source, role, name,
                                           label)
        except CheckpointRefused as exc:   # the same line whatever the cause (it says "refused")
            raise gr.Error(one_line(str(exc))) from None
        except CheckpointError as exc:
            raise gr.Error(one_line(f"Checkpoint rejected: {exc}")) from None
        self._stats.clear()              # a name may now stand for other weights (evicted, re-added)
        nat, rob = serving.names(owner, "natural"), serving.names(owner, "robust")
        return ADD(table=manifest_table(self.service, owner),
                   added=f"Added **{added}** as a {role} vector (this session only"
                         f"{'' if not serving.added.shared else ', shared'}).",
                   natural=gr.update(choices=nat), robust=gr.update(choices=rob), pick=gr.update(choices=nat + rob))


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
    serving = service.serving
    by_name = serving.allow_any_path or serving.checkpoint_dir is not None
    with gr.Accordion("Add a checkpoint", open=False):
        gr.Markdown(f"Checked against the base architecture ({m.get(service.default_base).arch}): keys, "
                    "shapes and finite weights. Loaded safely (safetensors or weights-only torch), at most "
                    f"{serving.limits.max_checkpoint_mb:g} MB; kept for this session while the server has "
                    f"room ({serving.limits.max_added} added checkpoints at most, least recently used "
                    "dropped first).")
        with gr.Row():
            upload = gr.File(label="Upload a checkpoint", file_types=list(LOCAL_SUFFIXES), type="filepath",
                             scale=3, elem_id="add-upload")
            path = gr.Textbox(label="…or its name in the server's checkpoint folder"
                              if not serving.allow_any_path else "…or its path on this machine",
                              placeholder="robust-fare.safetensors", scale=3, visible=by_name)
            name = gr.Textbox(label="Name (default: file name)", scale=2)
            role = gr.Radio(["robust", "natural"], value="robust", label="Role", scale=1)
        add_btn = gr.Button("Validate and add", elem_id="add-btn")
        added = gr.Markdown("")
    fc = form
    out = {**fc.by_name(), "norms": norms, "heat": heat, "layers": layers, "table": table, "added": added,
           "pick": pick}
    stat_inputs = [fc.base, pick, *([fc.theme] if "theme" in fc else [])]
    stats_btn.click(h.stats, stat_inputs, STATS.components(out), api_name="vector_stats",
                    concurrency_id="engine")
    if tab is not None:
        tab.select(h.stats, stat_inputs, STATS.components(out), api_visibility="private",
                   concurrency_id="engine")
    # Its own queue: reading a file never waits behind (or holds up) the engine's jobs.
    add_btn.click(h.add, [fc.base, upload, path, name, role], ADD.components(out),
                  api_name="add_checkpoint", concurrency_id="checkpoint", concurrency_limit=1)
