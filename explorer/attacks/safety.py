"""Model hygiene for attacks and the sanity checks of auto-attack's ``checks.py``.

``AttackModel`` is what every attack in this package sees: an ``nn.Module`` over the user's
model (plain callables are wrapped) that feeds it contiguous float input and returns float
logits. ``attack_context`` puts the model in eval mode, freezes its parameters (no gradient
is accumulated into them) and isolates the global RNG; everything is restored on exit.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from explorer.core.cancel import check_cancelled

log = logging.getLogger(__name__)


class AttackModel(nn.Module):
    """``[0,1]`` pixels -> float logits, with input made contiguous.

    torchattacks' FAB calls ``.view`` on input gradients and on ``x_adv - x``. A leaf's
    ``.grad`` always takes the leaf's memory layout (autograd's AccumulateGrad re-lays it out,
    so a backward hook cannot fix it), hence a channels-last or permuted batch (e.g. images
    decoded HWC then permuted, common with ViT pipelines) crashes FAB. The fix is to hand the
    attacks contiguous leaves: ``run_attack`` does, and ``forward`` makes the network's own
    input contiguous too.

    Args:
        model: an ``nn.Module`` or a plain callable mapping pixels to logits.

    Raises:
        Cancelled: from ``forward`` once the enclosing cancel scope's token is set (this is what
            stops attacks whose loops are not ours, e.g. torchattacks' stages, within one step).

    Shape:
        forward: x [N, C, H, W] float in [0, 1] -> logits [N, n_classes] float32.
    """

    def __init__(self, model: nn.Module | Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        if isinstance(model, AttackModel):
            model = model.net
        if not isinstance(model, nn.Module):
            if not callable(model):
                raise TypeError(f"model must be an nn.Module or a callable, got {type(model).__name__}")
            model = _CallableModule(model)
        self.net = model
        # The wrapper reports its model's mode: torchattacks ends every attack with
        # ``model.train()`` when the model it was given said it was training, which would put a
        # model in eval mode (BatchNorm and all) into training mode mid-attack.
        self.training = model.training
        if next(self.net.parameters(), None) is None:
            # torchattacks reads the device from the first parameter (and prints otherwise).
            self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_cancelled()
        return self.net(x.contiguous()).float()


class PassCounter(nn.Module):
    """Counts the rows it forwards: ``fwd_bwd`` when the input requires grad under grad mode
    (a pass that is differentiated), ``fwd`` otherwise. Reports the wrapped model's mode, so
    torchattacks' mode restore keeps eval mode (see ``AttackModel``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.training = net.training
        self.fwd_bwd = self.fwd = 0

    def reset(self) -> None:
        self.fwd_bwd = self.fwd = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.fwd_bwd += len(x)
        else:
            self.fwd += len(x)
        return self.net(x)


class _CallableModule(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def attack_context(model: nn.Module) -> Iterator[None]:
    """Eval mode, frozen parameters, forked RNG; all restored afterwards.

    torchattacks seeds the *global* RNG (``torch.manual_seed(seed)``) inside ``perturb``; the
    fork keeps that from leaking into the caller's random stream.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    device = model_device(model)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    model.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, flag in modes:
            m.training = flag


def check_logits(logits: torch.Tensor, atol: float = 1e-4) -> None:
    """Raise ``ValueError`` if the outputs look like probabilities, not logits.

    Attacks on softmax outputs see flattened losses (auto-attack's first check).

    Shape:
        logits: [N, n_classes].
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"expected logits of shape [N, n_classes>=2], got {tuple(logits.shape)}")
    lg = logits.detach().float()
    in_unit = bool(((lg >= 0) & (lg <= 1)).all())
    sums_to_one = bool(torch.allclose(lg.sum(1), torch.ones_like(lg[:, 0]), atol=atol))
    if in_unit and sums_to_one:
        raise ValueError("the model outputs look like probabilities (rows in [0,1] summing to 1); "
                         "attacks need logits: remove the final softmax")


def check_gradients(model: nn.Module | Callable, x: torch.Tensor, y: torch.Tensor,
                    batch_size: int = 256) -> torch.Tensor:
    """Raise ``ValueError`` if the input gradient of the CE loss is all zeros for some sample.

    A zero gradient makes every gradient attack a no-op (gradient masking), so a robust
    accuracy measured on such points would be meaningless.

    Shape:
        x: [N, C, H, W] in [0, 1]; y: [N] int64. Returns per-sample gradient L2 norms [N].
    """
    net = AttackModel(model)
    device = model_device(net)
    norms = []
    with attack_context(net), torch.enable_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device).contiguous().requires_grad_(True)
            yb = y[i:i + batch_size].to(device)
            # Sum reduction: sample j's gradient is its own loss's gradient.
            loss = F.cross_entropy(net(xb), yb, reduction="sum")
            (g,) = torch.autograd.grad(loss, xb)
            norms.append(g.flatten(1).norm(dim=1).cpu())
    norms_t = torch.cat(norms)
    zero = (norms_t == 0).nonzero().flatten()
    if len(zero):
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:   # saturated by out-of-range pixels, not masked by the model
            raise ValueError(f"zero input gradient for {len(zero)} of {len(x)} samples with pixels in "
                             f"[{lo:.4g}, {hi:.4g}]: images must be float in [0, 1] (divide 0-255 by 255)")
        raise ValueError(f"zero input gradient for {len(zero)} of {len(x)} samples "
                         f"(indices {zero[:10].tolist()}...): gradient masking, attacks would be void")
    return norms_t
