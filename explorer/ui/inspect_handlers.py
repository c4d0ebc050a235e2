"""Inspect tab handler: one image, its zero-shot predictions before and after an attack.

The handler takes the page's values by name: the tab's own (``image, classes, kind, inspect_eps,
steps``) and the frontier's group ``"merge"`` (the current merge; its ``norm`` is the attack's).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import gradio as gr
import numpy as np

from explorer.app.images import encode_png
from explorer.app.service import Service
from explorer.attacks import ATTACKS, parse_attack
from explorer.config import MergeSpec, PointSpec
from explorer.core.cancel import Cancelled, cancel_scope
from explorer.data import get_task
from explorer.merging import canonical_spec
from explorer.viz import image_plots, plots

from . import common
from .common import readable_errors
from .form import Form
from .guard import session_of, start_job, stop
from .outputs import Outputs

TOP_K = 5
MAX_CLASSES = 200    # class names one Inspect may encode
DISPLAY_SIDE = 192   # on-screen side (px) small images are enlarged to
FILM_SIDE = 96       # side small images are enlarged to in the filmstrip and transfer panels
FRAMES = 6           # filmstrip alphas by default (0, 0.2, ..., 1)
STEPS_SUFFIX = "-K"  # an attack record named ``pgd-K`` takes its step count from the steps box
# The attack dropdown: every attack record, a stepped one by its kind (``pgd``), in registry order.
ATTACK_KINDS = [n.removesuffix(STEPS_SUFFIX) for n in ATTACKS]
MODELS = ("current merge", "natural endpoint", "robust endpoint")   # the three bar plots, in order

# Each event's outputs by name: inspect_tab wires these components, the handlers return these values.
INSPECT = Outputs("clean", "adv", "delta", *(f"bars_{i}" for i in range(len(MODELS))), "summary", "download")
FILMSTRIP = Outputs("film")
TRANSFER = Outputs("crafted", "transfer")


def parse_classes(text: str | None) -> list[str]:
    """Comma (or newline) separated class names; at least two distinct ones."""
    names = [c.strip() for c in (text or "").replace("\n", ",").split(",") if c.strip()]
    names = list(dict.fromkeys(names))
    if len(names) > MAX_CLASSES:
        raise gr.Error(f"{len(names)} class names: at most {MAX_CLASSES} here.")
    if not names:
        raise gr.Error("The class list is empty: type at least two class names, separated by commas.")
    if len(names) == 1:
        raise gr.Error(f"Only one class ({names[0]!r}): zero-shot classification needs at least two.")
    return names


def display_image(image: np.ndarray, min_side: int = DISPLAY_SIDE) -> tuple[np.ndarray, int]:
    """Nearest-neighbour upscale by the smallest integer factor reaching ``min_side`` pixels,
    so a 32-px demo image shows its pixels (and its perturbation) as blocks on screen.
    Returns (image, factor); downloads keep the native resolution."""
    k = max(1, -(-min_side // max(1, min(image.shape[:2]))))
    return (image.repeat(k, 0).repeat(k, 1) if k > 1 else image), k


def attack_name(kind: str, steps: float | int | None) -> str:
    """A stepped attack's kind + steps -> its name (``pgd`` + 10 -> ``pgd-10``); others as they are."""
    if f"{kind}{STEPS_SUFFIX}" in ATTACKS:
        if steps is None or int(steps) < 1:
            raise gr.Error(f"{kind.upper()} needs a whole number of steps >= 1")
        return f"{kind}-{int(steps)}"
    return kind


@contextlib.contextmanager
def stopped_as_error(job: Any) -> Iterator[None]:
    """Run the body under the job's cancel token; an attack ended by Stop, the time cap or a
    departed client becomes one readable line."""
    try:
        with cancel_scope(job):
            yield
    except Cancelled:
        raise gr.Error(f"Stopped ({job.stop_reason or 'stopped'}).") from None


class InspectHandlers:
    def __init__(self, service: Service, form: Form | None = None) -> None:
        self.service = service
        self.form = form or Form()

    @staticmethod
    def task_classes(task: str) -> str:
        """Class names of a task, as the comma list the text box takes."""
        if not task or task == "custom":
            return gr.skip()
        return ", ".join(get_task(task).classnames)

    def stop(self, request: gr.Request = None) -> str:
        """Stop this session's running or queued Inspect jobs (and its other jobs)."""
        return stop(self.service, request)

    def prepare(self, values: Mapping[Any, Any], request: gr.Request | None, what: str,
                attacked: int = 3) -> tuple[dict, Any, list[str], PointSpec, Any, dict, Any]:
        """Values by name, the decoded image, the class names, the selection, the attack, the
        three models (current merge, natural and robust endpoints) as ``{label: (vectors, spec)}``
        and the started job: priced (``attacked`` models x 1 image x the attack's cost) before the
        image is decoded (its pixel count checked first) or anything is attacked."""
        v = self.form.read(values)
        names = parse_classes(v["classes"])
        sel = common.selection(v, self.service.default_base)
        self.service.serving.check_names(session_of(request), sel.names)
        attack = parse_attack(attack_name(v["kind"], v["steps"]), v["inspect_eps"], v["norm"])
        job = start_job(self.service, request, what, attacked, 1, attack)
        image = self.service.decode_image(v["image"])
        nat, rob = sel.natural, sel.robust
        models = {
            "current merge": (sel.names, canonical_spec(sel.spec)),   # what is merged (TA: keep 1)
            "natural (α = 0)": (sel.names, MergeSpec.from_alpha(0.0, len(nat), len(rob))),
            "robust (α = 1)": (sel.names, MergeSpec.from_alpha(1.0, len(nat), len(rob))),
        }
        return v, image, names, sel, attack, models, job

    @readable_errors
    def filmstrip(self, values: Mapping[Any, Any], request: gr.Request = None,
                  progress=gr.Progress(track_tqdm=True)):
        """The image attacked on the current vectors' merge at ``frames`` alphas from 0 to 1."""
        count = int(self.form.read(values).get("frames") or FRAMES)
        if not 5 <= count <= 11:
            raise gr.Error(f"the filmstrip shows 5 to 11 alphas, not {count}")
        v, image, names, sel, attack, _, job = self.prepare(values, request, "Filmstrip", count)
        alphas = [round(i / (count - 1), 4) for i in range(count)]
        with stopped_as_error(job):
            frames = self.service.filmstrip(sel.base, sel.natural, sel.robust, canonical_spec(sel.spec), alphas,
                                            image, names, attack)
        frames = [{**f, "adv": display_image(f["adv"], FILM_SIDE)[0]} for f in frames]
        return FILMSTRIP(film=image_plots.filmstrip_figure(frames, attack=attack.label, theme=v.get("theme")))

    @readable_errors
    def transfer(self, values: Mapping[Any, Any], request: gr.Request = None,
                 progress=gr.Progress(track_tqdm=True)):
        """The image attacked on each of the three models, classified by the other two (and itself)."""
        v, image, names, sel, attack, models, job = self.prepare(values, request, "Transfer")
        with stopped_as_error(job):
            res = self.service.transfer(sel.base, models, image, names, attack)
        strip = image_plots.image_strip(
            [display_image(res["adv"][m], FILM_SIDE)[0] for m in res["models"]],
            [f"crafted on<br>{m}" for m in res["models"]], [False] * len(res["models"]),
            title="Adversarial images", detail=attack.label, theme=v.get("theme"))
        return TRANSFER(crafted=strip, transfer=image_plots.transfer_figure(res, theme=v.get("theme")))

    @readable_errors
    def inspect(self, values: Mapping[Any, Any], request: gr.Request = None,
                progress=gr.Progress(track_tqdm=True)):
        """Attack the image on the current merge and both endpoints; plots, images, a PNG.

        Stop, the time cap or a departed client end the attack between steps."""
        v, image, names, sel, attack, models, job = self.prepare(values, request, "Inspect")
        spec = models["current merge"][1]
        with stopped_as_error(job):
            res = self.service.inspect(sel.base, models, image, names, attack)
        figs = {}
        for i, (label, (clean, adv)) in enumerate(res["probs"].items()):
            top_c, top_a = max(clean, key=clean.get), max(adv, key=adv.get)
            title = f"{label}<br>{top_c} → {top_a}" + (" ✗ fooled" if top_c != top_a else " ✓ held")
            figs[f"bars_{i}"] = plots.topk_figure(clean, adv, k=min(TOP_K, len(names)), title=title,
                                                  attack=attack.label, theme=v.get("theme"))
        out = encode_png(res["adv"], common.export_dir(res["adv"].tobytes()) / "adversarial.png")
        where = spec.alpha if spec.alpha is not None else list(spec.lambdas)
        (clean, k), (adv, _), (delta, _) = (display_image(res[n]) for n in ("clean", "adv", "delta"))
        shown = f" Images enlarged ×{k} (nearest neighbour); the PNG is native size." if k > 1 else ""
        summary = (f"Attack **{attack.label}**, white-box on each model against its own clean "
                   f"prediction; ‖δ‖∞ = {res['linf'] * 255:.2f}/255. Images show the attack on the "
                   f"current merge ({spec.method}, {'α' if spec.alpha is not None else 'λ'} = {where}, "
                   f"keep {spec.keep:g}). Perturbation shown amplified ×{0.5 / max(res['linf'], 1e-12):.0f}." + shown)
        return INSPECT(clean=clean, adv=adv, delta=delta, **figs, summary=summary, download=str(out))
