"""Every wired handler returns exactly its event's outputs, on every path: the result, a cancelled
attack, a bad value, a stopped sweep, a page the user took over (``explorer/ui/outputs.py``).

The handlers are called as the page wires them (``demo.fns``: the function and the outputs Gradio
matches its return against), so a count that differs from the wiring fails here, not in the page.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from explorer.app.background import Snapshot
from explorer.core.cancel import Cancelled
from explorer.ui import build_demo, tiers
from explorer.ui.outputs import Outputs

HANDLER_CLASSES = ("FrontierHandlers", "InspectHandlers", "ModelsHandlers")
DRIVEN: set[str] = set()   # the handlers this module drove (the last test checks none is missed)


@pytest.fixture(scope="module")
def demo(tiny_zoo: Path, tmp_path_factory):
    store = tmp_path_factory.mktemp("outputs_store") / "results.sqlite"
    return build_demo(str(tiny_zoo), device="cpu", store_path=str(store))


def wired(demo, name: str):
    """The event functions of handler method ``name`` (``Class.method``), as Gradio holds them."""
    fns = [bf for bf in demo.fns.values() if getattr(bf.fn, "__qualname__", None) == name]
    assert fns, f"{name} is not wired"
    return fns


def call(demo, name: str, *args, **kwargs):
    """Call the wired ``name`` and check its return against each event it is wired to: one value
    per output (a tuple of that length; one output: the value itself, as Gradio takes it)."""
    DRIVEN.add(name)
    fns = wired(demo, name)
    out = fns[0].fn(*args, **kwargs)
    results = list(out) if hasattr(out, "__next__") else [out]
    for res in results:
        for bf in fns:
            if len(bf.outputs) == 1:
                assert not isinstance(res, (tuple, list)), f"{name}: {res!r} for one output"
            else:
                assert isinstance(res, (tuple, list)) and len(res) == len(bf.outputs), \
                    f"{name} returned {len(res)} values for {len(bf.outputs)} outputs"
    return results


def values(**changes) -> dict:
    v = dict(base="base", natural=["natural"], robust=["robust"], method="task_arithmetic", alpha=0.65, keep=1.0,
             scope="global", advanced=False, options="", attack="pgd-1", eps="4/255", norm="Linf", task="shapes",
             n=8, rows=[], theme="light", methods=["task_arithmetic"], alphas="0,1")
    return {**v, **{f"lambda_{i}": 0.0 for i in range(6)}, **changes}


def is_skip(v) -> bool:
    return isinstance(v, dict) and v.get("__type__") == "update" and len(v) == 1


def cancelled(*_a, **_k):
    raise Cancelled("a newer move")


def test_outputs_type_orders_names_and_skips_the_rest() -> None:
    out = Outputs("plot", "table", "status")
    res = out(status="s", plot="p")
    assert res[0] == "p" and is_skip(res[1]) and res[2] == "s" and len(out.skip()) == 3
    assert Outputs("film")(film="f") == "f"
    with pytest.raises(TypeError, match=r"\['tabel'\] not among the outputs"):
        out(tabel=1)
    with pytest.raises(KeyError, match=r"no component for the output\(s\) \['status'\]"):
        out.components({"plot": 1, "table": 2})
    with pytest.raises(ValueError, match="named twice"):
        Outputs("a", "a")


def test_live_point_paths(demo, monkeypatch) -> None:
    (row_out,) = call(demo, "FrontierHandlers.refine", values())
    row = row_out[4]
    assert row["alpha"] == 0.65 and row["attack"] == "pgd-1 Linf eps=4/255"
    (known,) = call(demo, "FrontierHandlers.preview", values(rows=[row]))   # on the curve: no attack
    assert known[2] is row and "Computed" in known[1]
    with pytest.raises(gr.Error, match="eps"):
        call(demo, "FrontierHandlers.preview", values(eps="four"))
    with pytest.raises(gr.Error, match="eps"):
        call(demo, "FrontierHandlers.refine", values(eps="four"))
    monkeypatch.setattr(demo.explorer_service, "point", cancelled)
    for name in ("FrontierHandlers.preview", "FrontierHandlers.refine"):
        (res,) = call(demo, name, values(alpha=0.35))
        assert all(map(is_skip, res))


def test_sweep_failed_point_and_stop_paths(demo, monkeypatch) -> None:
    service = demo.explorer_service

    def sweep(spec):
        yield {"failed": True, "method": "ties", "lambdas": [0.5, 0.5], "error": "non-finite weights"}
        service.serving.jobs.stop("default")
        yield {"failed": True, "method": "ties", "lambdas": [1.0, 0.0], "error": "non-finite weights"}
    monkeypatch.setattr(service, "sweep", sweep)
    outs = call(demo, "FrontierHandlers.sweep", values(methods=["ties"]))
    assert len(outs) == 3 and all(is_skip(v) for o in outs for v in o[:3])
    assert "1 point(s) failed (no accuracy): ties λ = (0.5, 0.5): non-finite weights" in outs[0][3]
    assert outs[-1][3].startswith("Stopped after 2/3 points")
    with pytest.raises(gr.Error, match="alphas 'x': 'x' is not a number; use start:stop:count"):
        call(demo, "FrontierHandlers.sweep", values(alphas="x"))


def test_page_state_paths(demo, monkeypatch) -> None:
    with pytest.raises(gr.Error, match="eps 'four' is not a number or a fraction like 4/255"):   # one line; the page keeps its plot
        call(demo, "FrontierHandlers.show_stored", values(eps="four"))
    (good,) = call(demo, "FrontierHandlers.show_stored", values())
    assert "pgd-1 Linf eps=4/255, n = 8" in good[2]
    (first,) = call(demo, "FrontierHandlers.first_view", values(eps="four"))
    assert "eps" in first[2] and is_skip(first[3]) and is_skip(first[4])
    # The default curve computed in the background while the user moves a control: status only.
    h = wired(demo, "FrontierHandlers.first_view")[0].fn.__self__
    snaps = itertools.chain([Snapshot(rows=[], total=3, done=False, error=None)] * 2,
                            itertools.repeat(Snapshot(rows=[], total=3, done=True, error=None)))

    def snapshot():
        h._live["default"] = h._live.get("default", 0) + 1   # a newer move of this session
        return next(snaps)
    job = SimpleNamespace(snapshot=snapshot, label="pgd-3 Linf eps=4/255")
    monkeypatch.setattr(tiers, "first_view_jobs", lambda service: [job])
    taken = call(demo, "FrontierHandlers.first_view", values(attack="pgd-3", n=32, alpha=0.5))
    assert len(taken) == 2 and all(is_skip(o[0]) and is_skip(o[3]) for o in taken)   # under way, then done
    assert "under pgd-3 Linf eps=4/255 in the background: 0/3 points" in taken[0][2]
    assert "in the background" not in taken[1][2]
    for k in (1, 5):
        (ups,) = call(demo, "FrontierHandlers.lambda_sliders", ["natural"] * k, ["robust"], True, 0.25)
        assert [u["visible"] for u in ups] == [False] + [True] * (k + 1) + [False] * (5 - k)


def test_inspect_paths(demo, example_png, monkeypatch) -> None:
    v = {**values(), "image": example_png, "classes": "circle, square, triangle, star", "kind": "pgd",
         "inspect_eps": "4/255", "steps": 1, "frames": 5}
    (res,) = call(demo, "InspectHandlers.inspect", v)
    assert res[0].shape == res[1].shape and Path(res[-1]).suffix == ".png"
    (film,) = call(demo, "InspectHandlers.filmstrip", v)
    assert [t.type for t in film.data] == ["image"] * 5
    (strip, matrix), = call(demo, "InspectHandlers.transfer", v)
    assert len(strip.data) == 3
    with pytest.raises(gr.Error, match="at least two"):
        call(demo, "InspectHandlers.inspect", {**v, "classes": "cat"})
    service = demo.explorer_service
    for name, method in (("inspect", "inspect"), ("filmstrip", "filmstrip"), ("transfer", "transfer")):
        monkeypatch.setattr(service, method, cancelled)
        with pytest.raises(gr.Error, match=r"Stopped \(stopped\)|Stopped"):
            call(demo, f"InspectHandlers.{name}", v)
    assert call(demo, "InspectHandlers.stop") == ["Stopping…"]
    assert "circle" in call(demo, "InspectHandlers.task_classes", "shapes")[0]


def test_models_and_other_paths(demo) -> None:
    (stats,) = call(demo, "ModelsHandlers.stats", "base", ["natural", "robust"])
    assert list(stats[0]["vector"]) == ["natural", "robust"]
    with pytest.raises(gr.Error, match="at least one task vector"):
        call(demo, "ModelsHandlers.stats", "base", [])
    with pytest.raises(gr.Error, match="upload a .safetensors"):
        call(demo, "ModelsHandlers.add", "base", None, "", None, "robust")
    with pytest.raises(gr.Error, match="nothing to export"):
        call(demo, "FrontierHandlers.export", [], None)
    assert call(demo, "FrontierHandlers.stop") == ["Stopping…"]
    with pytest.raises(gr.Error, match="natural and one robust"):
        call(demo, "FrontierHandlers.checkpoint", values(natural=[]))


def test_every_wired_handler_was_driven(demo) -> None:
    """A handler added to the page without a case above fails here (run after the others)."""
    names = {bf.fn.__qualname__ for bf in demo.fns.values()
             if bf.fn is not None and bf.fn.__qualname__.split(".")[0] in HANDLER_CLASSES}
    assert names - DRIVEN == set()
    assert len(names) == 16   # frontier 9, inspect 5, models 2
