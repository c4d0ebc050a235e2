"""A faster twin of a zero-shot classifier for computing attack gradients.

Attacks are the whole cost of a frontier point, and on a ResNet tower a large share of each
forward+backward goes to eval-mode BatchNorm and to memory layout. ``AttackTwin`` is the same
function as its ``ZeroShotClassifier`` with:

- every eval-mode BatchNorm2d folded into the Conv2d just before it
  (``w' = w * gamma / sqrt(var + eps)``, ``b' = beta - mean * gamma / sqrt(var + eps)``),
  exact up to float rounding;
- channels-last activations (oneDNN's fast layout on CPU);
- the attention pooling computed for the one output it returns: open_clip's ``AttentionPool2d``
  projects all HW+1 tokens to queries, keys and values and runs attention for every token, then
  keeps token 0 (the mean). The twin projects one query (the mean token's), gets the mean token's
  key and value as the mean of the spatial tokens' (projections are linear), adds the projected
  positional embeddings, and runs the HW+1-way softmax elementwise. On the demo tower (HW = 1)
  this halves the pooling's matrix products and drops the batched attention kernels.

Measured on the demo zoo's ResNet (2-core CPU, per image per forward+backward): 0.71 ms on
the model, 0.40 ms folded and channels-last, 0.34 ms with the pooled query as well. Every other
parameter is *shared* with the source model (the engine's flat buffer views), so only the
folded convolutions need ``refresh()`` after a merge.

The twin only proposes adversarial examples: ``evaluate`` decides clean correctness and
verifies every adversarial example on the source classifier, so a float-rounding difference
between the two can at most fail to count a proof, never invent one. Construction checks the
twin against the source on random input and refuses (``ValueError``) if they disagree.
Towers without BatchNorm (ViTs) get no twin: ``make_twin`` returns None.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d
from torch import nn

from explorer.core.finite import check_finite_logits
from explorer.evaluation.zeroshot import ZeroShotClassifier

log = logging.getLogger(__name__)

# Largest logit difference (relative to the logit scale) accepted between twin and source.
TOLERANCE = 1e-4


def _fold_pairs(twin: nn.Module, source: nn.Module) -> list[tuple[nn.Conv2d, nn.Conv2d, nn.BatchNorm2d]]:
    """Replace, in ``twin``, each Conv2d directly followed (in registration order) by a
    BatchNorm2d of matching width with a biased Conv2d and the BatchNorm with Identity.

    ``twin`` is a deep copy of ``source``; returns (twin conv, source conv, source bn) triples.
    Registration order matches call order in open_clip's ModifiedResNet (stem, bottlenecks,
    downsample); the construction-time check catches any module where it does not.
    """
    pairs = []
    src_children = dict(source.named_children())
    kids = list(twin.named_children())
    for name, child in kids:
        pairs += _fold_pairs(child, src_children[name])
    for (n_conv, conv), (n_bn, bn) in zip(kids, kids[1:]):
        if (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.num_features == conv.out_channels
                and bn.track_running_stats and bn.running_mean is not None):
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                              conv.padding, conv.dilation, conv.groups, bias=True,
                              padding_mode=conv.padding_mode).to(conv.weight.device)
            fused.requires_grad_(False)
            setattr(twin, n_conv, fused)
            setattr(twin, n_bn, nn.Identity())
            pairs.append((fused, src_children[n_conv], src_children[n_bn]))
    return pairs


def _share_parameters(twin: nn.Module, source: nn.Module, skip: set[int]) -> None:
    """Point every parameter and buffer of the twin (outside the ``skip`` modules, the folded
    convolutions) at the source's own tensor, so merges reach the twin without a copy."""
    src = dict(source.named_modules())
    for name, mod in twin.named_modules():
        if id(mod) in skip or name not in src:
            continue
        pairs = ((mod._parameters, src[name]._parameters), (mod._buffers, src[name]._buffers))
        for store, src_store in pairs:
            for key, t in list(store.items()):
                s = src_store.get(key)
                if t is not None and s is not None and s.shape == t.shape:
                    store[key] = s


class PooledQuery(nn.Module):
    """``AttentionPool2d`` evaluated for its returned token only; shares the pool's parameters.

    Shape: x [N, C, H, W] -> [N, output_dim]; equal to ``pool(x)`` up to float rounding.
    """

    def __init__(self, pool: AttentionPool2d) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pool
        n, c = x.shape[:2]
        heads = p.num_heads
        tokens = x.flatten(2).transpose(1, 2)                              # [N, HW, C]
        w_kv = torch.cat([p.k_proj.weight, p.v_proj.weight])               # [2C, C]
        b_kv = torch.cat([p.k_proj.bias, p.v_proj.bias])
        pos = p.positional_embedding.to(x.dtype)                           # [HW+1, C]
        kv = tokens @ w_kv.t()                                             # [N, HW, 2C]
        kv = torch.cat([kv.mean(1, keepdim=True), kv], 1) + F.linear(pos, w_kv, b_kv)
        k, v = kv.unflatten(-1, (2, heads, c // heads)).unbind(2)          # [N, HW+1, heads, d]
        q = F.linear(tokens.mean(1) + pos[0], p.q_proj.weight, p.q_proj.bias)
        q = q.view(n, 1, heads, c // heads) * (c // heads) ** -0.5
        attn = (q * k).sum(-1).softmax(1)                                  # [N, HW+1, heads]
        out = (attn.unsqueeze(-1) * v).sum(1).reshape(n, c)
        return p.c_proj(out)


class AttackTwin(nn.Module):
    """``clf`` with BatchNorm folded and channels-last activations; call ``refresh()`` after
    the source weights change.

    Shape: forward x [N, 3, H, W] float in [0, 1] -> logits [N, n_classes] float32.
    """

    def __init__(self, clf: ZeroShotClassifier, pairs: list, visual: nn.Module) -> None:
        super().__init__()
        self.source = [clf]          # a list: not registered as a submodule (no double params)
        self.visual = visual
        self._pairs = pairs
        self.refresh()

    @property
    def clf(self) -> ZeroShotClassifier:
        return self.source[0]

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the folded convolutions from the source's current conv and BN weights."""
        for fused, conv, bn in self._pairs:
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            fused.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clf = self.clf
        z = clf.preprocess(x).contiguous(memory_format=torch.channels_last)
        return clf.head_logits(self.visual(z))


@torch.no_grad()
@contextmanager
def exact_fp32() -> Iterator[None]:
    """Full-fp32 CUDA matmuls and convolutions (TF32 off) inside, the caller's settings after.

    The fold check measures the fold's algebra, not the precision the engine attacks with:
    TF32 alone moves logits by ~1e-4 relative (seen on an H200), the size of ``TOLERANCE``,
    and bf16 autocast by ~3.5e-3.
    """
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:   # a caller's bf16 autocast (3.5e-3 relative on an H200) is off here too
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def max_disagreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest |logit difference| between two classifiers on x, relative to the logit scale."""
    la, lb = a(x), b(x)
    return float((la - lb).abs().max() / lb.abs().max().clamp_min(1e-12))


def make_twin(clf: ZeroShotClassifier, *, seed: int = 0) -> AttackTwin | None:
    """The attack twin of ``clf``, or None when its vision tower has no BatchNorm to fold.

    Raises ``ValueError`` if the twin's logits disagree with the source's on random input, and
    ``finite.NonFiniteLogitsError`` if the source's own logits are NaN/inf there.
    """
    visual = clf.model.visual
    if not any(isinstance(m, nn.BatchNorm2d) for m in visual.modules()):
        return None
    if visual.training:
        raise ValueError("the vision tower must be in eval mode to fold its BatchNorm")
    twin_visual = copy.deepcopy(visual)
    pairs = _fold_pairs(twin_visual, visual)
    if not pairs:
        return None
    _share_parameters(twin_visual, visual, {id(f) for f, _, _ in pairs})
    if type(getattr(twin_visual, "attnpool", None)) is AttentionPool2d:
        twin_visual.attnpool = PooledQuery(twin_visual.attnpool)
    twin_visual.eval()
    twin = AttackTwin(clf, pairs, twin_visual)
    device = next(visual.parameters()).device
    g = torch.Generator().manual_seed(seed)
    probe = torch.rand(4, 3, *clf.image_size, generator=g).to(device)
    with torch.no_grad():   # a model with invalid weights is named as such, not as a bad fold
        check_finite_logits(clf(probe), inputs="random probe images")
    with exact_fp32():
        gap = max_disagreement(twin, clf, probe)
    if not gap <= TOLERANCE:
        raise ValueError(f"folded twin disagrees with its model (relative logit gap {gap:.2e}); "
                         f"this tower's BatchNorm layers do not directly follow their convolutions")
    log.debug("attack twin: %d conv+BN pairs folded, gap %.1e", len(pairs), gap)
    return twin
