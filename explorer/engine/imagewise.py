"""The trade-off image by image: one image attacked along the alpha path, and across models.

``filmstrip``: the image attacked (white-box) on merges at several alphas of the same vectors:
what the attack makes each merge see, and whether it fooled it. ``transfer``: the image attacked on
each of a few models and classified by every one of them (a 3x3 matrix for the current merge and
the two endpoints): do adversarial images of the natural model fool the robust one, and back?
``inspect``: the image attacked on each model, with its class probabilities before and after.
All take the resident engine (the caller holds its lock), run under its ``precision``, and return
plain values (images, class names, flags), so the service hands them to the UI as they are.

An image counts as *fooled* on a model when the model's prediction on it differs from the model's
own clean prediction (the untargeted white-box attack aims at exactly that: Carlini & Wagner's
"Towards Evaluating the Robustness of Neural Networks", and the transfer setting of Papernot et al.,
"Transferability in Machine Learning", arXiv:1605.07277).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from explorer.attacks import run_attack
from explorer.config import AttackSpec, MergeSpec
from explorer.core.device import in_own_precision
from explorer.evaluation.zeroshot import DEFAULT_TEMPLATES, ZeroShotClassifier

from .frontier import Engine


def merged_classifier(eng: Engine, names: Sequence[str], spec: MergeSpec, classnames: Sequence[str],
                      templates: Sequence[str] | None = None) -> ZeroShotClassifier:
    """Merge ``names`` by ``spec`` into the resident model; its zero-shot classifier over ``classnames``."""
    eng.merge(list(names), spec)
    norm = getattr(eng, "normalization", None)   # the merge's declared mean/std when the engine knows it
    normalize = norm(list(names)) if norm is not None else eng.manifest.get(eng.base).normalize
    clf = ZeroShotClassifier(eng.model, eng.tokenizer, list(classnames), templates or DEFAULT_TEMPLATES,
                             normalize=normalize)
    return clf.to(eng.device)


def class_probs(clf: ZeroShotClassifier, x: torch.Tensor) -> dict[str, float]:
    """Softmax probability of each class name for the one image ``x`` ([1, 3, H, W] in [0, 1])."""
    with torch.no_grad():
        return dict(zip(clf.classnames, clf(x).softmax(-1)[0].cpu().tolist()))


def predict(clf: ZeroShotClassifier, x: torch.Tensor) -> int:
    """Index of the top class of the one image ``x`` ([1, 3, H, W] in [0, 1])."""
    with torch.no_grad():
        return int(clf(x).argmax(-1)[0])


def attack_own_prediction(clf: ZeroShotClassifier, x: torch.Tensor, attack: AttackSpec) -> tuple[int, torch.Tensor]:
    """(clean prediction, adversarial image) of an untargeted attack on ``clf``'s own prediction.

    Raises ``Cancelled`` inside the attack once the enclosing cancel token is set."""
    y = predict(clf, x)
    return y, run_attack(clf, x, torch.tensor([y], device=x.device), attack)


@in_own_precision
def inspect(eng: Engine, models: Mapping[str, tuple[Sequence[str], MergeSpec]], x: torch.Tensor,
            classnames: Sequence[str], attack: AttackSpec,
            templates: Sequence[str] | None = None) -> dict[str, Any]:
    """The image attacked (white-box, on its own clean prediction) on each model; the zero-shot
    probabilities before and after.

    Shape: x is [1, 3, H, W] float in [0, 1] on the engine's device.

    Returns: ``{"probs": {label: (clean {class: p}, adversarial {class: p})}, "adv": {label:
    [1,3,H,W] CPU tensor}}``, in the order of ``models``.
    """
    probs, adv = {}, {}
    for label, (names, spec) in models.items():
        clf = merged_classifier(eng, names, spec, classnames, templates)
        _, x_adv = attack_own_prediction(clf, x, attack)
        probs[label] = (class_probs(clf, x), class_probs(clf, x_adv))
        adv[label] = x_adv.cpu()
    return {"probs": probs, "adv": adv}


@in_own_precision
def filmstrip(eng: Engine, natural: Sequence[str], robust: Sequence[str], merge: MergeSpec,
              alphas: Sequence[float], x: torch.Tensor, classnames: Sequence[str],
              attack: AttackSpec) -> list[dict[str, Any]]:
    """The image attacked on the merge at each alpha (``merge``'s method, keep and scope).

    Shape: x is [1, 3, H, W] float in [0, 1] on the engine's device.

    Returns: per alpha ``{"alpha", "adv": [1,3,H,W] tensor on the CPU, "clean_pred", "adv_pred",
    "fooled"}`` in the order given.
    """
    names = [*natural, *robust]
    frames = []
    for a in alphas:
        spec = MergeSpec.from_alpha(float(a), len(natural), len(robust), method=merge.method,
                                    keep=merge.keep, scope=merge.scope, options=merge.options)
        clf = merged_classifier(eng, names, spec, classnames)
        y, x_adv = attack_own_prediction(clf, x, attack)
        y_adv = predict(clf, x_adv)
        frames.append({"alpha": float(a), "adv": x_adv.cpu(), "clean_pred": classnames[y],
                       "adv_pred": classnames[y_adv], "fooled": y_adv != y})
    return frames


@in_own_precision
def transfer(eng: Engine, models: Mapping[str, tuple[Sequence[str], MergeSpec]], x: torch.Tensor,
             classnames: Sequence[str], attack: AttackSpec) -> dict[str, Any]:
    """Craft the adversarial image on each model; classify every crafted image by every model.

    Returns: ``{"models": labels, "adv": {src: [1,3,H,W] CPU tensor}, "clean": {label: class},
    "pred": {src: {dst: class}}, "fooled": {src: {dst: bool}}}``; ``fooled[src][dst]`` is
    ``dst``'s prediction on ``src``'s image differing from ``dst``'s clean prediction (the
    diagonal is the white-box result).
    """
    adv, clean = {}, {}
    for label, (names, spec) in models.items():
        clf = merged_classifier(eng, names, spec, classnames)
        y, adv[label] = attack_own_prediction(clf, x, attack)
        clean[label] = y
    pred: dict[str, dict[str, str]] = {s: {} for s in models}
    fooled: dict[str, dict[str, bool]] = {s: {} for s in models}
    for dst, (names, spec) in models.items():
        clf = merged_classifier(eng, names, spec, classnames)
        for src in models:
            y = predict(clf, adv[src])
            pred[src][dst], fooled[src][dst] = classnames[y], y != clean[dst]
    return {"models": list(models), "adv": {k: v.cpu() for k, v in adv.items()},
            "clean": {k: classnames[v] for k, v in clean.items()}, "pred": pred, "fooled": fooled}
