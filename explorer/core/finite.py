"""Validity checks that keep invalid numbers out of every accuracy.

An accuracy is an argmax count, and ``argmax`` of a row of NaN is class 0: a model whose
weights or logits are not finite still "classifies", and its accuracy looks like a number.
These checks turn every such case into an ``InvalidPointError`` (a ``ValueError``: one readable
line in the CLI and the app) that names the cause, before anything is counted or stored.

**BatchNorm statistics under lambdas outside [0, 1].** ``running_mean`` and ``running_var``
are merged by the same formula as every other tensor, ``theta = (1 - sum c) pre + sum c_i ft_i``.
When every weight of that form (``1 - sum c`` and each ``c_i``) lies in [0, 1] it is a convex
combination, so a merged variance is a mixture of positive variances and stays positive.
Outside [0, 1] (negation, extrapolation, scale > 1) the statistics are extrapolated; we keep
them when they are still valid variances, and **refuse** the point when any merged
``running_var`` is negative (``InvalidMergeError`` names each buffer, its smallest value and
the coefficients): a negative variance has no meaning, ``sqrt(var + eps)`` would be NaN, and
clamping it would report a model nobody merged. Re-estimating the statistics on calibration
images would be a different merge (a method of its own), not a repair.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

log = logging.getLogger(__name__)

# Buffers that hold variances (must stay >= 0 after a merge).
VARIANCE_SUFFIXES = ("running_var",)
MAX_NAMED = 5   # tensors named in a message before "and N more"


class InvalidPointError(ValueError):
    """A point whose weights or outputs are invalid: it has no accuracy and is not stored."""


class InvalidMergeError(InvalidPointError):
    """Merged weights that are not finite, or BatchNorm variances below zero."""


class NonFiniteLogitsError(InvalidPointError):
    """A model returned NaN or infinite logits."""


def _named(items: Sequence[str]) -> str:
    head = ", ".join(items[:MAX_NAMED])
    return head + (f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else "")


@torch.no_grad()
def merge_problems(theta: torch.Tensor, keys: Sequence[str],
                   segments: Sequence[tuple[int, int]]) -> list[str]:
    """What is invalid in a merged flat buffer: one phrase per kind, naming the tensors.

    Shape:
        theta: ``(N,)`` float; ``segments[i]`` is the (start, end) of tensor ``keys[i]``.
    """
    problems = []
    chunk = 1 << 22   # bounded scratch: a whole-buffer isfinite would be a quarter model of bools
    if not all(bool(torch.isfinite(theta[i:i + chunk]).all()) for i in range(0, theta.numel(), chunk)):
        bad = [k for k, (a, b) in zip(keys, segments) if not bool(torch.isfinite(theta[a:b]).all())]
        problems.append(f"non-finite values (NaN/inf) in {_named(bad)}")
    negative = []
    for k, (a, b) in zip(keys, segments):
        if k.endswith(VARIANCE_SUFFIXES) and b > a:
            low = float(theta[a:b].min())
            if low < 0:
                negative.append(f"{k} (min {low:.3g})")
    if negative:
        problems.append(f"BatchNorm variance below zero in {_named(negative)}")
    return problems


def check_merged(theta: torch.Tensor, keys: Sequence[str], segments: Sequence[tuple[int, int]],
                 lambdas: Sequence[float], what: str = "merge") -> None:
    """Raise ``InvalidMergeError`` if the merged weights are not a valid model.

    Raises:
        InvalidMergeError: non-finite weights or negative BatchNorm variances; the message
            names the tensors, the lambdas, and why (see the module docstring).
    """
    problems = merge_problems(theta, keys, segments)
    if not problems:
        return
    lam = "(" + ", ".join(f"{v:g}" for v in lambdas) + ")"
    why = ""
    if any(p.startswith("BatchNorm") for p in problems):
        why = ("; BatchNorm statistics are merged with the weights' coefficients, and lambdas "
               "outside [0, 1] extrapolate running_var below zero (a variance cannot be negative; "
               "such a point is refused, not clamped)")
    raise InvalidMergeError(f"{what} with lambdas {lam} gives an invalid model: "
                            f"{'; '.join(problems)}{why}")


def check_finite_logits(logits: torch.Tensor, offset: int = 0, total: int | None = None,
                        inputs: str | None = None) -> None:
    """Raise ``NonFiniteLogitsError`` if any logit is NaN or infinite.

    Args:
        logits: ``[N, n_classes]`` of one batch; ``offset`` is the batch's first row in the
            whole set of ``total`` images (for the message).
        inputs: what the images were, when not the evaluated ones (e.g. "random probe images").
    """
    finite = torch.isfinite(logits)
    if bool(finite.all()):
        return
    rows = (~finite.all(1)).nonzero().flatten()
    if inputs is not None:
        where = f"on {inputs}"
    else:
        of = f" of {total}" if total is not None else ""
        where = f"for {len(rows)} image(s){of} (first: image {int(rows[0]) + offset})"
    raise NonFiniteLogitsError(f"the model returned NaN/inf logits {where}; its weights or inputs "
                               "are invalid, so no accuracy is computed")
