"""The web app's handlers driven directly, and its API through gradio_client (tiny zoo, CPU)."""
from __future__ import annotations

import re
import socket
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from explorer.ui import build_demo, common, launch_kwargs, parse_auth
from explorer.ui.frontier_handlers import FrontierHandlers
from explorer.ui.inspect_handlers import InspectHandlers
from explorer.ui.models_tab import ModelsHandlers


@pytest.fixture(scope="module")
def demo(tiny_zoo: Path, tmp_path_factory):
    store = tmp_path_factory.mktemp("ui_store") / "results.sqlite"
    return build_demo(str(tiny_zoo), device="cpu", store_path=str(store))


@pytest.fixture(scope="module")
def ctx(demo):
    return demo.explorer_service


def controls(alpha: float = 0.5, attack: str = "pgd-2", n: int = 16, method: str = "task_arithmetic",
             advanced: bool = False, lambdas=(0.0,) * 6, rows=None, **changes) -> dict:
    """Frontier control values by name (the form's group ``merge``) and the session's ``rows``."""
    v = dict(base="base", natural=["natural"], robust=["robust"], method=method, alpha=alpha, keep=1.0,
             scope="global", advanced=advanced, options="", attack=attack, eps="4/255", norm="Linf",
             task="shapes", n=n, rows=[] if rows is None else rows)
    return {**v, **{f"lambda_{i}": lam for i, lam in enumerate(lambdas)}, **changes}


def test_preview_then_refine(ctx) -> None:
    h = FrontierHandlers(ctx)
    fig, summary, row, caption = h.preview(controls(alpha=0.3))
    assert "★ is a preview (pgd-5 Linf eps=4/255 +reuse, n = 16)" in caption
    assert row["preview"] and row["alpha"] == 0.3 and row["attack"].startswith("pgd-5")
    assert "Preview" in summary and "pgd-5 Linf eps=4/255" in summary and "n = 16" in summary
    assert any(t.name.startswith("current (preview)") for t in fig.data)
    fig, summary, table, rows, row, caption = h.refine(controls(alpha=0.3))
    assert "Refined" in summary and row["attack"] == "pgd-2 Linf eps=4/255" and row["n"] == 16
    # The caption counts what is plotted (this one point, at least), with the attack, eps and n.
    plotted = int(caption.split(" ")[0])
    assert plotted == len(table) >= 1 and "pgd-2 Linf eps=4/255, n = 16, task shapes" in caption
    assert len(rows) == 1 and table.loc[0, "attack"] == "pgd-2 Linf eps=4/255"
    assert 0 <= row["robust_acc"] <= row["clean_acc"] <= 1


def test_advanced_mode_lambdas(ctx) -> None:
    h = FrontierHandlers(ctx)
    *_, row, _ = h.refine(controls(advanced=True, lambdas=(0.8, -0.2, 0, 0, 0, 0)))
    assert row["lambdas"] == [0.8, -0.2] and row["alpha"] is None
    ups = h.lambda_sliders(["natural"], ["robust"], True, 0.25)
    assert ups[0]["visible"] is False and ups[1]["visible"] and ups[1]["value"] == 0.75
    assert ups[2]["label"].startswith("λ robust") and ups[3]["visible"] is False


def test_sweep_streams_and_stores_then_resumes(ctx) -> None:
    h = FrontierHandlers(ctx)
    before = len(ctx.store)
    outs = list(h.sweep(controls(methods=["task_arithmetic"], alphas="0,0.5,1")))
    assert len(outs) == 4  # pretrained + 3 alphas, one yield per point
    fig, table, rows, status = outs[-1]
    assert status.startswith("Sweep 4/4") and "pgd-2 Linf eps=4/255, n = 16" in status
    assert len(table) >= 4 and len(ctx.store) >= before + 3  # plus points stored earlier
    kinds = {t.name for t in fig.data}
    assert {"pretrained (all λ = 0)", "natural endpoint (α = 0)", "robust endpoint (α = 1)"} <= kinds
    again = list(h.sweep(controls(methods=["task_arithmetic"], alphas="0,0.5,1")))
    assert "4 from the store" in again[-1][3]
    assert_accuracies_carry_intervals(table, rows)


ACC_CELL = re.compile(r"(\d\.\d{3}) \[(\d\.\d{3}),\s(\d\.\d{3})\]")


def assert_accuracies_carry_intervals(table, rows) -> None:
    """Every accuracy cell of the page's table is ``acc [lo, hi]`` (lo <= acc <= hi, the row's own
    Wilson interval), on a row naming its attack (with eps) and n."""
    from explorer.stats.intervals import acc_interval

    by_alpha = {r["alpha"]: r for r in rows if r.get("alpha") is not None}
    for _, rec in table.iterrows():
        assert "eps=" in rec["attack"] and re.fullmatch(r"[1-9]\d*(/[1-9]\d*)?", rec["n"])
        for col, key in ((common.CLEAN_COL, "clean"), (common.ROBUST_COL, "robust")):
            acc, lo, hi = map(float, ACC_CELL.fullmatch(rec[col]).groups())
            assert lo <= acc <= hi
            row = by_alpha.get(rec["α"])
            if row is not None and row["method"] == rec["method"]:
                want = acc_interval(row[f"{key}_acc"], row["n"])
                assert (acc, lo, hi) == (round(row[f"{key}_acc"], 3), round(want[0], 3), round(want[1], 3))


def test_stop_keeps_computed_points(ctx) -> None:
    h = FrontierHandlers(ctx)
    gen = h.sweep(controls(attack="fgsm", methods=["task_arithmetic", "ties"], alphas="0:1:5"))
    first = next(gen)
    assert "1/11" in first[3]
    assert "Stopping" in h.stop()
    rest = list(gen)
    assert "Stopped after" in rest[-1][3] and len(rest) <= 2
    stored = h.show_stored(controls(attack="fgsm"))
    assert stored[2].startswith(f"{len(stored[1])} point") and len(stored[1]) >= 1
    assert "fgsm Linf eps=4/255, n = 16" in stored[2]


def test_a_new_preview_abandons_the_running_refine(ctx, monkeypatch) -> None:
    import threading
    import time

    h = FrontierHandlers(ctx)
    # The tiny zoo is near chance: 64 images leave a few clean-correct ones to attack (16 may leave none).
    slow = controls(alpha=0.7, attack="pgd-3000", n=64, eps="0.0001")  # nothing is fooled: all 3000 steps run
    out = {}
    started = threading.Event()
    point = ctx.point

    def noted_point(*args, **kwargs):   # the refine has read its generation once it gets here
        started.set()
        return point(*args, **kwargs)

    monkeypatch.setattr(ctx, "point", noted_point)
    worker = threading.Thread(target=lambda: out.setdefault("refine", h.refine(slow)))
    t0 = time.perf_counter()
    worker.start()
    assert started.wait(60)             # under load the thread may take a while to get there
    time.sleep(0.5)                     # inside its attack
    *_, row, _ = h.preview(controls(alpha=0.2))  # waits for the engine, which the refine frees
    worker.join(timeout=60)
    assert not worker.is_alive() and row["alpha"] == 0.2
    assert all(isinstance(v, dict) and v.get("__type__") == "update" for v in out["refine"])
    assert time.perf_counter() - t0 < 30


def test_bad_inputs_are_readable(ctx) -> None:
    h = FrontierHandlers(ctx)
    with pytest.raises(gr.Error, match="eps"):
        h.preview(controls(eps="four"))
    with pytest.raises(gr.Error, match="natural and one robust"):
        h.refine(controls(natural=[]))
    with pytest.raises(gr.Error, match="pgd-K"):
        h.refine(controls(attack="pgd-x"))
    # an emptied α-values box is refused as on the command line (it silently swept 0:1:11)
    with pytest.raises(gr.Error, match=r"alphas '': no values; use start:stop:count"):
        list(h.sweep(controls(alphas="", methods=["task_arithmetic"])))
    # n above what the task holds is said as such, before the job is priced (it was a 'cost' refusal)
    for handler in (h.preview, h.refine):
        with pytest.raises(gr.Error, match=r"task 'fashion' has 2000 images; n=2500 is larger"):
            handler(controls(task="fashion", n=2500))
    with pytest.raises(gr.Error, match="nothing to export"):
        h.export([], None)


def test_exports(ctx, tmp_path) -> None:
    h = FrontierHandlers(ctx)
    *_, rows, row, _ = h.refine(controls(alpha=1.0))
    files = h.export(rows, row)
    assert [Path(f).suffix for f in files[:3]] == [".csv", ".json", ".html"]
    csv = Path(files[0]).read_text()
    assert "pgd-2 Linf eps=4/255" in csv and csv.startswith(",".join(common.EXPORT_COLUMNS))
    ckpt = h.checkpoint(controls(alpha=1.0))
    from safetensors.torch import load_file
    sd = load_file(ckpt)
    assert len(sd) == len(ctx.engine().layout.keys)


def test_partial_points_in_table_caption_and_exports(ctx) -> None:
    """A growing point (row contract: n_done of n, final False, intervals over n_done) is marked in
    the table (``n_done/n``), the caption, the CSV/JSON (``final``, ``n_done``) and the HTML figure
    (hollow marker); the same key replaces the stored complete point in the session's rows."""
    import json

    from explorer.stats.intervals import acc_interval

    h = FrontierHandlers(ctx)
    *_, rows, row, _ = h.refine(controls(alpha=0.5))
    grow = {**row, "n_done": 8, "final": False, "clean_acc": 0.5, "robust_acc": 0.25,
            "clean_ci": acc_interval(0.5, 8), "robust_ci": acc_interval(0.25, 8)}
    table = common.rows_table([grow, row])
    assert list(table["n"]) == ["8/16", "16"]
    assert table.loc[0, common.CLEAN_COL] == common.acc_cell(0.5, acc_interval(0.5, 8))
    text = common.caption([grow], row)
    assert "Partial (hollow): task_arithmetic: pgd-2 on 8/16 images." in text
    assert "Hypervolume 0.125 (partial: 1 of 1 points not complete)" in text
    assert "Partial" not in common.caption([row], row) and "Hypervolume" in common.caption([row], row)
    summary = common.point_summary(grow, "Refining")
    assert "n = 8/16 (partial, so far)" in summary
    csv, js, html = (Path(f) for f in h.export([grow], grow)[:3])
    import pandas as pd

    got = pd.read_csv(csv)   # the session's growing point first, then the store's other points
    assert (got["final"][0], got["n_done"][0], got["n"][0], got["alpha"][0]) == (False, 8, 16, 0.5)
    assert all(got["final"][1:]) and list(got["n_done"][1:]) == list(got["n"][1:])
    assert (got["alpha"] == 0.5).sum() == 1   # replaced by key: the stored complete copy is not repeated
    exported = json.loads(js.read_text())
    assert (exported[0]["final"], exported[0]["n_done"]) == (False, 8)
    assert "circle-open" in html.read_text() and "Pareto" not in common.marked([row])[0]
    assert common.marked([row])[0]["final"] is True and common.marked([row])[0]["n_done"] == 16


def inspect_values(image: str, classes: str, kind: str = "pgd", eps: str = "4/255", steps: int = 2) -> dict:
    """The inspect tab's values by name, with the frontier's current merge."""
    return {**controls(), "image": image, "classes": classes, "kind": kind, "inspect_eps": eps, "steps": steps}


def test_inspect_before_after(ctx, example_png) -> None:
    h = InspectHandlers(ctx)
    out = h.inspect(inspect_values(example_png, "circle, square, triangle, star", eps="8/255", steps=3))
    clean, adv, delta, *figs, summary, png = out
    assert clean.shape == adv.shape == delta.shape and clean.dtype == np.uint8
    assert np.abs(adv.astype(int) - clean.astype(int)).max() <= 8 + 1  # eps ball, rounding
    assert len(figs) == 3 and all(len(f.data) == 2 for f in figs)
    probs = [sum(f.data[0].x) for f in figs]
    assert all(0.99 <= p <= 1.01 for p in probs)  # all 4 classes shown: a distribution
    assert "pgd-3 Linf eps=8/255" in summary and Path(png).suffix == ".png"
    # Small images are shown enlarged by whole pixels; the downloaded PNG is native size.
    native = np.asarray(Image.open(png))
    k = clean.shape[0] // native.shape[0]
    assert clean.shape[0] >= 192 and k * native.shape[0] == clean.shape[0] and "×%d" % k in summary
    assert np.array_equal(adv[::k, ::k], native)


def test_filmstrip_and_transfer_handlers(ctx, example_png) -> None:
    h = InspectHandlers(ctx)
    values = {**inspect_values(example_png, "circle, square, triangle, star", eps="8/255", steps=3), "frames": 5}
    film = h.filmstrip(values)
    assert [t.type for t in film.data] == ["image"] * 5
    titles = [a.text for a in film.layout.annotations]
    assert titles[0].startswith("α=0.00") and titles[-1].startswith("α=1.00")
    assert all(("fooled" in t) != ("held" in t) for t in titles)
    strip, matrix = h.transfer(values)
    assert len(strip.data) == 3 and list(matrix.data[0].y) == ["current merge", "natural (α = 0)", "robust (α = 1)"]
    with pytest.raises(gr.Error, match="5 to 11"):
        h.filmstrip({**values, "frames": 12})


def test_inspect_errors(ctx, example_png, tmp_path) -> None:
    h = InspectHandlers(ctx)
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(gr.Error, match="Could not read the image"):
        h.inspect(inspect_values(str(bad), "a, b"))
    with pytest.raises(gr.Error, match="empty"):
        h.inspect(inspect_values(example_png, " , "))
    with pytest.raises(gr.Error, match="at least two"):
        h.inspect(inspect_values(example_png, "cat"))
    assert "circle" in h.task_classes("shapes")


def test_models_stats_and_bad_checkpoint(ctx, tmp_path) -> None:
    h = ModelsHandlers(ctx)
    table, heat, layers = h.stats("base", ["natural", "robust"])
    assert list(table["vector"]) == ["natural", "robust"] and (table["L2 norm"] > 0).all()
    assert heat.data[0].z[0][0] == pytest.approx(1.0, abs=1e-5)
    assert any(name.startswith("visual.block") for name in layers.data[0].x)
    import torch
    from safetensors.torch import save_file
    save_file({"foo.weight": torch.zeros(2, 2)}, str(tmp_path / "alien.safetensors"))
    with pytest.raises(gr.Error, match="Checkpoint rejected.*1 key does not belong"):
        h.add("base", str(tmp_path / "alien.safetensors"), None, "alien", "robust")   # as uploaded
    with pytest.raises(gr.Error, match="by name is off on this server"):    # no --checkpoint-dir
        h.add("base", None, str(tmp_path / "missing.safetensors"), "", "robust")
    assert "alien" not in ctx.manifest.models


def test_serve_flags() -> None:
    import argparse

    from explorer.app.flags import add_serve_args
    args = add_serve_args(argparse.ArgumentParser()).parse_args(["--auth", "ann:pw"])
    kw = launch_kwargs(args)
    assert kw["server_name"] == "127.0.0.1" and kw["share"] is False and kw["auth"] == ("ann", "pw")
    assert kw["max_file_size"] == "512mb" and kw["show_error"] is False   # no exception text in the page
    with pytest.raises(SystemExit, match="^--auth must look like USER:PASSWORD$"):
        parse_auth("no-colon")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_api_through_gradio_client(demo) -> None:
    from gradio_client import Client

    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(),
                quiet=True, show_error=True)
    try:
        client = Client(demo.local_url, verbose=False)
        endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert {"/preview_point", "/refine_point", "/sweep", "/inspect", "/add_checkpoint"} <= set(endpoints)
        form = demo.explorer_form
        order = form.api_order(form.inputs("merge", "theme"))   # the API takes the controls positionally
        assert order[:4] == ["theme", "base", "natural", "robust"] and order[-1] == "lambda_5"
        _, summary, _ = client.predict(*[controls(alpha=0.7, theme="dark")[k] for k in order],
                                       api_name="/preview_point")
        assert "Preview" in summary and "pgd-5 Linf eps=4/255" in summary
        with pytest.raises(Exception, match="eps"):
            client.predict(*[controls(eps="bad", theme="light")[k] for k in order], api_name="/preview_point")
    finally:
        demo.close()


def test_form_names_every_value_and_handlers_read_gradio_dicts(demo, ctx) -> None:
    """Handlers get what Gradio passes for set inputs ({component: value}) and read it by name."""
    form = demo.explorer_form
    merge = set(form.read({c: None for c in form.inputs("merge")}))
    assert merge == {"base", "natural", "robust", "method", "alpha", "keep", "scope", "advanced", "options",
                     "attack", "eps", "norm", "task", "n", *(f"lambda_{i}" for i in range(6))}
    assert form.group("inspect") == ["image", "classes", "kind", "inspect_eps", "steps", "frames"]
    h = FrontierHandlers(ctx, form)
    values = {form[k]: v for k, v in controls(alpha=0.4).items()}
    *_, row, _ = h.preview(values)
    assert row["alpha"] == 0.4 and row["preview"]
    with pytest.raises(ValueError, match="already has a control"):
        form.add(alpha=gr.Number())
    with pytest.raises(KeyError, match="no control or group"):
        form.inputs("nope")


def test_selection_reads_the_controls_by_name() -> None:
    from explorer.config import EvalSpec
    from explorer.ui import common

    sel = common.selection(controls(norm="L2", eps="2", advanced=True, lambdas=(0.8, -0.2, 0, 0, 0, 0)), "x")
    assert (sel.attack.name, sel.attack.norm, sel.attack.eps) == ("pgd-2", "L2", 2.0)  # L2 radii may exceed 1
    assert sel.spec.lambdas == (0.8, -0.2) and sel.spec.alpha is None and sel.names == ("natural", "robust")
    assert sel.eval == EvalSpec("shapes", 16) and sel.base == "base"
    assert common.selection(controls(base=None), "x").base == "x"
    with pytest.raises(ValueError, match="eps must lie in"):
        common.selection(controls(eps="2"), "x")              # Linf: at most 1


def test_choices_come_from_the_registries(demo) -> None:
    from explorer.attacks import ATTACK_NAMES
    from explorer.merging import METHODS

    form = demo.explorer_form
    values = lambda comp: [c[1] if isinstance(c, (tuple, list)) else c for c in comp.choices]  # noqa: E731
    assert values(form["method"]) == list(METHODS) == values(form["methods"])
    assert set(ATTACK_NAMES) <= set(values(form["attack"]))
    from explorer.attacks import ATTACKS
    from explorer.ui.inspect_handlers import attack_name
    kinds = values(form["kind"])   # Inspect's attack: every record (autoattack was missing), pgd by kind
    assert kinds == ["none", "fgsm", "pgd", "apgd-ce", "apgd-t", "autoattack-fast", "autoattack"]
    assert [attack_name(k, 7) for k in kinds] == [n.replace("-K", "-7") for n in ATTACKS]
