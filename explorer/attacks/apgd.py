"""APGD-CE and APGD-T (targeted DLR), per image and batch-free.

'Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks' (Croce & Hein 2020) [https://arxiv.org/abs/2003.01690]. Followed line by line for Linf
and L2: fra31/auto-attack ``autoattack/autopgd_base.py``, ``APGDAttack.attack_single_run``,
``APGDAttack.perturb`` and ``APGDAttack_targeted.perturb``:

- start: ``x + eps * normalize(t)`` clamped to [0, 1], t = 2 U[0, 1) - 1 (Linf, normalised by
  its max) or N(0, 1) (L2, normalised by its L2 norm);
- step size ``2 eps`` per image; momentum 0.75 (1 at the first step);
- checkpoints: the first after ``n_iter_2 = max(int(0.22 n), 1)`` steps, then windows shrinking by
  ``size_decr = max(int(0.03 n), 1)`` down to ``n_iter_min = max(int(0.06 n), 1)``; at one an
  image's step halves and it goes back to its best point and gradient when its loss rose in at
  most ``rho k`` of the last k steps, or when it did not halve at the previous checkpoint and its
  best loss has not improved since;
- losses: CE, or targeted DLR ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2 + 1e-12)`` with target
  t the (j + 2)-th largest clean logit for target j (9 targets at most);
- an image counts as broken when any iterate of any restart or target is misclassified.

Departures, none of which changes a flag:
- every start is drawn from the image's own generator (``gradient.sample_generator`` over
  (seed, image id, stage, target, restart)), never from one draw over the batch;
- a copy (one restart or target of one image) leaves the loop at its first misclassified iterate
  (it keeps that iterate), as do the copies of its image of higher index; lower ones run on, so
  the result is always the lowest copy that breaks the image, whatever ran beside it;
- copies of still-robust images are stacked along the batch (``lanes``): restarts r..r+L-1 or
  targets of one chunk in one forward, identical to running them one after the other.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from explorer.core.cancel import check_cancelled

from .gradient import bucketed, sample_generator


@dataclass
class StageResult:
    """What one stage did to each of its M images (CPU tensors except ``x_adv``)."""
    fooled: torch.Tensor        # bool [M]: a misclassified point was found
    x_adv: torch.Tensor         # [M, C, H, W] on the model's device: the proof, or x
    fwd_bwd: torch.Tensor       # int64 [M]: forward+backward passes spent on the image
    fwd: torch.Tensor           # int64 [M]: forward-only passes spent on the image


def checkpoints(steps: int) -> dict[int, int]:
    """Step index -> window k of every checkpoint of an n-step run (the reference's counter3)."""
    out, k, count = {}, max(int(0.22 * steps), 1), 0
    size_decr, k_min = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    for i in range(steps):
        count += 1
        if count == k:
            out[i], k, count = k, max(k - size_decr, k_min), 0
    return out


def _l2(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).view(-1, *[1] * (v.ndim - 1))


def unit_start(gen: torch.Generator, shape: tuple[int, ...], norm: str) -> torch.Tensor:
    """The reference's ``normalize(t)`` for one image: Linf t / max|t|, L2 t / ||t||_2."""
    if norm == "Linf":
        t = 2 * torch.rand(shape, generator=gen) - 1
        return t / (t.abs().max() + 1e-12)
    t = torch.randn(shape, generator=gen)
    return t / (t.norm() + 1e-12)


def loss_rows(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Per-row CE (``target`` None) or targeted DLR loss [R] (the reference's ``dlr_loss_targeted``)."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    z = logits.sort(dim=1)[0]
    u = torch.arange(len(y), device=logits.device)
    return -(logits[u, y] - logits[u, target]) / (z[:, -1] - 0.5 * (z[:, -3] + z[:, -4]) + 1e-12)


def _step(xa: torch.Tensor, grad: torch.Tensor, step: torch.Tensor, x: torch.Tensor, g2: torch.Tensor,
          a: float, eps: float, norm: str, box: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """One APGD update with momentum (the reference's two projections, Linf or L2).

    ``box`` (Linf): the rows' ``(max(x - eps, 0), min(x + eps, 1))``, computed once per wave. The
    reference's ``clamp(min(max(v, x - eps), x + eps), 0, 1)`` equals ``clamp(v, lo, hi)`` exactly
    for x in [0, 1] (comparisons only), in a third of the passes over memory.
    """
    if norm == "Linf":
        lo, hi = box if box is not None else ((x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0))
        x1 = torch.clamp(xa + step * grad.sign(), lo, hi)
        return torch.clamp(xa + (x1 - xa) * a + g2 * (1 - a), lo, hi)

    def proj(v: torch.Tensor) -> torch.Tensor:
        d = v - x
        return torch.clamp(x + d / (_l2(d) + 1e-12) * torch.clamp(_l2(d), max=eps), 0.0, 1.0)
    x1 = proj(xa + step * grad / (_l2(grad) + 1e-12))
    return proj(xa + (x1 - xa) * a + g2 * (1 - a))


@dataclass
class Wave:
    """Copies run side by side: row r attacks image ``owner[r]`` as its copy ``rank[r]``."""
    owner: torch.Tensor          # int64 [R], index into the stage's images (model's device)
    rank: torch.Tensor           # int64 [R], copy index (target-major: target * restarts + restart)
    start: torch.Tensor          # [R, C, H, W] start points in the ball and [0, 1]
    target: torch.Tensor | None  # int64 [R] target classes (APGD-T) or None (CE)


def run_wave(net: nn.Module, x: torch.Tensor, y: torch.Tensor, w: Wave, eps: float, norm: str,
             steps: int, rho: float, fwd_bwd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD on every copy of ``w``; per image, the lowest copy that broke it and its first
    misclassified iterate.

    Shape:
        x: [M, C, H, W] in [0, 1], y: [M] on the model's device; R = len(w.owner) rows (one batch).
        ``fwd_bwd`` int64 [M] (CPU) is incremented per pass per image. Returns (fooled bool [M] on
        the CPU, x_adv [M, C, H, W]: x where not fooled).
    """
    R, M = len(w.owner), len(x)
    xr, yr, owner, tgt = x[w.owner], y[w.owner], w.owner, w.target
    x_adv = w.start.clone()
    x_old, x_best, x_hit = x_adv.clone(), x_adv.clone(), x_adv.clone()
    grad = torch.zeros_like(x_adv)
    loss_steps = torch.zeros(R, steps + 1, device=x.device)    # column 0: the reference's unwritten row
    step = torch.full((R, *[1] * (x.ndim - 1)), 2.0 * eps, device=x.device)
    lo, hi = (xr - eps).clamp(min=0.0), (xr + eps).clamp(max=1.0)   # the Linf box (``_step``)
    hit = torch.zeros(R, dtype=torch.bool, device=x.device)
    best_rank = torch.full((M,), 2**62, dtype=torch.long, device=x.device)

    def pass_(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = bucketed(rows, limit=R)   # padding never beyond the wave's own rows
        xa = x_adv[pad].requires_grad_(True)   # indexing copies: a leaf of its own
        with torch.enable_grad():
            logits = net(xa)
            loss = loss_rows(logits, yr[pad], None if tgt is None else tgt[pad])
            (g,) = torch.autograd.grad(loss.sum(), xa)
        n = len(rows)
        fwd_bwd.index_add_(0, owner[rows].cpu(), torch.ones(n, dtype=torch.long))
        grad[rows] = g[:n]
        broken = logits[:n].detach().argmax(1) != yr[rows]
        h = rows[broken]
        if len(h):
            hit[h], x_hit[h] = True, x_adv[h]
            best_rank.scatter_reduce_(0, owner[h], w.rank[h], reduce="amin")
        return loss[:n].detach(), rows[~(hit[rows] | (w.rank[rows] > best_rank[owner[rows]]))]

    active = torch.arange(R, device=x.device)
    loss_best, active = pass_(active)
    loss_best = loss_best.clone()
    grad_best = grad.clone()
    last_best, reduced = loss_best.clone(), torch.ones(R, dtype=torch.bool, device=x.device)
    checks = checkpoints(steps)
    for i in range(steps):
        if len(active) == 0:
            break
        check_cancelled()
        a_ = 0.75 if i > 0 else 1.0
        if len(active) == R:   # every row still runs (active is arange(R)): no gathers, no scatters
            box = (lo, hi) if norm == "Linf" else None
            new = _step(x_adv, grad, step, xr, x_adv - x_old, a_, eps, norm, box)
            x_old, x_adv = x_adv, new
        else:
            xa = x_adv[active]
            g2 = xa - x_old[active]
            x_old[active] = xa
            box = (lo[active], hi[active]) if norm == "Linf" else None
            x_adv[active] = _step(xa, grad[active], step[active], xr[active], g2, a_, eps, norm, box)
        rows = active
        loss, active = pass_(rows)
        loss_steps[rows, i + 1] = loss
        up = loss > loss_best[rows]
        u = rows[up]
        x_best[u], grad_best[u], loss_best[u] = x_adv[u], grad[u], loss[up]
        if i in checks:
            k, a = checks[i], active
            ls = loss_steps[a]
            rises = (ls[:, i + 2 - k:i + 2] > ls[:, i + 1 - k:i + 1]).sum(1).float()
            fl = (rises <= k * rho) | (~reduced[a] & (last_best[a] >= loss_best[a]))
            reduced[a], last_best[a] = fl, loss_best[a]
            r = a[fl]
            step[r] /= 2.0
            x_adv[r], grad[r] = x_best[r], grad_best[r]
    fooled = best_rank < 2**62
    win = hit & (w.rank == best_rank[owner])
    out = x.clone()
    out[owner[win]] = x_hit[win]
    return fooled.cpu(), out


def stream(stage: str) -> int:
    """A stable integer for a stage name in the seed words (CRC32; stage aliases share it)."""
    import zlib
    return zlib.crc32(stage.encode())


def apgd_stage(net: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, *, eps: float,
               norm: str, seed: int, steps: int, restarts: int, rho: float, n_targets: int = 0,
               batch_rows: int = 256, stage: str = "apgd-ce") -> StageResult:
    """APGD-CE (``n_targets`` 0) or APGD-T on every image, per image and batch-free.

    Copies are target-major (target j, restart r is copy j * restarts + r, the reference's loop
    order). Images go in chunks of at most ``batch_rows``; each wave stacks, for every image of
    the chunk still unbroken, its next L = batch_rows // (images left) copies.

    Shape:
        x: [M, C, H, W] in [0, 1] (model's device), y: [M], ids: [M] (CPU) the images' stable ids.
    """
    dev, M = x.device, len(x)
    fooled, x_adv = torch.zeros(M, dtype=torch.bool), x.clone()
    fb, fw = torch.zeros(M, dtype=torch.long), torch.zeros(M, dtype=torch.long)
    order = None
    if n_targets:
        with torch.no_grad():   # targets: the clean logits' ranking (one forward per image)
            order = torch.cat([net(x[c][bucketed(torch.arange(len(c), device=dev), len(c))])[:len(c)]
                               .argsort(1) for c in torch.arange(M, device=dev).split(batch_rows)])
        fw += 1
    copies, code = restarts * max(n_targets, 1), stream(stage)
    for chunk in torch.arange(M, device=dev).split(batch_rows):
        todo, j0 = chunk, 0
        while j0 < copies and len(todo):
            lanes = max(1, min(copies - j0, batch_rows // len(todo)))
            ranks = torch.arange(j0, j0 + lanes, device=dev)
            owner = todo.repeat_interleave(lanes)
            rank = ranks.repeat(len(todo))
            start = torch.stack([
                unit_start(sample_generator(seed, int(ids[o]), code, int(r) // restarts, int(r) % restarts),
                           tuple(x.shape[1:]), norm) for o, r in zip(owner.tolist(), rank.tolist())]).to(x)
            start = (x[owner] + eps * start).clamp(0.0, 1.0)
            target = None if order is None else order[owner, -(rank // restarts + 2)]
            local = torch.full((M,), -1, dtype=torch.long, device=dev)
            local[todo] = torch.arange(len(todo), device=dev)
            wave = Wave(local[owner], rank, start, target)
            sub_fb = torch.zeros(len(todo), dtype=torch.long)
            hit, adv = run_wave(net, x[todo], y[todo], wave, eps, norm, steps, rho, sub_fb)
            fb[todo.cpu()] += sub_fb
            t_cpu = todo.cpu()
            fooled[t_cpu[hit]] = True
            x_adv[todo[hit.to(dev)]] = adv[hit.to(dev)]
            todo, j0 = todo[~hit.to(dev)], j0 + lanes
    return StageResult(fooled, x_adv, fb, fw)
