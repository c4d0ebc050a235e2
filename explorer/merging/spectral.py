"""Spectral merges of many task vectors: Iso-C and TSV-M, as merged deltas ``theta_0 + tau_merged``.

Sources: Iso-C, Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and
Task-Specific Subspaces" (ICML 2025, https://arxiv.org/abs/2502.04959); TSV-M, Gargiulo et al.,
"Task Singular Vectors: Reducing Task Interference in Model Merging" (CVPR 2025,
https://arxiv.org/abs/2412.00081); both used for many vectors in Robust OVAR (arXiv 2606.20734,
shared/seeds/004). Per *matrix* tensor (below):

    Iso-C:  U S V^T = svd(sum_i tau_i),   tau_merged = mean(S) * U V^T
    TSV-M:  U_i S_i V_i^T = svd(tau_i), keep the top k = floor(r / T) of each (r = min(m, n));
            U = [U_1k .. U_Tk], V = [V_1k .. V_Tk], S = diag(S_1k .. S_Tk);
            tau_merged = polar(U) S polar(V)^T,   polar(A) = P Q^T for A = P Sigma Q^T
            (the nearest matrix with orthonormal columns: the re-orthogonalisation)

and every other tensor is averaged; the published merge is ``theta_0 + alpha * tau_merged``.

Our choices where the sources are silent (they merge T equally weighted ViT task vectors):

- **Our lambdas.** Vector i enters with its coefficient ``lambda_i`` (``spec.lambdas``; from
  ``from_alpha``: ``s (1 - alpha)`` natural, ``s alpha`` robust). Non-matrix tensors get
  ``sum_i lambda_i tau_i`` (the weighted average, the plain mean when all lambdas are 1/T);
  matrices get the operator applied to ``T_eff * lambda_i * tau_i`` with
  ``T_eff = (sum |lambda|)^2 / sum lambda^2``, the effective number of vectors (T for equal
  weights, 1 for one non-zero). So equal lambdas ``alpha/T`` give the published
  ``theta_0 + alpha * tau_merged`` exactly (the operators are positively homogeneous), the
  published scale alpha is our ``--scale``, our alpha moves weight continuously between the
  natural and the robust side, and a single non-zero vector gives Iso/TSV of that vector alone.
  All lambdas 0 gives theta_0 exactly.
- **TSV-M's T** (the rank split) counts the vectors with a non-zero lambda; the rank then jumps
  where a lambda leaves 0 (alpha = 0 and 1 are one-vector merges).
- **Which tensors are matrices:** 2-D weights and, by default (option ``conv = "matrix"``), conv
  kernels viewed as ``(out, in * kh * kw)``: the demo zoo's vision tower is a ResNet, where the
  convolutions are most of the weights. Excluded (averaged): 1-D tensors (biases, norms,
  BatchNorm statistics), embedding tables (``positional_embedding``, ``token_embedding``,
  ``class_embedding``), a tensor with a dimension of 1, and in TSV-M a matrix with ``r < T``
  (floor(r/T) = 0 would keep nothing). ``conv = "average"`` averages conv kernels too.
- Both operate on all tensors of the vectors (text tower included where a vector has one).
- Deterministic (``seed`` unused): SVD signs do not matter, the products are sign-invariant.

Decompositions are cached (``CACHE``, bounded bytes, least recently used dropped first), keyed by
the vectors' content digests. TSV-M decomposes each *unscaled* ``tau_i`` and scales after:
``svd(c tau) = U (|c| S) (sign(c) V)^T`` and ``polar(V D) = polar(V) D`` for a diagonal sign
matrix D, so ``TSV(c_1 tau_1 .. c_T tau_T) = polar(U) diag(c_i S_i) polar(V)^T`` with the polar
factors computed once per (vectors, matrix, k): a sweep over alpha pays them once per T (at the
endpoints and once inside). Iso-C's SVD is of the alpha-dependent sum ``sum_i c_i tau_i``, which
no factorisation of the parts gives: its cache holds merged matrices per (vectors, lambdas), so
the same merge again (the live preview then its refinement, Inspect's three tabs) costs nothing,
and a sweep over alpha pays every point.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

ISO_C_PAPER = "https://arxiv.org/abs/2502.04959"
TSV_M_PAPER = "https://arxiv.org/abs/2412.00081"
EMBEDDINGS = ("positional_embedding", "token_embedding", "class_embedding")
CONV_MODES = ("matrix", "average")
SPECTRAL_METHODS = ("iso_c", "tsv_m")   # the registered methods built on this module (bench times them)


def matrix_shape(name: str, shape: Sequence[int], conv: str = "matrix") -> tuple[int, int] | None:
    """The ``(m, n)`` a tensor is merged as, or None when it is averaged (module docstring).

    Raises:
        ValueError: unknown ``conv`` mode.
    """
    if conv not in CONV_MODES:
        raise ValueError(f"option conv must be one of {', '.join(CONV_MODES)}, got {conv!r}")
    if any(e in name for e in EMBEDDINGS):
        return None
    shape = tuple(int(d) for d in shape)
    if len(shape) == 2:
        mn = shape
    elif len(shape) == 4 and conv == "matrix":
        mn = (shape[0], shape[1] * shape[2] * shape[3])
    else:
        return None
    return mn if min(mn) > 1 else None


@torch.no_grad()
def iso_c_matrix(m: Tensor) -> Tensor:
    """``mean(S) * U V^T`` for ``U S V^T = svd(m)``: every singular value set to their mean.

    Shape: ``(a, b)`` -> ``(a, b)`` float32 (computed in float64).
    """
    u, s, vh = torch.linalg.svd(m.double(), full_matrices=False)
    return (s.mean() * (u @ vh)).to(torch.float32)


def polar(a: Tensor) -> Tensor:
    """The orthonormal polar factor ``P Q^T`` of ``a = P Sigma Q^T``. Shape: ``(m, k)``, k <= m."""
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


class FactorCache:
    """Tensors by key, at most ``max_bytes`` in all; the least recently used dropped first.

    Thread-safe (one lock); a value larger than the budget is computed and not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, tuple[Tensor, ...]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple, compute: Callable[[], tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        value = compute()
        size = sum(t.numel() * t.element_size() for t in value)
        with self._lock:
            if size <= self.max_bytes and key not in self._items:
                self._items[key] = value
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= sum(t.numel() * t.element_size() for t in old)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes


CACHE = FactorCache(1 << 30)   # 1 GiB of decompositions (ViT-B/32's TSV-M factors of 2 vectors: ~0.7 GiB)


def content_digest(t: Tensor) -> str:
    """sha256 (16 hex) of a tensor's bytes, with its dtype, shape and device: the cache's key."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|{t.device}".encode())
    flat = t.detach().reshape(-1)
    for i in range(0, flat.numel(), 1 << 24):
        h.update(memoryview(flat[i:i + (1 << 24)].cpu().contiguous().numpy()))
    return h.hexdigest()[:16]


@torch.no_grad()
def tsv_factors(mats: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``(polar(U), S, polar(V))`` of TSV-M for the unscaled matrices (float64): ``U``/``V`` the
    top ``k = floor(r / T)`` singular vectors of each, side by side; ``S`` their singular values.

    Shape: each ``(a, b)``; returns ``(a, T k)``, ``(T k,)``, ``(b, T k)``.

    Raises:
        ValueError: ``floor(min(a, b) / T) == 0`` (the caller averages such tensors instead).
    """
    T, (a, b) = len(mats), mats[0].shape
    k = min(a, b) // T
    if k == 0:
        raise ValueError(f"TSV-M keeps floor({min(a, b)}/{T}) = 0 components of a {a}x{b} matrix")
    us, ss, vs = [], [], []
    for m in mats:
        u, s, vh = torch.linalg.svd(m.double(), full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k].t())
    return polar(torch.cat(us, 1)), torch.cat(ss), polar(torch.cat(vs, 1))


def tsv_from_factors(factors: tuple[Tensor, Tensor, Tensor], scales: Sequence[float]) -> Tensor:
    """TSV-M of ``scales[i] * mats[i]`` from :func:`tsv_factors` of the ``mats``: ``(a, b)`` float32."""
    u, s, v = factors
    k = s.numel() // len(scales)
    c = torch.tensor([float(x) for x in scales], dtype=s.dtype, device=s.device).repeat_interleave(k)
    return ((u * (s * c)) @ v.t()).to(torch.float32)


@torch.no_grad()
def tsv_matrix(mats: Sequence[Tensor]) -> Tensor:
    """TSV-M of one matrix of T task vectors: top ``floor(r/T)`` components each, re-orthogonalised.

    Shape:
        each ``(a, b)``; returns ``(a, b)`` float32 of rank <= ``T * floor(min(a, b) / T)``.

    Raises:
        ValueError: ``floor(min(a, b) / T) == 0`` (the caller averages such tensors instead).
    """
    return tsv_from_factors(tsv_factors(mats), [1.0] * len(mats))


def effective_count(lambdas: Sequence[float]) -> float:
    """``(sum |lambda|)^2 / sum lambda^2``: T for T equal lambdas, 1 for one non-zero, 0 for none."""
    sq = sum(float(x) ** 2 for x in lambdas)
    return 0.0 if sq == 0 else sum(abs(float(x)) for x in lambdas) ** 2 / sq


@torch.no_grad()
def spectral_delta(taus: Sequence[Tensor], lambdas: Sequence[float], segments: Sequence[tuple[int, int]],
                   shapes: Sequence[Sequence[int]], names: Sequence[str], operator: str,
                   conv: str = "matrix", cache: FactorCache | None = CACHE) -> Tensor:
    """``tau_merged`` of Iso-C (``operator="iso_c"``) or TSV-M (``"tsv_m"``) under our lambdas.

    Args:
        taus: flat task vectors, each ``(N,)`` float32.
        lambdas: one coefficient per vector (module docstring: how they weigh and scale).
        segments, shapes, names: the layout of the flat vectors, one entry per tensor.
        cache: where decompositions are kept (module docstring); None computes every one.
            Results are the same bit for bit either way.

    Returns:
        ``(N,)`` float32 delta; ``theta = theta_0 + delta``. Exactly zero when all lambdas are 0.
    """
    if operator not in ("iso_c", "tsv_m"):
        raise ValueError(f"unknown spectral operator {operator!r}")
    if not (len(taus) == len(lambdas) and len(segments) == len(shapes) == len(names)):
        raise ValueError("spectral_delta needs one lambda per vector and one shape and name per segment")
    live = [(float(lam), t) for lam, t in zip(lambdas, taus) if float(lam) != 0.0]
    out = torch.zeros_like(taus[0])
    if not live:
        return out
    t_eff = effective_count([lam for lam, _ in live])
    digests = tuple(content_digest(t) for _, t in live) if cache is not None else ()
    for (a, b), shape, name in zip(segments, shapes, names):
        mn = matrix_shape(name, shape, conv)
        if mn is not None and operator == "tsv_m" and min(mn) < len(live):
            mn = None
        if mn is None:
            for lam, t in live:
                out[a:b].add_(t[a:b], alpha=lam)
            continue
        scales = [t_eff * lam for lam, _ in live]
        if operator == "iso_c":
            def iso(a=a, b=b, mn=mn, scales=scales) -> tuple[Tensor, ...]:
                return (iso_c_matrix(sum(t[a:b].view(mn) * c for c, (_, t) in zip(scales, live))),)
            key = ("iso_c", digests, tuple(scales), a, b, mn)
            (merged,) = iso() if cache is None else cache.get(key, iso)
        else:
            def factors(a=a, b=b, mn=mn) -> tuple[Tensor, ...]:
                return tsv_factors([t[a:b].view(mn) for _, t in live])
            key = ("tsv_m", digests, a, b, mn)
            merged = tsv_from_factors(factors() if cache is None else cache.get(key, factors), scales)
        out[a:b] = merged.reshape(-1)
    return out
