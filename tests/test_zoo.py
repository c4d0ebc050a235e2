from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from explorer.zoo import (
    CheckpointError,
    convert,
    create_model,
    entry_from_path,
    load_manifest,
    load_weights,
    read_checkpoint,
)
from explorer.zoo.layouts import LAYOUTS, keys_of


@pytest.fixture(scope="module")
def manifest(tiny_zoo):
    return load_manifest(tiny_zoo)


@pytest.fixture(scope="module")
def reference(manifest):
    return create_model(manifest.get("base"))[0].state_dict()


def test_manifest_resolves_paths_and_roles(manifest, tiny_zoo):
    assert manifest.defaults["base"] == "base"
    assert manifest.names("robust") == ["robust", "robust2"]
    e = manifest.get("robust")
    assert Path(e.weights).is_absolute() and Path(e.weights).exists()
    assert e.towers == ("visual",) and e.provenance["method"] == "test-robust"
    with pytest.raises(KeyError, match="robust2"):
        manifest.get("nope")


def test_manifest_dump_round_trip(manifest, tmp_path):
    shutil.copy(manifest.path.parent / "tiny-clip.json", tmp_path)
    manifest_copy = load_manifest(manifest.path)
    saved = manifest_copy.save(tmp_path / "copy.toml")
    again = load_manifest(saved)
    assert again.models == manifest.models
    assert again.defaults == manifest.defaults


def test_visual_only_safetensors_are_prefixed(manifest, reference):
    sd = load_weights(manifest.get("robust"), reference)
    assert sd and all(k.startswith("visual.") for k in sd)
    assert set(sd) == {k for k in reference if k.startswith("visual.")}


def test_pt_with_wrapper_and_module_prefix(manifest, reference):
    a = load_weights(manifest.get("robust2"), reference)
    assert set(a) == {k for k in reference if k.startswith("visual.")}
    raw = torch.load(manifest.get("robust2").weights, weights_only=True)["state_dict"]
    assert torch.equal(a["visual.conv1.weight"], raw["module.conv1.weight"])


def _entry_for(manifest, path):
    return entry_from_path(path, like=manifest.get("base"), role="natural")


def test_wrong_architecture_is_named(manifest, reference, tmp_path):
    bad = {k: torch.zeros(3, 3) if k == "visual.conv1.weight" else v for k, v in reference.items()}
    save_file(bad, str(tmp_path / "shape.safetensors"))
    with pytest.raises(CheckpointError, match="shape mismatch.*visual.conv1.weight"):
        load_weights(_entry_for(manifest, tmp_path / "shape.safetensors"), reference)
    save_file({"encoder.layer.0.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match=r": 1 key does not belong to this architecture, e.g. \['encoder"):
        load_weights(_entry_for(manifest, tmp_path / "other.safetensors"), reference)
    save_file({"encoder.a": torch.zeros(2), "encoder.b": torch.zeros(2)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(CheckpointError, match=r": 2 keys do not belong to this architecture"):
        load_weights(_entry_for(manifest, tmp_path / "two.safetensors"), reference)


def test_missing_keys_and_nan_are_refused(manifest, reference, tmp_path):
    part = {k: v for k, v in reference.items() if k != "visual.proj"}
    save_file(part, str(tmp_path / "part.safetensors"))
    with pytest.raises(CheckpointError, match=r": 1 key of the visual\+text tower\(s\) is missing, e.g. \['visual.proj'\]"):
        load_weights(_entry_for(manifest, tmp_path / "part.safetensors"), reference)
    nan = dict(reference)
    nan["ln_final.weight"] = torch.full_like(reference["ln_final.weight"], float("nan"))
    save_file(nan, str(tmp_path / "nan.safetensors"))
    with pytest.raises(CheckpointError, match="non-finite.*ln_final.weight"):
        load_weights(_entry_for(manifest, tmp_path / "nan.safetensors"), reference)


class _Payload:  # an arbitrary object: unpickling it would run code in a hostile file
    pass


def test_pickled_objects_and_corrupt_files_are_refused(tmp_path):
    torch.save({"state_dict": {"a": torch.zeros(1)}, "obj": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_checkpoint(str(tmp_path / "evil.pt"))
    (tmp_path / "broken.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_checkpoint(str(tmp_path / "broken.safetensors"))
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(f'checkpoint {tmp_path}/absent.safetensors does not exist')}$"):
        read_checkpoint(str(tmp_path / "absent.safetensors"))


def test_convert_pt_to_safetensors(manifest, tmp_path):
    out = convert(manifest.get("robust2").weights, tmp_path / "r2.safetensors")
    got = load_file(str(out))
    raw = torch.load(manifest.get("robust2").weights, weights_only=True)["state_dict"]
    assert set(got) == {k[len("module."):] for k in raw}
    assert all(torch.equal(got[k[len("module."):]], v) for k, v in raw.items())
    with pytest.raises(ValueError, match=".safetensors"):
        convert(manifest.get("robust2").weights, tmp_path / "r2.bin")


def test_hf_hub_offline_from_local_cache(manifest, reference, tmp_path, monkeypatch):
    """An ``hf-hub:org/repo`` entry resolves through a hub cache laid out as the hub client does."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someorg--tiny-fare"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.copy(manifest.get("robust").weights, snap / "open_clip_model.safetensors")
    entry = entry_from_path("x.safetensors", like=manifest.get("robust"), role="robust")
    from dataclasses import replace
    entry = replace(entry, weights="hf-hub:someorg/tiny-fare", towers=("visual",))
    sd = load_weights(entry, reference, cache_dir=str(tmp_path / "hub"))
    direct = load_weights(manifest.get("robust"), reference)
    assert set(sd) == set(direct) and all(torch.equal(sd[k], direct[k]) for k in sd)
    explicit = replace(entry, weights="hf-hub:someorg/tiny-fare/open_clip_model.safetensors")
    assert set(load_weights(explicit, reference, cache_dir=str(tmp_path / "hub"))) == set(direct)


def test_unknown_architecture(manifest):
    from dataclasses import replace
    with pytest.raises(CheckpointError, match="unknown open_clip architecture"):
        create_model(replace(manifest.get("base"), arch="no-such-arch", arch_config=None))


def test_custom_config_under_another_name(manifest, tmp_path):
    from dataclasses import replace
    cfg = tmp_path / "whatever.json"
    cfg.write_text(json.dumps(json.loads(Path(manifest.get("base").arch_config).read_text())))
    model, tok = create_model(replace(manifest.get("base"), arch="renamed-tiny", arch_config=str(cfg)))
    assert model.visual.image_size == (32, 32) or model.visual.image_size == 32


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: f"{layout.kind}:{layout.key}")
def test_every_key_layout_loads_to_the_same_tensors(manifest, reference, tmp_path, layout):
    """A checkpoint written in each layout of the list loads key for key onto the model's names."""
    visual = {k: v + 1.0 for k, v in reference.items() if k.startswith("visual.")}
    if layout.kind == "wrapper":
        obj = {layout.key: visual, "epoch": 3}
    elif layout.kind == "strip":
        obj = {f"{layout.key}{k}": v for k, v in visual.items()}
    else:
        obj = {k[len(layout.key):]: v for k, v in visual.items()}
    torch.save(obj, tmp_path / "ckpt.pt")
    entry = entry_from_path(tmp_path / "ckpt.pt", like=manifest.get("robust"), role="robust")
    sd = load_weights(entry, reference)
    assert set(sd) == set(visual) and all(torch.equal(sd[k], visual[k]) for k in sd)


def test_layouts_are_one_list():
    assert keys_of("wrapper") == ("state_dict", "model", "model_state_dict", "vision_encoder_state_dict",
                                  "module")
    assert keys_of("strip") == ("module.", "model.") and keys_of("tower") == ("visual.",)
    assert all(layout.seen_in for layout in LAYOUTS)


def test_custom_arch_registered_through_the_public_api(manifest, tmp_path, monkeypatch):
    """``add_model_config`` with a renamed copy; open_clip's private dict is never written."""
    from dataclasses import replace

    import open_clip
    seen = []
    real = open_clip.add_model_config
    monkeypatch.setattr(open_clip, "add_model_config", lambda p: (seen.append(Path(p)), real(p))[1])
    cfg = tmp_path / "some-file.json"
    cfg.write_text(Path(manifest.get("base").arch_config).read_text())
    create_model(replace(manifest.get("base"), arch="public-api-tiny", arch_config=str(cfg)))
    assert "public-api-tiny" in open_clip.list_models()
    assert [p.name for p in seen] == ["public-api-tiny.json"] and not seen[0].exists()   # temp copy gone
    create_model(replace(manifest.get("base"), arch="public-api-tiny", arch_config=str(cfg)))
    assert len(seen) == 1                                         # known arch: registered once
    src = Path(__file__).parents[1] / "explorer"
    assert not [p for p in src.rglob("*.py") if "_MODEL_CONFIGS" in p.read_text()]


def test_create_model_does_not_warn_of_random_init(manifest, caplog):
    import logging
    filters = list(logging.getLogger().filters)
    with caplog.at_level(logging.WARNING):
        create_model(manifest.get("base"))
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]
    assert logging.getLogger().filters == filters


def test_stray_scalar_beside_state_dict_is_peeled_and_logged(manifest, reference, tmp_path, caplog):
    """``{"state_dict": ..., "best_acc": tensor(0.91), "epoch": 7}`` loads the state dict and logs
    what it ignored (issue 11.8: it used to be refused as unknown keys)."""
    sd = {k: v.clone() for k, v in reference.items()}
    torch.save({"state_dict": sd, "best_acc": torch.tensor(0.91), "epoch": 7}, tmp_path / "m.pt")
    with caplog.at_level("WARNING", logger="explorer.zoo.checkpoints"):
        got = load_weights(_entry_for(manifest, tmp_path / "m.pt"), reference)
    assert set(got) == set(reference)
    assert all(torch.equal(got[k], reference[k]) for k in reference)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "best_acc (scalar tensor 0.91)" in msg and "epoch (int)" in msg
    # nested wrappers with metadata at each level peel too
    torch.save({"model": {"state_dict": sd, "best_acc1": torch.tensor(55.0)}, "step": torch.tensor(3)},
               tmp_path / "n.pt")
    assert set(read_checkpoint(str(tmp_path / "n.pt"))) == set(reference)


def test_weights_beside_a_wrapper_are_refused(tmp_path):
    torch.save({"state_dict": {"a": torch.zeros(2)}, "ema": torch.zeros(4)}, tmp_path / "amb.pt")
    with pytest.raises(CheckpointError, match="ema.*ambiguous"):
        read_checkpoint(str(tmp_path / "amb.pt"))


class _RunsCode:  # unpickling this would run a command
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("content", ["text", "pickle"])
def test_lazy_conversion_refuses_in_one_short_line(tmp_path, monkeypatch, content):
    """The manifest path (``cached_safetensors``) once embedded torch's paragraphs, advice to retry
    with ``weights_only=False`` included; now the line is the same as ``read_checkpoint``'s."""
    from explorer.zoo.lazy import cached_safetensors

    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.pt"
    if content == "text":
        bad.write_text("hello, this is not a checkpoint")
    else:
        torch.save({"a": _RunsCode()}, bad)
    with pytest.raises(CheckpointError, match="^" + re.escape(
            f"{bad} could not be loaded with weights_only=True (not a tensor file, "
            "or one that needs arbitrary unpickling, which is refused)") + "$"):
        cached_safetensors(bad)
    assert not (tmp_path / "PWNED").exists()
