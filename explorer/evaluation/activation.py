"""The attack / evaluation batch from an activation-memory budget.

An attack step is a forward+backward, and autograd keeps the tensors the backward needs (the
"saved tensors") for every image of the batch until the backward has run: that, not the model,
is what a batch costs. Measured with ``bytes_per_image`` on a ViT-B/32 zero-shot classifier
(224 px, parameters frozen as in an attack): 18.5 MiB per image, so the former fixed batch of
256 would have held ~4.6 GiB of activations next to a 0.56 GiB model; ViT-L/14 costs far more.

``bytes_per_image`` runs the network once on one image and once on two, each under
``torch.autograd.graph.saved_tensors_hooks``, and takes the difference of the distinct storages
saved: weights, the text head and anything else that does not grow with the batch cancel, and
nothing architecture-specific is assumed (ViT, ResNet, any device). ``batch_for`` then takes the
largest batch whose saved tensors fit the budget, at most the configured batch, and at least one
image; batches of ``BUCKET`` images or more are a multiple of it (the attacks pad shrinking
batches to ``BUCKET`` multiples, never beyond the batch itself: ``attacks.gradient.bucketed``).

The budget is a constant per device type (``BUDGETS``), never a reading of free memory: the
AutoAttack stages (torchattacks) draw their random starts per chunk, so their numbers depend on
the batch, and a point's number must depend on its spec, not on what else holds the device.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from explorer.attacks.gradient import BUCKET
from explorer.attacks.safety import AttackModel, attack_context
from explorer.core.heap import release_freed_heap

log = logging.getLogger(__name__)

MiB = 2 ** 20
# Saved-activation bytes one attack batch may hold, per device type. A step's whole transient is
# ~1.4 x its saved bytes plus ~40 MiB (the backward's gradients; measured on ViT-B/32, CPU: 360 MiB
# peak at 13 images, 18.5 MiB saved each). CPU: 128 MiB, ViT-B/32 at 6 images (~0.2 GiB, 1.1 x
# the 2-vector floor; a CPU gains little from larger batches). CUDA: 640 MiB, a transient of
# ~0.9 GiB, which keeps the device within the bound of 1.25 x the resident floor + 1 GB
# for any model size (1 GiB, ~1.44 GiB transient, would not for models of floor < 1.8 GiB, e.g. a
# CLIP RN50 with two vectors); ViT-B/32 at 32 images.
BUDGETS = {"cpu": 128 * MiB, "cuda": 640 * MiB}
DEFAULT_BUDGET = 128 * MiB   # any other device type


@dataclass(frozen=True)
class BatchPlan:
    """The batch chosen for one network and input shape.

    Attributes:
        batch: images per forward (and forward+backward), >= 1.
        per_image: autograd's saved bytes per image (``bytes_per_image``).
        budget: the activation budget the batch was chosen for (bytes).
    """

    batch: int
    per_image: int
    budget: int


def budget_for(device: torch.device | str) -> int:
    """The default activation budget (bytes) of a device type (``BUDGETS``)."""
    return BUDGETS.get(torch.device(device).type, DEFAULT_BUDGET)


def saved_bytes(net: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for a backward of ``net(x)`` to ``x``.

    Shape: x [N, C, H, W] in [0, 1] on the network's device. Gradients are enabled for this
    forward only; nothing is kept afterwards.
    """
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    xa = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(xa)
    del out, xa
    return sum(storages.values())


def bytes_per_image(net: nn.Module, x: torch.Tensor) -> int:
    """Autograd's saved bytes per image of an attack step on ``net`` (at least 1).

    Measured as ``saved_bytes`` of two images minus that of one (``x[:1]`` and ``x[:1]`` twice),
    inside ``attacks.safety.attack_context`` (eval mode, frozen parameters), as an attack runs.

    Shape: x [N >= 1, C, H, W] float in [0, 1]: the images the network will see.
    """
    one = x[:1]
    wrapped = AttackModel(net)
    with attack_context(wrapped):
        b1 = saved_bytes(wrapped, one)
        b2 = saved_bytes(wrapped, torch.cat([one, one]))
    return max(1, b2 - b1)


def batch_for(per_image: int, budget: int, cap: int) -> int:
    """Largest batch of ``per_image``-byte images within ``budget``, in [1, cap].

    At or above ``BUCKET`` images it is rounded down to a multiple of ``BUCKET`` (unless ``cap``
    itself is smaller), so the attacks' bucket padding never needs rows beyond it.
    """
    n = max(1, min(cap, budget // max(1, per_image)))
    if BUCKET <= n < cap:
        n -= n % BUCKET
    return n


def plan_batch(net: nn.Module, x: torch.Tensor, budget: int, cap: int) -> BatchPlan:
    """``BatchPlan`` of ``net`` on images shaped like ``x`` (``bytes_per_image`` + ``batch_for``)."""
    if len(x) == 0:
        return BatchPlan(cap, 0, budget)
    per_image = bytes_per_image(net, x)
    release_freed_heap()        # the measuring forwards' activations
    plan = BatchPlan(batch_for(per_image, budget, cap), per_image, budget)
    log.info("batch %d: %.2f MiB saved per image, budget %.0f MiB, at most %d",
             plan.batch, per_image / MiB, budget / MiB, cap)
    return plan
