"""On a CUDA device: exact endpoints, device memory at the floor, and reduced precision (TF32, bf16)
never reporting more robustness than fp32 beyond a stated tolerance. Skipped without a GPU
(``pytest -m cuda`` runs them; ``scripts/gpu-check`` does)."""
from __future__ import annotations

import json

import pytest
import torch

from explorer.config import AttackSpec, EvalSpec, MergeSpec, SweepSpec
from explorer.engine.frontier import Engine
from explorer.zoo import default_manifest_path

pytestmark = pytest.mark.cuda

# Robust accuracy under reduced precision may differ from fp32's by rounding; it must not exceed
# it by more than 2 percentage points (5 of 256 images) -- more would be gradient masking by
# rounding, i.e. robustness that is not there.
ROBUST_TOLERANCE = 0.02


def test_alpha_endpoints_are_bit_exact_on_cuda(tiny_zoo):
    gpu = Engine(tiny_zoo, device="cuda", store=None)
    cpu = Engine(tiny_zoo, device="cpu", store=None)
    for name in ("natural", "robust"):
        assert torch.equal(gpu.vector(name).ft.cpu(), cpu.vector(name).ft)   # same bits loaded
        assert gpu.vector(name).digest == cpu.vector(name).digest
    for alpha, name in ((0.0, "natural"), (1.0, "robust")):
        gpu.merge(["natural", "robust"], MergeSpec.from_alpha(alpha))
        assert torch.equal(gpu.theta, gpu.vector(name).ft)
    gpu.merge([], MergeSpec(lambdas=()))
    assert torch.equal(gpu.theta, gpu.pre)


def test_device_memory_over_load_and_sweep_is_at_the_floor(tmp_path):
    from test_scale import MID_ARCH, _synth

    manifest = _synth(tmp_path, "mid-clip", MID_ARCH)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    eng = Engine(manifest, device="cuda", store=None, batch_size=16)
    spec = SweepSpec(manifest=str(manifest), base="pretrained", natural=("natural",), robust=("robust",),
                     alphas=(0.0, 0.5, 1.0), attack=AttackSpec("pgd-2", 4 / 255), eval=EvalSpec("shapes", n=16))
    assert len(list(eng.sweep(spec, progress=False, use_bank=False))) == 3
    floor = 4 * eng.layout.numel * 4
    peak = torch.cuda.max_memory_allocated() - base
    assert peak <= 1.25 * floor + 64 * 2 ** 20, (peak / 2 ** 20, floor / 2 ** 20)


def _robust(engine: Engine, attack: AttackSpec, ev: EvalSpec) -> float:
    row = engine.point([], engine.manifest.names("robust")[:1], MergeSpec(lambdas=(1.0,)), attack, ev,
                       use_store=False, use_bank=False)
    return row["robust_acc"]


def test_tf32_and_bf16_are_not_more_robust_than_fp32():
    """On the trained demo zoo's robust model, pgd-10 at 4/255 on 256 images."""
    attack, ev = AttackSpec("pgd-10", 4 / 255), EvalSpec("shapes", n=256)
    fp32 = _robust(Engine(default_manifest_path(), device="cuda", precision="fp32"), attack, ev)
    tf32 = _robust(Engine(default_manifest_path(), device="cuda", precision="tf32"), attack, ev)
    eng = Engine(default_manifest_path(), device="cuda", precision="fp32")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = _robust(eng, attack, ev)
    print(json.dumps({"robust_fp32": fp32, "robust_tf32": tf32, "robust_bf16": bf16}))
    assert tf32 <= fp32 + ROBUST_TOLERANCE
    assert bf16 <= fp32 + ROBUST_TOLERANCE
