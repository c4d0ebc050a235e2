"""Variational block-wise composition (after VTVC): ``c_ij = lambda_i * g_ib(alpha) * m_ij``, j in block b.

Zhang, Du, Zhen, Shao, "Variational Task Vector Composition", NeurIPS 2025,
https://arxiv.org/abs/2509.18208. Our reading, adapted to the clean/robust trade-off:

Latents (inferred by :mod:`explorer.calibrate.variational`, its preparer; cached per base/vector
digests + calibration settings + ``seed``; alpha-independent).
Per vector i and block b (``blocks="tensor"``: one block per tensor, default; ``"layer"``: one per
transformer block ``...resblocks.N.``, other tensors alone) a multiplier ``m_ib = z_ib w_ib`` with a
spike-and-slab prior ``z ~ Bernoulli(prior_gate=0.5)``, ``w ~ N(1, prior_std=0.25^2)`` (slab centred
on the vector as given) and posterior ``q(z) = Bernoulli(sigmoid(phi))``, ``q(w) = N(mu, sigma^2)``
(initialised at the prior: ``mu=1, sigma=prior_std, phi=logit(prior_gate)``, so a block the
objective never sees keeps KL 0 and an uncertain gate). Inferred on *unlabelled* calibration
images (``calib_n`` = 64 of the ``train`` split, never the test split) at the anchor lambdas (alpha=``anchor``=0.5) by
``vi_steps`` (30) Adam steps (``vi_lr`` 0.05) on

    E_q[ H(p(.|x)) + H(p(.|x_adv)) ] / 2  +  kl_weight (0.05) * mean_b KL(q_ib || p_ib),

where H is the prediction entropy, ``x_adv`` is PGD-``attack_steps`` (Linf ``calib_eps``) against
the anchor with its own argmax as pseudo-labels (no labels are read), gates are sampled from a
relaxed Bernoulli (temperature 0.5) and slabs by reparametrisation, one sample per step, from a
generator seeded with ``spec.seed``. ``KL = KL(q(z)||p(z)) + q(z=1) KL(q(w)||p(w))``.

Merge (cheap, per keep/alpha). With ``p_ib = sigmoid(phi_ib)`` the gate posterior:
- uncertainty gating of a block: ``p >= 1/2 + gate_band`` (0.1) -> posterior mean
  ``mu``; ``|p - 1/2| < gate_band`` (uncertain) -> falls back to 1 (task arithmetic);
  ``p <= 1/2 - gate_band`` -> dropped (0).
- ``endpoint_blend="quadratic"`` (default): ``g = 1 + 4 alpha (1 - alpha) (m - 1)``, so the
  posterior acts fully at alpha=1/2 (where it was inferred) and not at all at the endpoints; with
  keep=1, alpha=0 and alpha=1 then give the natural and robust weights *exactly* (coefficients
  ``(1.0, 0.0)`` / ``(0.0, 1.0)``, as task arithmetic). ``"none"``: ``g = m``; alpha=0 then gives
  ``pre + sum_b m_nat,b tau_nat,b`` (the re-weighted natural vector) and the robust coefficient
  is exactly ``0.0``. Without ``spec.alpha`` (free lambdas) ``g = m``.
- ``keep`` < 1 means what it means for every other method: each vector keeps its top ``keep``
  coordinates by ``|tau|`` (``scope`` global or per tensor, as ``magnitude``), and the block
  multipliers act on those. At alpha 0 and 1 (quadratic blend) the merge is then ``magnitude``'s.
  (Version 1 made ``keep`` the fraction of *blocks* with the highest gates, ties by block order:
  a visual-only robust vector then spent its budget on text-tower blocks where it is zero and
  kept 0.9% of its coordinates at keep 0.2; robust accuracy at alpha=1 fell to 0.43.)
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import Tensor

from explorer.config import MergeSpec

from .base import Coefficient, MergeInputs, masked_coefficient
from .record import CALIBRATION_OPTIONS, MethodRecord, Option, read_option
from .sparsify import trim_mask

OPTIONS: dict[str, Option] = {
    **CALIBRATION_OPTIONS,
    "blocks": Option("tensor", "posterior blocks: one per tensor or one per resblock", ("tensor", "layer")),
    "vi_steps": Option(30, "Adam steps of the variational inference (posterior)"),
    "vi_lr": Option(0.05, "Adam learning rate of the variational inference (posterior)"),
    "kl_weight": Option(0.05, "weight of mean_b KL(q || p) in the objective (posterior)"),
    "prior_gate": Option(0.5, "prior probability that a block is on (posterior)"),
    "prior_std": Option(0.25, "prior std of a block multiplier around 1 (posterior)"),
    "endpoint_blend": Option("quadratic", "quadratic: posterior fully at alpha 1/2, not at 0/1; none: everywhere",
                             ("quadratic", "none")),
    "gate_band": Option(0.1, "|p - 1/2| below this is an uncertain gate: multiplier 1"),
}
_LAYER = re.compile(r"^(.*?resblocks\.\d+)\.")


def block_index(names: Sequence[str], mode: str = "tensor") -> list[int]:
    """Block id of each tensor: its own (``tensor``) or its transformer block's (``layer``)."""
    if mode not in ("tensor", "layer"):
        raise ValueError(f"blocks must be 'tensor' or 'layer', got {mode!r}")
    ids: dict[str, int] = {}
    out = []
    for name in names:
        m = _LAYER.match(name) if mode == "layer" else None
        out.append(ids.setdefault(m.group(1) if m else name, len(ids)))
    return out


def expand(values: Tensor, blocks: Sequence[int], segments: Sequence[tuple[int, int]]) -> Tensor:
    """Per-block values -> per-coordinate values (differentiable).

    Shape:
        values ``(..., B)``; returns ``(..., N)`` with N the end of the last segment.
    """
    sizes = torch.tensor([b - a for a, b in segments], device=values.device)
    idx = torch.tensor(list(blocks), device=values.device).repeat_interleave(sizes)
    return values[..., idx]



def block_multipliers(gate: Tensor, mu: Tensor, band: float) -> Tensor:
    """Gated multipliers ``m_ib``: gate on -> mu, uncertain -> 1, off -> 0.

    Shape:
        gate, mu ``(V, B)``; returns ``(V, B)`` float32.
    """
    on, uncertain = gate >= 0.5 + band, (gate - 0.5).abs() < band
    return torch.where(on, mu, torch.where(uncertain, torch.ones_like(mu), torch.zeros_like(mu))).float()


@torch.no_grad()
def variational(inputs: MergeInputs, spec: MergeSpec) -> list[Coefficient]:
    """``c_ij = lambda_i g_ib m_ij``: spike-and-slab block multipliers, top-keep mask (arxiv.org/abs/2509.18208).

    ``m_ij`` is ``magnitude``'s mask (all ones at keep = 1). Reads
    ``inputs.context["variational_posterior"]`` (``gate``, ``mu``: ``(V, B)``) and
    ``["variational_blocks"]`` (block id per segment), set by the ``variational`` preparer
    (``explorer.calibrate.variational``).
    """
    post, blocks = inputs.context.get("variational_posterior"), inputs.context.get("variational_blocks")
    if post is None or blocks is None or post["gate"].shape[0] != len(inputs.taus):
        raise ValueError("variational needs context['variational_posterior'] and ['variational_blocks']: "
                         "merge through Engine.merge (which runs the 'variational' preparer)")
    blend = str(read_option(spec, OPTIONS, "endpoint_blend"))
    if blend not in ("quadratic", "none"):
        raise ValueError(f"endpoint_blend must be 'quadratic' or 'none', got {blend!r}")
    mult = block_multipliers(post["gate"], post["mu"], float(read_option(spec, OPTIONS, "gate_band")))
    if blend == "quadratic" and spec.alpha is not None:
        mult = 1.0 + 4.0 * spec.alpha * (1.0 - spec.alpha) * (mult - 1.0)
    out: list[Coefficient] = []
    for tau, lam, m in zip(inputs.taus, spec.lambdas, mult):
        mask = trim_mask(tau, spec.keep, inputs.segments, spec.scope) if spec.keep < 1.0 and lam else None
        if lam == 0.0:
            out.append(0.0)
        elif bool((m == 1.0).all()):
            # all blocks exactly 1: a constant (exact at the endpoints), or magnitude's coefficient
            out.append(masked_coefficient(lam, mask))
        else:
            c = expand(m.to(inputs.device), blocks, inputs.segments).mul_(float(lam))
            out.append((c if mask is None else c.mul_(mask)).contiguous())
    return out



RECORD = MethodRecord("variational", variational, "https://arxiv.org/abs/2509.18208",
                      fields=("keep", "scope", "seed"), options=OPTIONS, preparer="variational",
                      version=2)  # 2: keep = magnitude mask under the block multipliers (was: a block fraction)
