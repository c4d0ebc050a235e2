"""Frontier tab layout and wiring: controls on the left, the clean vs robust plane on the right.

Every input is registered in the page's ``Form`` by name; the merge, attack and evaluation
controls form the group ``"merge"``, which every event that computes a point reads (handlers
read values by name, ``common.selection`` turns them into config objects). A new control is a
component added to one of the dicts below and read in ``common.selection``.
"""
from __future__ import annotations

import gradio as gr

from explorer.app.service import Service
from explorer.data import task_names
from explorer.merging import METHODS  # the method registry, in its order
from explorer.viz import plots

from . import common
from .form import Form
from .frontier_handlers import FIRST_VIEW, LAMBDA_SLIDERS, PREVIEW, REFINE, SHOW_STORED, SWEEP, FrontierHandlers

MERGE = "merge"   # the form group of the controls that define the current merge and its evaluation


def _model_controls(service: Service) -> dict:
    m, d = service.manifest, service.defaults
    nat, rob = m.names("natural"), m.names("robust")
    return dict(
        base=gr.Dropdown(m.names("base"), value=d.base, label="Pretrained base"),
        natural=gr.Dropdown(nat, value=nat[:1], multiselect=True, label="Natural task vectors"),
        robust=gr.Dropdown(rob, value=rob[:1], multiselect=True, label="Robust task vectors"),
    )


def _merge_controls() -> dict:
    return dict(
        method=gr.Dropdown(list(METHODS), value=common.DEFAULT_METHOD, label="Merge method"),
        alpha=gr.Slider(0, 1, value=common.DEFAULT_ALPHA, step=0.05, elem_id="alpha-slider",
                        label="α: trade-off (0 = natural, 1 = robust)",
                        info="drag, type a value and press Enter, or use the arrow keys"),
        keep=gr.Slider(0.05, 1, value=1.0, step=0.05, label="keep: fraction of coordinates kept",
                       info="task arithmetic ignores keep and scope (its points show keep 1)",
                       elem_id="keep-slider"),
        scope=gr.Radio(["global", "per_tensor"], value="global", label="Sparsity scope"),
        advanced=gr.Checkbox(False, label="Advanced: one λ per vector (negative = negation)"),
        options=gr.Textbox("", label="Method options (key=value, comma-separated)",
                           placeholder="e.g. kappa=2, q=0.05, traj_steps=0 (pistole); conv=average (iso_c)",
                           info="empty = the method's defaults; `python -m explorer ablation --help` "
                                "and the method's docstring list them"),
    )


def _eval_controls(service: Service) -> dict:
    d = service.defaults
    attacks = list(dict.fromkeys(common.ATTACK_CHOICES + [d.attack]))
    return dict(  # rendered by the caller, in rows
        attack=gr.Dropdown(attacks, value=d.attack, allow_custom_value=True,
                           label="Attack", render=False, info="pgd-K for any K; live preview uses "
                           f"{common.PREVIEW_ATTACK} on ≤{common.PREVIEW_N} images"),
        eps=gr.Textbox(d.eps, label="eps (e.g. 4/255)", render=False),
        norm=gr.Radio(["Linf", "L2"], value="Linf", label="Norm", render=False),
        task=gr.Dropdown(task_names(), value=d.task, allow_custom_value=True, label="Evaluation task",
                         render=False),
        n=gr.Number(d.n, precision=0, minimum=1, label="Samples n", render=False),
    )


def _controls_column(service: Service, form: Form) -> dict:
    """The left column: every input joins ``form``; returns the λ sliders, their box and the buttons."""
    form.add(MERGE, **_model_controls(service), **_merge_controls())
    ev = _eval_controls(service)   # created (not rendered) before the λ sliders: API order
    with gr.Group(visible=False) as lambda_box:
        lambdas = [gr.Slider(-1.5, 1.5, value=0.0, step=0.05, visible=False, label=f"λ {i}")
                   for i in range(common.MAX_VECTORS)]
    with gr.Accordion("Evaluation (refined tier)", open=True):
        ev["attack"].render()
        with gr.Row():
            ev["eps"].render()
            ev["norm"].render()
        with gr.Row():
            ev["task"].render()
            ev["n"].render()
        form.add(MERGE, **ev, **{f"lambda_{i}": s for i, s in enumerate(lambdas)})
    with gr.Accordion("Sweep: the whole curve", open=True):
        form.add(methods=gr.CheckboxGroup(list(METHODS), value=["task_arithmetic"], label="Methods"),
                 alphas=gr.Textbox("0:1:11", label="α values (start:stop:count or a list)"))
        with gr.Row():   # AutoAttack / APGD sweeps run coarse first; these stop them early
            form.add(until_ci=gr.Textbox("", label="Stop a point at 95% half-width ≤", placeholder="e.g. 0.05",
                                         elem_id="until-ci", info="empty: refine every point to n"),
                     budget_s=gr.Textbox("", label="Time budget (s)", placeholder="e.g. 60", elem_id="budget-s",
                                         info="empty: none; Stop keeps every finished image"))
        with gr.Row():
            sweep_btn = gr.Button("Sweep", variant="primary", elem_id="sweep-btn")
            stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn")
    return dict(lambdas=lambdas, lambda_box=lambda_box, sweep_btn=sweep_btn, stop_btn=stop_btn)


def _results_column() -> dict:
    """The right column: the current point's summary, the plane, the sweep status, the points, downloads."""
    summary = gr.Markdown("Move α (or any control) to compute the current merge.", elem_id="point-summary")
    plot = gr.Plot(plots.frontier_figure([]), label="Clean vs robust accuracy", elem_id="frontier-plot")
    status = gr.Markdown("", elem_id="sweep-status")
    table = gr.Dataframe(common.rows_table([]), interactive=False,
                         label="Points: accuracies with their 95% intervals, attack, eps and n",
                         column_widths=common.TABLE_WIDTHS, max_height=320, wrap=True, elem_id="points-table")
    with gr.Row():
        export_btn = gr.Button("Export points (CSV, JSON, HTML figure)", size="sm")
        ckpt_btn = gr.Button("Merged checkpoint (.safetensors)", size="sm")
    files = gr.File(label="Downloads", file_count="multiple", interactive=False, visible=False)
    return dict(summary=summary, plot=plot, status=status, table=table, export_btn=export_btn,
                ckpt_btn=ckpt_btn, files=files)


def build_frontier_tab(service: Service, form: Form) -> tuple:
    """Lay out the tab inside the current ``gr.Tab``, register its inputs in ``form``, wire its events.

    Afterwards ``form`` holds the group ``"merge"`` (the current merge, read by other tabs), the
    ``rows`` and ``current`` states and the sweep's ``methods`` and ``alphas``.

    Returns: the ``(fn, inputs, outputs)`` that ``build_demo`` wires to ``demo.load`` (the first
    view: the opening setting's points and the default curve streamed in as it is computed).
    """
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            c = _controls_column(service, form)
        with gr.Column(scale=2):
            r = _results_column()
    form.add(rows=gr.State([]), current=gr.State(None))
    return _wire(FrontierHandlers(service, form), form, c, r)


def _wire(h: FrontierHandlers, f: Form, c: dict, r: dict) -> tuple:
    """The tab's events; the page-load event's ``(fn, inputs, outputs)``."""
    files, lambdas = r["files"], c["lambdas"]
    out = {**f.by_name(), **r}   # every output by name (Outputs.components picks each event's, in order)
    point_inputs = f.inputs(MERGE, "rows", *(["theme"] if "theme" in f else []))

    # Live point: preview tier at once, then the chosen attack and n in a chained event. A slider's
    # release fires on pointer up and on leaving its number box; KEYS_JS (build_demo) turns Enter
    # in the box into leaving it and an arrow key on the range into a release, so typing, keys and
    # dragging all land here.
    triggers = [f.alpha.release, f.keep.release, *[s.release for s in lambdas], f.method.input, f.scope.input]
    live = gr.on(triggers, h.preview, point_inputs, PREVIEW.components(out),
                 api_name="preview_point", trigger_mode="always_last", concurrency_id="engine")
    refine = live.success(h.refine, point_inputs, REFINE.components(out),
                          api_name="refine_point", trigger_mode="always_last", concurrency_id="engine")
    gr.on(triggers, None, cancels=[refine])

    sweep = c["sweep_btn"].click(h.sweep, f.inputs(MERGE, "rows", "methods", "alphas", "until_ci", "budget_s"),
                                 SWEEP.components(out), api_name="sweep", concurrency_id="engine")
    c["stop_btn"].click(h.stop, None, r["status"], cancels=[sweep], queue=False, api_name="stop")

    # Settings that change what is plotted: show the stored points of the new setting.
    setting_events = [f.base.input, f.natural.input, f.robust.input, f.attack.input, f.eps.submit, f.eps.blur,
                      f.norm.input, f.task.input, f.n.submit, f.n.blur, *([f.theme.input] if "theme" in f else [])]
    gr.on(setting_events, h.show_stored, point_inputs, SHOW_STORED.components(out), api_name="show_stored")
    gr.on([f.natural.input, f.robust.input, f.advanced.input], h.lambda_sliders,
          [f.natural, f.robust, f.advanced, f.alpha], LAMBDA_SLIDERS.components(out), queue=False,
          api_visibility="private")
    f.advanced.input(lambda a: gr.update(visible=a), f.advanced, c["lambda_box"], queue=False,
                     api_visibility="private")
    show = dict(fn=lambda: gr.update(visible=True), outputs=files, queue=False, api_visibility="private")
    r["export_btn"].click(h.export, [f.rows, f.current], files, api_name="export").success(**show)
    r["ckpt_btn"].click(h.checkpoint, f.inputs(MERGE), files, api_name="checkpoint",
                        concurrency_id="engine").success(**show)
    return h.first_view, point_inputs, FIRST_VIEW.components(out)
