"""Real-scale machinery on a tiny ViT: the synthetic fixture's layouts, the memory floor, lazy and
content-addressed loading, and bad input at scale (wrong size, truncated, fp16 rounding, no room)."""
from __future__ import annotations

import gc
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARCH
from safetensors.torch import load_file, save_file

from explorer.config import AttackSpec, EvalSpec, MergeSpec, SweepSpec
from explorer.engine.frontier import Engine
from explorer.zoo import CheckpointError, load_manifest
from explorer.zoo.synth import synth_zoo

# A mid-size tiny ViT (~14M params, 56 MB float32): large enough that resident-set noise is
# small against a model copy, small enough to build and sweep in seconds.
MID_ARCH = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 384, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 1},
}


def _synth(root: Path, name: str, arch: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / f"{name}.json"
    cfg.write_text(json.dumps(arch))
    return synth_zoo(name, root / "zoo", arch_config=cfg)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return _synth(tmp_path_factory.mktemp("synth"), "tiny-clip", TINY_ARCH)


@pytest.fixture(scope="module")
def engine(synth) -> Engine:
    return Engine(synth, device="cpu", store=None)


def test_fixture_has_every_release_layout_and_says_accuracies_are_meaningless(synth):
    root = synth.parent
    assert "MEANINGLESS" in synth.read_text().split("[defaults]")[0]
    assert set(torch.load(root / "robust.pt", weights_only=True)) == {"vision_encoder_state_dict"}
    raw = torch.load(root / "robust-visual.pt", weights_only=True)
    assert not any(k.startswith("visual.") for k in raw) and "conv1.weight" in raw
    assert {t.dtype for t in load_file(str(root / "robust-fp16.safetensors")).values()
            if t.is_floating_point()} == {torch.float16}
    hub = root / "hub" / "models--synth--tiny-clip-natural"
    rev = (hub / "refs" / "main").read_text()
    assert (hub / "snapshots" / rev / "open_clip_model.safetensors").is_symlink()
    assert set(load_manifest(synth).names()) == {"pretrained", "natural", "natural_bin", "natural_hub",
                                                  "robust", "robust_raw", "robust_fp16"}


def test_every_layout_loads_to_the_same_weights(engine):
    nat = engine.vector("natural")
    assert engine.vector("natural_bin").digest == nat.digest       # .bin, converted and cached
    assert engine.vector("natural_hub").digest == nat.digest       # hf-hub cache, offline
    rob = engine.vector("robust")
    assert engine.vector("robust_raw").digest == rob.digest
    assert nat.touches_text and not rob.touches_text
    for a, b in engine._text_segments:                              # visual-only: text = base's
        assert torch.equal(rob.ft[a:b], engine.pre[a:b])


def test_fp16_copy_whose_text_is_rounding_is_not_a_text_vector(engine):
    """Tolerance: every text weight equals the base's rounded to fp16 (<= 2^-11 relative)."""
    half, rob = engine.vector("robust_fp16"), engine.vector("robust")
    assert half.report.text_rounding_only and not half.touches_text
    for a, b in engine._text_segments:
        assert torch.equal(half.ft[a:b], engine.pre[a:b])
    assert torch.equal(half.ft, torch.where(half.ft == engine.pre, engine.pre, rob.ft.half().float()))


def test_fp16_text_beyond_rounding_is_a_text_vector(engine, synth, tmp_path):
    sd = load_file(str(synth.parent / "robust-fp16.safetensors"))
    sd["ln_final.weight"] = sd["ln_final.weight"] * 1.01       # a real (1%) change, not rounding
    save_file(sd, str(tmp_path / "moved.safetensors"))
    entry = replace(engine.manifest.get("robust_fp16"), name="moved", weights=str(tmp_path / "moved.safetensors"))
    v = engine.add_entry(entry)
    try:
        assert v.touches_text and not v.report.text_rounding_only
    finally:
        engine.remove_entry("moved")


def _big_tensors(min_bytes: int) -> set[int]:
    """Distinct storages of at least ``min_bytes`` held by live tensors."""
    gc.collect()
    ptrs = set()
    for o in gc.get_objects():
        try:
            if torch.is_tensor(o) and o.untyped_storage().nbytes() >= min_bytes:
                ptrs.add(o.untyped_storage().data_ptr())
        except Exception:   # some objects raise on inspection
            continue
    return ptrs


def test_engine_keeps_exactly_the_floor(synth):
    """theta_pre + merged theta + one flat copy per vector: no reference clones, no pre_sd, no tau."""
    before = _big_tensors(1)
    eng = Engine(synth, device="cpu", store=None)
    eng.merge(["natural", "robust"], MergeSpec.from_alpha(0.5))
    model_bytes = eng.layout.numel * 4
    held = _big_tensors(model_bytes // 2) - before
    assert held == {eng.pre.untyped_storage().data_ptr(), eng.theta.untyped_storage().data_ptr(),
                    eng.vector("natural").ft.untyped_storage().data_ptr(),
                    eng.vector("robust").ft.untyped_storage().data_ptr()}
    for alpha, name in ((0.0, "natural"), (1.0, "robust")):        # endpoints bit-exact
        eng.merge(["natural", "robust"], MergeSpec.from_alpha(alpha))
        assert torch.equal(eng.theta, eng.vector(name).ft)


def test_peak_resident_memory_over_load_and_sweep_is_at_the_floor(tmp_path):
    from explorer.studies.scale_bench import peak_rss, reset_peak_rss

    manifest = _synth(tmp_path, "mid-clip", MID_ARCH)
    gc.collect()
    rss0 = reset_peak_rss()
    eng = Engine(manifest, device="cpu", store=None, batch_size=4)
    spec = SweepSpec(manifest=str(manifest), base="pretrained", natural=("natural",), robust=("robust",),
                     alphas=(0.0, 0.5, 1.0), attack=AttackSpec("pgd-2", 4 / 255), eval=EvalSpec("shapes", n=4))
    rows = list(eng.sweep(spec, progress=False, use_bank=False))
    floor = 4 * eng.layout.numel * 4
    extra = peak_rss() - rss0
    assert len(rows) == 3
    # The bound is 1.25 x floor + 1 GiB; the 1 GiB covers libraries and activations.
    # Here both are small, so hold the load + sweep to 1.25 x floor + 32 MiB.
    assert extra <= 1.25 * floor + 32 * 2 ** 20, (extra / 2 ** 20, floor / 2 ** 20)


def test_pt_is_read_once_and_cached_by_content(synth, tmp_path, monkeypatch):
    from explorer.zoo.lazy import cached_safetensors, explorer_home

    copy = tmp_path / "same-bytes.pt"
    shutil.copyfile(synth.parent / "robust.pt", copy)
    first = cached_safetensors(synth.parent / "robust.pt")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a cached .pt was unpickled again"))
    assert cached_safetensors(copy) == first
    assert first.parent == explorer_home() / "checkpoints"
    got = load_file(str(first))
    monkeypatch.undo()
    want = torch.load(copy, weights_only=True)["vision_encoder_state_dict"]
    assert set(got) == set(want) and all(torch.equal(got[k], v) for k, v in want.items())


def test_checkpoint_of_another_size_is_refused_and_nothing_is_left(engine, tmp_path):
    other = dict(TINY_ARCH, vision_cfg=dict(TINY_ARCH["vision_cfg"], width=48, head_width=16))
    big = _synth(tmp_path, "wide-clip", other)
    before = dict(engine._vectors)
    entry = replace(engine.manifest.get("natural"), name="wide", weights=str(big.parent / "natural.safetensors"))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        engine.add_entry(entry)
    assert engine._vectors == before and "wide" not in engine.manifest.models


def test_truncated_safetensors_is_refused_before_reading(engine, synth, tmp_path):
    data = (synth.parent / "natural.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    entry = replace(engine.manifest.get("natural"), name="cut", weights=str(cut))
    with pytest.raises(CheckpointError, match="truncated"):
        engine.add_entry(entry)
    assert "cut" not in engine._vectors and "cut" not in engine.manifest.models


def test_a_model_larger_than_free_memory_is_one_clear_error(engine, synth, monkeypatch):
    import explorer.zoo.flatload as fl

    monkeypatch.setattr(fl, "free_bytes", lambda device: 1024)
    entry = replace(engine.manifest.get("natural"), name="huge")
    with pytest.raises(CheckpointError, match=r"needs .* GiB but only .* GiB of cpu memory is free"):
        engine.add_entry(entry)
    assert "huge" not in engine._vectors and "huge" not in engine.manifest.models
    with pytest.raises(CheckpointError, match="free"):
        Engine(synth, device="cpu", store=None)


def test_cli_truncated_checkpoint_is_one_line(synth, tmp_path, capsys):
    from explorer.cli import main

    root = tmp_path / "zoo"
    shutil.copytree(synth.parent, root, symlinks=True)
    data = (root / "robust-fp16.safetensors").read_bytes()
    (root / "robust-fp16.safetensors").write_bytes(data[:-100])
    code = main(["sweep", "--manifest", str(root / "manifest.toml"), "--natural", "natural",
                 "--robust", "robust_fp16", "--alphas", "0,1", "--no-store", "--n", "2", "--attack", "none"])
    last = capsys.readouterr().err.strip().splitlines()[-1]      # after the progress bar
    assert code == 2 and last.startswith("error: ") and "truncated" in last


def test_constant_coefficients_are_what_the_methods_return(engine):
    """The engine skips building taus for these settings; the methods must agree."""
    from explorer.engine.resident import constant_coefficients
    from explorer.merging import MergeInputs, merge_coefficients

    inputs = MergeInputs([engine.vector(n).tau for n in ("natural", "robust")], engine.layout.segments,
                         names=list(engine.layout.keys), shapes=list(engine.layout.shapes))
    for method in ("task_arithmetic", "dare", "magnitude"):
        spec = MergeSpec(lambdas=(0.3, 0.7), method=method, keep=1.0)
        assert constant_coefficients(spec) == list(merge_coefficients(inputs, spec))
    assert constant_coefficients(MergeSpec(lambdas=(0.3, 0.7), method="ties", keep=1.0)) is None
