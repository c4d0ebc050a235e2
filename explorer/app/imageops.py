"""One uploaded image, attacked and classified by merged models: the app's image-wise operations.

uint8 images in, uint8 images out (``explorer.engine.imagewise`` computes on tensors); the
caller holds the engine's lock. ``Service.inspect`` / ``filmstrip`` / ``transfer`` call these.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from explorer.attacks import find_attack
from explorer.attacks.stages import STAGES
from explorer.config import AttackSpec, MergeSpec
from explorer.engine import imagewise
from explorer.engine.frontier import Engine

from .images import image_to_tensor, tensor_to_image

Models = dict[str, tuple[Sequence[str], MergeSpec]]   # display name -> (vector names, merge spec)


def inspect(eng: Engine, models: Models, image: np.ndarray, classnames: Sequence[str], attack: AttackSpec,
            templates: Sequence[str] | None = None) -> dict[str, Any]:
    """Zero-shot predictions before/after a white-box attack, for each named merged model.

    Args:
        models: display name -> (vector names, merge spec); the first one's adversarial image
            is returned for display.
        image: HxWx3 uint8.
        classnames: at least two class names (more for a targeted attack: ``check_class_count``).

    Returns: ``{"clean": uint8 image, "adv": uint8, "delta": uint8 (amplified),
    "probs": {name: (clean probs, adv probs)}, "linf": float}``.
    """
    check_class_count(attack, classnames)
    x = image_to_tensor(image)
    res = imagewise.inspect(eng, models, x.to(eng.device), classnames, attack, templates)
    x_adv = res["adv"][next(iter(models))]   # the first model's adversarial image is shown
    delta = x_adv - x
    scale = 0.5 / max(float(delta.abs().max()), 1e-12)
    return {"probs": res["probs"], "clean": tensor_to_image(x), "adv": tensor_to_image(x_adv),
            "linf": float(delta.abs().max()), "delta": tensor_to_image((0.5 + delta * scale).clamp(0, 1))}


def filmstrip(eng: Engine, natural: Sequence[str], robust: Sequence[str], merge: MergeSpec,
              alphas: Sequence[float], image: np.ndarray, classnames: Sequence[str],
              attack: AttackSpec) -> list[dict[str, Any]]:
    """One image attacked on the merge at each alpha (``imagewise.filmstrip``).

    Args:
        image: HxWx3 uint8. alphas: 1 to 11 values in [0, 1].

    Returns: per alpha ``{"alpha", "adv": HxWx3 uint8, "clean_pred", "adv_pred", "fooled"}``.

    Raises:
        ValueError: no alpha, more than 11, or one outside [0, 1].
    """
    if not 1 <= len(alphas) <= 11 or any(not 0.0 <= float(a) <= 1.0 for a in alphas):
        raise ValueError(f"the filmstrip takes 1 to 11 alphas in [0, 1], got {list(alphas)}")
    x = image_to_tensor(image).to(eng.device)
    frames = imagewise.filmstrip(eng, natural, robust, merge, alphas, x, classnames, attack)
    return [{**f, "adv": tensor_to_image(f["adv"])} for f in frames]


def transfer(eng: Engine, models: Models, image: np.ndarray, classnames: Sequence[str],
             attack: AttackSpec) -> dict[str, Any]:
    """One image attacked on each model, classified by every model (``imagewise.transfer``).

    Returns: ``{"models", "adv": {label: HxWx3 uint8}, "clean", "pred", "fooled", "attack"}``.
    """
    x = image_to_tensor(image).to(eng.device)
    res = imagewise.transfer(eng, models, x, classnames, attack)
    return {**res, "adv": {k: tensor_to_image(v) for k, v in res["adv"].items()}, "attack": attack.label}


def check_class_count(attack: AttackSpec, classnames: Sequence[str]) -> None:
    """Raise ``ValueError`` (before any work) when ``attack`` cannot run on this many classes.

    APGD-T (in ``apgd-t`` and both AutoAttacks) reads the 4th largest logit of its DLR loss.
    """
    need = max([2, *(STAGES[s].min_classes for s in find_attack(attack.name).stages)])
    if len(classnames) < need:
        raise ValueError(f"{attack.name} needs at least {need} class names (targeted APGD's DLR loss reads "
                         f"the 4th largest logit); got {len(classnames)}: add class names, or choose "
                         "pgd-K, fgsm or apgd-ce")
