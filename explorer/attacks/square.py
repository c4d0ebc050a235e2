"""Square Attack, per image and batch-free.

'Square Attack: a query-efficient black-box adversarial attack via random search' (Andriushchenko
et al. 2020) [https://arxiv.org/abs/1912.00049]; followed line by line for Linf:
fra31/auto-attack ``autoattack/square.py`` (``SquareAttack.attack_single_run``, margin loss,
``resc_schedule=False`` as AutoAttack builds it):

- start: x + eps * s, s in {-1, +1} drawn per (channel, column) (``random_choice([c, 1, w])``);
- query i: p = ``p_selection(i)`` (p_init halved at queries 10, 50, 200, 500, 1000, 2000, 4000,
  6000, 8000), window side s = max(round(sqrt(p * n_features / c)), 1) (at most min(h, w)), at
  (vh, vw) = int(U * (h - s)), int(U * (w - s)), filled with 2 eps times one sign per channel,
  projected to the ball and [0, 1]; kept when the margin loss decreases or the point is
  misclassified; an image stops at its first misclassified query.

The reference draws one window position and one sign vector per query for the whole batch
(``random_int`` / ``random_choice`` of shape [1] and [c, 1, 1]); here every image draws its own
from its generator (seed, image id, stage, restart), so its queries are the same whatever
else was in the batch. L2 runs torchattacks' ``Square`` (the reference's L2 schedule) on one
image at a time, seeded from the same per-image generator: batch-free by construction, slower.
"""
from __future__ import annotations

import math

import torch
import torchattacks
from torch import nn

from explorer.core.cancel import check_cancelled

from .apgd import StageResult, stream
from .gradient import bucketed, sample_generator
from .safety import PassCounter


def p_selection(p_init: float, it: int) -> float:
    """The reference's p schedule with ``resc_schedule=False``."""
    for bound, div in ((8000, 512), (6000, 256), (4000, 128), (2000, 64), (1000, 32), (500, 16),
                       (200, 8), (50, 4), (10, 2)):
        if it > bound:
            return p_init / div
    return p_init


def _margin(net: nn.Module, x: torch.Tensor, y: torch.Tensor, limit: int) -> torch.Tensor:
    """z_y - max_{k != y} z_k per row (the reference's margin loss); padded to ``BUCKET``."""
    pad = bucketed(torch.arange(len(x), device=x.device), limit=limit)
    with torch.no_grad():
        logits = net(x[pad])[:len(x)].clone()
    u = torch.arange(len(x), device=x.device)
    correct = logits[u, y].clone()
    logits[u, y] = -float("inf")
    return correct - logits.max(1)[0]


def square_linf(net: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, *, eps: float,
                seed: int, queries: int, p_init: float = 0.8, batch_rows: int = 256) -> StageResult:
    """Linf Square on every image with per-image draws.

    Shape:
        x: [M, C, H, W] in [0, 1] (model's device), y: [M], ids: [M] (CPU).
    """
    M, (c, h, w), dev = len(x), x.shape[1:], x.device
    code = stream("square")
    gens = [sample_generator(seed, int(i), code, 0, 0) for i in ids.tolist()]
    init = torch.stack([2 * torch.rand((c, 1, w), generator=g) - 1 for g in gens]).sign()
    # Every query's uniforms, drawn at once per image in query order (vh, vw, then c signs).
    draws = torch.stack([torch.rand((queries, 2 + c), generator=g) for g in gens]).to(dev)
    x_best = torch.clamp(x + eps * init.to(x), 0.0, 1.0)
    fw = torch.zeros(M, dtype=torch.long)
    fooled = torch.zeros(M, dtype=torch.bool)
    out = x.clone()
    for chunk in torch.arange(M, device=dev).split(batch_rows):
        margin = _margin(net, x_best[chunk], y[chunk], len(chunk))
        loss = margin.clone()
        fw[chunk.cpu()] += 1
        ar, ac = torch.arange(h, device=dev), torch.arange(w, device=dev)
        for i in range(queries):
            live = margin > 0
            if not bool(live.any()):
                break
            check_cancelled()
            rows = chunk[live]
            p = p_selection(p_init, i)
            s = min(max(int(round(math.sqrt(p * h * w))), 1), min(h, w))
            d = draws[rows, i]
            vh, vw = (d[:, 0] * (h - s)).long(), (d[:, 1] * (w - s)).long()
            win = (((ar >= vh[:, None]) & (ar < vh[:, None] + s))[:, None, :, None]
                   & ((ac >= vw[:, None]) & (ac < vw[:, None] + s))[:, None, None, :])
            signs = (2 * d[:, 2:] - 1).sign().view(-1, c, 1, 1)
            xc = x[rows]
            x_new = torch.min(torch.max(x_best[rows] + win * (2.0 * eps) * signs, xc - eps), xc + eps).clamp(0.0, 1.0)
            m_new = _margin(net, x_new, y[rows], len(chunk))
            fw[rows.cpu()] += 1
            better = (m_new < loss[live]) | (m_new <= 0)
            loss[live] = torch.where(m_new < loss[live], m_new, loss[live])
            margin[live] = torch.where(better, m_new, margin[live])
            keep = rows[better]
            x_best[keep] = x_new[better]
        done = margin <= 0
        fooled[chunk[done].cpu()] = True
        out[chunk[done]] = x_best[chunk[done]]
    return StageResult(fooled, out, torch.zeros(M, dtype=torch.long), fw)


def square_l2(net: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, *, eps: float,
              seed: int, queries: int, p_init: float = 0.8) -> StageResult:
    """L2 Square: torchattacks' ``Square`` (reference settings) on one image at a time, each
    seeded from its own generator. Call inside ``safety.attack_context`` (it reseeds globally)."""
    M = len(x)
    fooled, out, fw = torch.zeros(M, dtype=torch.bool), x.clone(), torch.zeros(M, dtype=torch.long)
    counted = PassCounter(net)
    code = stream("square")
    for j, sid in enumerate(ids.tolist()):
        check_cancelled()
        img_seed = int(torch.randint(2**31 - 1, (1,), generator=sample_generator(seed, sid, code, 0, 0)))
        atk = torchattacks.Square(counted, norm="L2", eps=eps, n_queries=queries, n_restarts=1, p_init=p_init,
                                  loss="margin", resc_schedule=False, seed=img_seed)
        before = counted.fwd
        adv = atk(x[j:j + 1], y[j:j + 1]).detach()
        with torch.no_grad():
            hit = bool(net(adv).argmax(1)[0] != y[j])
        fw[j] = counted.fwd - before + 1
        if hit:
            fooled[j], out[j] = True, adv[0]
    return StageResult(fooled, out, torch.zeros(M, dtype=torch.long), fw)
