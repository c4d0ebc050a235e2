"""Stability-aware complementary masks (our reading of PISTOLE): ``c_i = lambda_i * m_i``.

PISTOLE, "prediction stability-aware merging of naturally and robustly fine-tuned VLMs" (abstract
only; see docs/DESIGN.md). Everything below is *our* concrete reading; each choice is an option.
The method as the paper describes it (soft masks, trajectory, PCI) is ``pistole``
(:mod:`explorer.merging.pistole`); this one stays as our variant.

Scores (computed once per base/vector digests + calibration settings, cached; alpha-independent;
computed by :mod:`explorer.calibrate.stability`, its preparer):

1. Anchor ``theta_0 = pre + sum_i lambda_i^0 tau_i`` with the alpha=``anchor`` (default 0.5)
   lambdas: the middle of the trade-off, where the masks matter most.
2. Calibration set: ``calib_n`` (64) images of the ``train`` split of ``calib_task`` (manifest
   default task), never the test split. Adversarial twin: PGD-``attack_steps`` (5), Linf
   ``calib_eps`` (manifest default eps), recomputed against every trajectory point.
3. At a parameter point ``theta``: ``g_nat = grad L_CE(theta; x)``, ``g_rob = grad L_CE(theta; x_adv)``.
   For a natural vector ``own = g_nat, other = g_rob``; for a robust one the reverse. Per coordinate:
   benefit ``b_i = -own ⊙ tau_i`` (first-order drop of its own loss when tau_i is added),
   interference ``r_i = other ⊙ tau_i`` (first-order rise of the counterpart's loss), and the
   stability score ``s_i = b_i - beta * phi(r_i)`` with ``beta`` = 1 and ``phi`` by
   ``interference``: ``signed`` (default: ``s_i`` is then the first-order drop of
   ``L_own + beta L_other``, so coordinates that help both rank first), ``relu`` (only harmful
   interference penalised) or ``abs`` (any cross-objective impact penalised).
4. Adversarial parameter trajectory: ``traj_steps`` (3) steps of normalised ascent on the robust
   loss, ``theta_{t+1} = theta_t + rho g_rob/||g_rob||`` with ``rho = traj_radius`` (0.05) x
   ``||theta_0 - pre||``. Prediction-sensitivity index of step t >= 1:
   ``kappa_t = mean_x KL(p_theta0(.|x) || p_theta_t(.|x))`` on the clean calibration images.
   Final score ``S_i = (s_i^0 + sum_t w_t s_i^t) / (1 + sum_t w_t)`` with ``w_t = kappa_t /
   mean_t kappa_t`` (1 if every kappa is 0): sharper steps (larger prediction change) weigh more.

Masks at merge time (cheap: sort orders cached per scores; masks cached per keep/scope/lambdas):
each vector keeps exactly ``round(keep * numel)`` coordinates (globally, or per tensor with
``scope="per_tensor"``), claimed in the order of option ``rank`` (default ``magnitude``,
``|tau_i|``). The masks are *complementary*: for two vectors and keep <= 1/2 they are disjoint
(every vector claims its best free coordinates; a coordinate both claim goes to the larger
``w_i C_i / mean|C_i|`` with ``C_i`` by option ``contest_by``, default ``impact`` = ``|S_i|``:
the vector on whose joint objective the coordinate acts more; the loser claims its next best),
for keep >= 1/2 their *drops* are disjoint (every coordinate is kept by at least one vector).
Either way the overlap is the minimum possible, ``max(0, 2k - n)``. With more vectors the same
holds while ``V k <= n`` (or ``V (n - k) <= n``); otherwise masks are independent top-k.
The contest weights ``w_i`` (option ``contest``): ``lambda`` (default) ``w_i = |lambda_i|``, so a
contested coordinate goes to the vector that weighs more at this alpha, and at alpha=0/1 the
surviving vector keeps exactly its own top-k; ``equal`` (``w_i = 1``) makes the masks
alpha-independent but costs the endpoints what the other vector took (hypervolume 0.54 against
0.66 with ``lambda`` on the demo zoo, magnitude ranking, keep 0.2). keep=1 keeps everything, so
alpha=0/1 give the natural/robust model exactly.
No randomness (``seed`` unused): PGD starts are seeded by ``calib_seed``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from explorer.config import MergeSpec

from .base import Coefficient, MergeInputs, masked_coefficient
from .record import CALIBRATION_OPTIONS, MethodRecord, Option, read_option
from .sparsify import kept_count

# Sort orders of the rankings are memoised only up to this many coordinates (int64 each, per
# vector); beyond, each merge sorts.
ORDER_CACHE_MAX = 50_000_000
MASKS_MEMO_MAX = 8  # masks memoised per scores (keep x scope x lambdas settings)
RANKS = ("magnitude", "impact", "score", "tilt")

OPTIONS: dict[str, Option] = {
    **CALIBRATION_OPTIONS,
    "traj_steps": Option(3, "steps of the adversarial parameter trajectory (scores)"),
    "traj_radius": Option(0.05, "trajectory step, as a fraction of ||theta_anchor - pre|| (scores)"),
    "beta": Option(1.0, "weight of the interference term in s = b - beta phi(r) (scores)"),
    "interference": Option("signed", "phi of the interference term (scores)", ("signed", "relu", "abs")),
    "rank": Option("magnitude", "what each vector claims first", RANKS),
    "contest_by": Option("impact", "what decides a coordinate two vectors claim", RANKS),
    "contest": Option("lambda", "contest weights: |lambda_i| or equal", ("lambda", "equal")),
}



def _claim(order: Tensor, free: Tensor, ptr: int, need: int) -> tuple[Tensor, int]:
    """The first ``need`` free coordinates of ``order`` at or after position ``ptr``, and the
    position after the last one taken (everything skipped is taken for good)."""
    got, window = [], max(2 * need, 4096)
    while need > 0 and ptr < order.numel():
        part = order[ptr:ptr + window]
        ok = free[part]
        n_ok = int(ok.sum())
        if n_ok >= need:
            last = int(ok.nonzero()[need - 1])
            got.append(part[:last + 1][ok[:last + 1]])
            ptr, need = ptr + last + 1, 0
        else:
            got.append(part[ok])
            ptr, need = ptr + part.numel(), need - n_ok
        window *= 2
    return (torch.cat(got) if got else order[:0]), ptr


def _argmax_rows(values: Tensor) -> Tensor:
    """``values.argmax(0)`` for a few rows of many columns, as elementwise passes (the
    reduction over a short leading dim is ~100x slower on CPU). Ties go to the first row.
    Shape: ``(V, n)`` -> ``(n,)`` int64."""
    best = torch.zeros(values.shape[1], dtype=torch.long, device=values.device)
    top = values[0].clone()
    for i in range(1, values.shape[0]):
        better = values[i] > top
        best[better] = i
        top = torch.where(better, values[i], top)
    return best


def descending_order(score: Tensor) -> Tensor:
    """Coordinates from best to worst (ties by index). Shape: ``(n,)`` -> ``(n,)`` int64."""
    return torch.argsort(score, descending=True, stable=True)


@torch.no_grad()
def disjoint_topk(scores: Sequence[Tensor], k: int, weights: Sequence[float] | None = None,
                  orders: Sequence[Tensor] | None = None,
                  contest_scores: Sequence[Tensor] | None = None) -> list[Tensor]:
    """Each vector keeps exactly ``k`` coordinates, no coordinate kept twice (needs ``V k <= n``).

    Greedy rounds: every vector claims its best ``need`` free coordinates; a coordinate claimed by
    several goes to the largest weighted normalised score ``w_i c_i / mean|c_i|`` (``c`` the
    ``contest_scores``, default the scores; ``weights`` default to 1); losers claim again.
    ``orders`` (``descending_order`` of each score, which depends on neither ``k`` nor the
    weights) may be passed in from a cache: the rounds then cost a few passes over the
    coordinates instead of a sort each.

    Shape:
        each score ``(n,)`` float; returns ``(n,)`` bool masks.
    """
    n, V = scores[0].numel(), len(scores)
    if V * k > n:
        raise ValueError(f"{V} disjoint masks of {k} need at least {V * k} coordinates, have {n}")
    cs = scores if contest_scores is None else contest_scores
    norm = torch.stack([c / c.abs().mean().clamp_min(1e-30) for c in cs])
    w = torch.ones(V) if weights is None else torch.tensor([float(x) for x in weights])
    contest = norm * w.to(norm).view(-1, 1)
    orders = [descending_order(s) for s in scores] if orders is None else orders
    masks = torch.zeros(V, n, dtype=torch.bool, device=scores[0].device)
    free = torch.ones(n, dtype=torch.bool, device=scores[0].device)
    need, ptr = [k] * V, [0] * V
    while any(need):
        claims = torch.zeros_like(masks)
        for i in range(V):
            if need[i]:
                idx, ptr[i] = _claim(orders[i], free, ptr[i], need[i])
                claims[i, idx] = True
        best = _argmax_rows(contest.masked_fill(~claims, float("-inf")))
        for i in range(V):
            won = claims[i] & (best == i)
            masks[i] |= won
            need[i] -= int(won.sum())
        free &= ~claims.any(0)
    return list(masks)


@torch.no_grad()
def complementary_masks(scores: Sequence[Tensor], keep: float, weights: Sequence[float] | None = None,
                        orders: Sequence[Tensor] | None = None,
                        contest_scores: Sequence[Tensor] | None = None) -> list[Tensor]:
    """Exactly ``kept_count(n, keep)`` kept per vector, with the minimum possible overlap.

    ``orders``: each score's ``descending_order``, if cached; ``contest_scores``: what decides
    a coordinate two vectors claim (default the scores; see :func:`disjoint_topk`).

    Shape:
        each score ``(n,)``; returns ``(n,)`` bool masks.
    """
    n, V = scores[0].numel(), len(scores)
    k = kept_count(n, keep)
    if V * k <= n:
        return disjoint_topk(scores, k, weights, orders, contest_scores)
    if V * (n - k) <= n:  # disjoint drops of the lowest scores: every coordinate kept at least once
        # A contested drop goes to the vector with the *smaller* weight: reverse their order.
        rev = None if weights is None else [max(weights) + min(weights) - w for w in weights]
        flipped = None if orders is None else [o.flip(0) for o in orders]
        neg = None if contest_scores is None else [-c for c in contest_scores]
        return [m.logical_not() for m in disjoint_topk([-s for s in scores], n - k, rev, flipped, neg)]
    return [torch.zeros(n, dtype=torch.bool, device=s.device).index_fill_(0, torch.topk(s, k).indices, True)
            for s in scores]


def stability_masks(scores: Sequence[Tensor], keep: float, segments: Sequence[tuple[int, int]],
                    scope: str, weights: Sequence[float] | None = None,
                    orders: Sequence[Tensor] | None = None,
                    contest_scores: Sequence[Tensor] | None = None) -> list[Tensor]:
    """:func:`complementary_masks` over all coordinates (``global``, where cached ``orders`` of
    the whole scores help) or within each tensor."""
    if keep >= 1.0:
        return [torch.ones_like(s, dtype=torch.bool) for s in scores]
    if scope == "global":
        return complementary_masks(scores, keep, weights, orders, contest_scores)
    masks = [torch.empty_like(s, dtype=torch.bool) for s in scores]
    for a, b in segments:
        cs = None if contest_scores is None else [c[a:b] for c in contest_scores]
        for m, part in zip(masks, complementary_masks([s[a:b] for s in scores], keep, weights, None, cs)):
            m[a:b] = part
    return masks


def _rankings(memo: dict | None, scores: Sequence[Tensor], taus: Sequence[Tensor], rank: str,
              contest_by: str) -> tuple[list[Tensor], list[Tensor] | None, list[Tensor]]:
    """(claim ranking, its sort orders or None, contest ranking); the last one asked for is kept
    in ``memo`` (the prepared scores' memo; hand-given scores come without one)."""
    held = None if memo is None else memo.get("ranked")
    if held is not None and held[0] == (rank, contest_by):
        return held[1]
    ranked = ranking(scores, taus, rank)
    cache = memo is not None and ranked[0].numel() <= ORDER_CACHE_MAX  # else each merge sorts
    orders = [descending_order(r) for r in ranked] if cache else None
    out = (ranked, orders, ranking(scores, taus, contest_by))
    if memo is not None:
        memo["ranked"] = ((rank, contest_by), out)
    return out


@torch.no_grad()
def ranking(scores: Sequence[Tensor], taus: Sequence[Tensor], rank: str) -> list[Tensor]:
    """Per-coordinate values the masks use: what each vector claims first (option ``rank``,
    default ``magnitude``) and what decides a coordinate two vectors claim (option
    ``contest_by``, default ``impact``).

    ``magnitude``: ``|tau_i|``. ``impact``: ``|S_i| = |tau_i| * |g_own + beta g_other|``, the size
    of the coordinate's first-order effect on the joint objective ``L_own + beta L_other``,
    whatever its sign. ``score``: ``S_i`` itself (helps both objectives first, interferes last).
    ``tilt``: ``|tau_i| * (1 + tanh(S_i / q))``, ``q`` the 99th percentile of ``|S_i|`` over the
    vector's non-zero coordinates (magnitude nudged by the score).

    Measured on the demo zoo (natural + TeCoA, keep 0.2, pgd-10, n=256, alpha 0:1:6, contests
    weighted by lambda; hypervolume of task arithmetic 0.647, of independent magnitude masks
    0.656): claims/contest ``magnitude/impact`` 0.661 (the default), ``magnitude/magnitude``
    0.661, ``impact/impact`` 0.652, ``|tau|^0.5 |S|^0.5`` 0.651, ``score/score`` 0.027 (clean
    accuracy near chance even at alpha=0), ``magnitude/score`` 0.079, ``impact`` with
    ``interference`` ``abs`` 0.633 or ``relu`` 0.630. So on that model the gain over task
    arithmetic comes from the complementary, lambda-weighted structure; which of the sizes
    ranks barely matters, and any use of the score's *sign* breaks the model: dropping the
    large-``|g * tau|`` coordinates of the "harmful" sign removes exactly the coordinates it
    cannot lose (far from the anchor the first-order sign is unreliable, the size is not).
    """
    if rank not in RANKS:
        raise ValueError(f"stability options rank and contest_by take one of {', '.join(RANKS)}; "
                         f"got {rank!r}")
    if rank == "magnitude":
        return [t.abs() for t in taus]
    if rank == "score":
        return list(scores)
    if rank == "impact":
        return [s.abs() for s in scores]
    out = []
    for tau, s in zip(taus, scores):
        nz = s[s != 0].abs()
        q = torch.quantile(nz[torch.randperm(nz.numel(), generator=torch.Generator().manual_seed(0))
                              [:1_000_000].to(nz.device)], 0.99) if nz.numel() else 0.0
        out.append(tau.abs() * (1 + torch.tanh(s / q)) if q > 0 else tau.abs())
    return out


@torch.no_grad()
def stability(inputs: MergeInputs, spec: MergeSpec) -> list[Coefficient]:
    """``c_i = lambda_i * m_i``, ``m_i`` complementary stability masks (PISTOLE reading; module doc).

    Reads ``inputs.context["stability_scores"]`` (set by the ``stability`` preparer,
    ``explorer.calibrate.stability``, when merged through the Engine; pass it yourself otherwise).
    Masks are memoised per (keep, scope, weights) in ``context["memo"]`` when the context has one.
    """
    scores = inputs.context.get("stability_scores")
    if scores is None or len(scores) != len(inputs.taus):
        raise ValueError("stability needs one calibration score per task vector in "
                         "context['stability_scores']: merge through Engine.merge (which runs the "
                         "'stability' preparer) or pass them in MergeInputs.context")
    rank = str(read_option(spec, OPTIONS, "rank"))
    contest_by = str(read_option(spec, OPTIONS, "contest_by"))
    contest = str(read_option(spec, OPTIONS, "contest"))
    if contest not in ("equal", "lambda"):
        raise ValueError(f"stability option contest must be 'equal' or 'lambda', got {contest!r}")
    weights = [abs(float(lam)) for lam in spec.lambdas] if contest == "lambda" else None
    memo = inputs.context.get("memo")

    def build() -> list[Tensor]:
        ranked, orders, contest_scores = _rankings(memo, scores, inputs.taus, rank, contest_by)
        return stability_masks(ranked, spec.keep, inputs.segments, spec.scope, weights,
                               orders if spec.scope == "global" else None, contest_scores)

    if memo is None:  # scores given by hand: nothing owns a cache for them
        masks = build()
    else:
        held: dict[tuple, list[Tensor]] = memo.setdefault("masks", {})
        mask_key = (rank, contest_by, spec.keep, spec.scope,
                    tuple(inputs.segments) if spec.scope == "per_tensor" else None,
                    None if weights is None else tuple(weights))
        if mask_key not in held:
            if len(held) >= MASKS_MEMO_MAX:
                held.pop(next(iter(held)))
            held[mask_key] = build()
        masks = held[mask_key]
    return [masked_coefficient(float(lam), None if spec.keep >= 1.0 else m)
            for lam, m in zip(spec.lambdas, masks)]



RECORD = MethodRecord("stability", stability,
                      "PISTOLE (prediction stability-aware task-vector merging; abstract in shared/seeds)",
                      fields=("keep", "scope"), options=OPTIONS, preparer="stability",
                      version=2,  # 2: magnitude claims, |lambda| * |S| contests (was: signed-score ranking)
                      dense_at_full_keep=True, keep_count="exact")
