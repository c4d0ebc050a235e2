from __future__ import annotations

import pytest
import torch
from torch import nn

from explorer.core.taskvec import FlatLayout, TaskVector, bind_flat, sum_vectors


def _sd(seed: int, with_int: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"a.weight": torch.randn(3, 4, generator=g), "a.bias": torch.randn(3, generator=g),
          "visual.w": torch.randn(5, generator=g)}
    if with_int:
        sd["steps"] = torch.tensor([7], dtype=torch.long)
    return sd


def test_extract_skips_integer_buffers_and_is_float32():
    pre, ft = _sd(0), _sd(1)
    ft["steps"] = torch.tensor([9])
    tv = TaskVector.extract(pre, ft, "nat")
    assert set(tv.keys()) == {"a.weight", "a.bias", "visual.w"}
    assert all(v.dtype == torch.float32 for v in tv.tensors.values())
    assert torch.equal(tv.tensors["a.bias"], ft["a.bias"] - pre["a.bias"])


def test_extract_mismatches_are_named():
    pre, ft = _sd(0), _sd(1)
    ft["extra.key"] = torch.zeros(1)
    with pytest.raises(ValueError, match="extra.key"):
        TaskVector.extract(pre, ft)
    ft = _sd(1)
    ft["a.bias"] = torch.zeros(4)
    with pytest.raises(ValueError, match="a.bias"):
        TaskVector.extract(pre, ft)


def test_visual_only_vector_and_arithmetic():
    pre, ft = _sd(0), _sd(1)
    vis = TaskVector.extract(pre, {"visual.w": ft["visual.w"]}, "rob")
    full = TaskVector.extract(pre, ft, "nat")
    assert vis.keys() == ["visual.w"]
    total = full + vis
    assert torch.allclose(total.tensors["visual.w"], 2 * (ft["visual.w"] - pre["visual.w"]))
    assert torch.equal(total.tensors["a.bias"], full.tensors["a.bias"])
    assert torch.equal((-full).tensors["a.weight"], -full.tensors["a.weight"])
    assert torch.allclose((full - full).tensors["a.weight"], torch.zeros(3, 4))
    assert torch.allclose((0.5 * full).tensors["a.bias"], full.tensors["a.bias"] / 2)
    s = sum_vectors([full, vis], [1.0, -1.0])
    assert torch.allclose(s.tensors["visual.w"], torch.zeros(5), atol=1e-7)
    assert full.cosine(full) == pytest.approx(1.0) and full.cosine(-full) == pytest.approx(-1.0)


def test_save_load_round_trip(tmp_path):
    tv = TaskVector.extract(_sd(0), _sd(1), "nat")
    tv.save(tmp_path / "tv.safetensors", {"method": "natural"})
    back = TaskVector.load(tmp_path / "tv.safetensors")
    assert back.name == "nat"
    assert all(torch.equal(back.tensors[k], v) for k, v in tv.tensors.items())


def test_flat_layout_round_trip_and_fill():
    sd = _sd(0)
    layout = FlatLayout.from_state_dict(sd)
    assert layout.keys == ("a.weight", "a.bias", "visual.w") and layout.numel == 20
    flat = layout.flatten(sd)
    back = layout.unflatten(flat)
    assert all(torch.equal(back[k], sd[k]) for k in layout.keys)
    part = layout.flatten({"visual.w": torch.ones(5)}, fill=sd)
    assert torch.equal(layout.unflatten(part)["a.bias"], sd["a.bias"])
    assert layout.mask_of(lambda k: k.startswith("visual.")).sum() == 5


def test_bind_flat_makes_parameters_views():
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    layout = FlatLayout.from_state_dict(model.state_dict())
    flat = layout.flatten(model.state_dict())
    bind_flat(model, layout, flat)
    x = torch.randn(2, 4)
    before = model(x)
    flat.mul_(2.0)
    assert torch.equal(model[0].bias, layout.unflatten(flat)["0.bias"])
    assert not torch.allclose(model(x), before)


def test_flat_stats_exact_values_and_agreement_with_task_vectors():
    """One statistics implementation: the flat form and ``TaskVector`` give the same numbers."""
    import math

    from explorer.core.taskvec import flat_stats, layer_groups

    keys = ["text.token_embedding.weight", "visual.transformer.resblocks.1.w",
            "visual.transformer.resblocks.0.w", "visual.proj"]
    a = {keys[0]: torch.tensor([0.0, 0.0]), keys[1]: torch.tensor([3.0, 0.0]),
         keys[2]: torch.tensor([0.0, 4.0]), keys[3]: torch.tensor([0.0])}
    b = {keys[0]: torch.tensor([1.0, 0.0]), keys[1]: torch.tensor([0.0, 0.0]),
         keys[2]: torch.tensor([0.0, -2.0]), keys[3]: torch.tensor([0.0])}
    layout = FlatLayout.from_state_dict(a)
    ta, tb = TaskVector(a, "a"), TaskVector(b, "b")
    s = flat_stats([ta.to_flat(layout), tb.to_flat(layout), torch.zeros(layout.numel)], layout)
    assert s.layers == ["visual.other", "visual.block0", "visual.block1", "text.other"]
    assert layer_groups(keys)[1] == [3, 2, 1, 0]
    assert s.l2 == [5.0, math.sqrt(5.0), 0.0] and s.linf == [4.0, 2.0, 0.0]
    assert s.nonzero == [2 / 7, 2 / 7, 0.0]
    assert s.layer_norms[0] == [0.0, 4.0, 3.0, 0.0] and s.layer_norms[1] == [0.0, 2.0, 0.0, 1.0]
    cos_ab = -8 / (5 * math.sqrt(5))
    assert s.cosine[0][1] == s.cosine[1][0] == pytest.approx(cos_ab, abs=1e-15)
    assert s.cosine[0][0] == s.cosine[1][1] == 1.0 and s.cosine[2] == [0.0, 0.0, 0.0]
    assert ta.norm() == s.l2[0] and tb.norm() == s.l2[1]
    assert ta.cosine(tb) == pytest.approx(cos_ab, abs=1e-15)
    assert ta.layer_norms()[keys[2]] == 4.0
