"""Fine-tuning methods on a tiny real open_clip model, checkpoints and the micro zoo."""
from __future__ import annotations

import copy
import json
import math
import time

import open_clip
import pytest
import tomllib
import torch
import torch.nn.functional as F

from explorer.data import get_task
from explorer.evaluation.zeroshot import ZeroShotClassifier
from explorer.finetune import METHODS, FinetuneConfig, load_checkpoint, pgd_linf, save_checkpoint, visual_state
from explorer.finetune.caw import caw_loss
from explorer.finetune.pretrain import caption_targets, contrastive_loss
from explorer.finetune.recipe import build_zoo

ARCH = "test-tiny-clip"
# The fine-tuning losses are architecture-agnostic; the demo zoo is a ResNet, so test on a ViT.
TINY_VIT = {"embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 8,
                           "mlp_ratio": 2.0},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 8, "heads": 1, "layers": 1,
                         "mlp_ratio": 2.0}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny open_clip ViT with a sharp logit scale (so a random text head is usable)."""
    path = tmp_path_factory.mktemp("cfg") / f"{ARCH}.json"
    path.write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH, pretrained=None)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100))
    return model, open_clip.get_tokenizer(ARCH)


def _cfg(**kw) -> FinetuneConfig:
    base = dict(steps=8, batch_size=16, lr=1e-2, warmup=1, pool=16, eps=8 / 255, pgd_steps=2,
                data="colors", seed=0)
    return FinetuneConfig(**{**base, **kw})


def test_pgd_stays_in_ball_and_raises_loss():
    torch.manual_seed(0)
    w = torch.randn(3 * 4 * 4, 5)
    x = torch.rand(8, 3, 4, 4)
    y = torch.randint(0, 5, (8,))
    loss = lambda z: F.cross_entropy(z.flatten(1) @ w, y, reduction="sum")
    eps = 4 / 255
    x_adv = pgd_linf(loss, x, eps, steps=5, step_size=eps / 2, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert loss(x_adv) > loss(x)
    assert torch.equal(pgd_linf(loss, x, 0.0, 5, 0.1), x)


@pytest.mark.parametrize("method", ["natural", "tecoa", "fare", "caw"])
def test_each_loss_decreases_and_only_the_vision_tower_moves(tiny, method):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # one fixed batch (pool == batch size): the loss must go down on it
    losses = METHODS[method](model, tok, get_task("colors"), _cfg())
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) / 2 < losses[0]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("visual."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("visual."))


def test_contrastive_loss_targets_and_value(tiny):
    model, tok = tiny
    target = caption_targets(["a star.", "a ring.", "a star."], "cpu")
    assert torch.allclose(target, torch.tensor([[.5, 0, .5], [0, 1, 0], [.5, 0, .5]]))
    x = torch.rand(4, 3, 32, 32)
    loss = contrastive_loss(model, tok, x, ["a star.", "a ring.", "a red cross.", "a heart."])
    assert math.isfinite(float(loss.detach())) and float(loss.detach()) > 0


def test_caw_loss_terms():
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 0])
    f = torch.zeros(2, 3)
    # identical predictions and features: only the CE term remains
    loss, parts = caw_loss(logits, logits, y, f, f, a=1.0, b=1.0)
    assert parts["ca"] == pytest.approx(0.0, abs=1e-7) and parts["reg"] == 0.0
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, y)))
    # the feature term is the (unsquared) L2 distance, averaged over the batch
    _, parts = caw_loss(logits, logits, y, f, f + torch.tensor([3.0, 4.0, 0.0]), 1.0, 1.0)
    assert parts["reg"] == pytest.approx(5.0)
    # a confident correct sample gets almost no KL weight, an uncertain one weight 1/2
    _, parts = caw_loss(logits, logits.flip(1), y, f, f, 1.0, 0.0)
    p = F.softmax(logits, 1)
    kl = (p * (p.log() - F.log_softmax(logits.flip(1), 1))).sum(1)
    assert parts["ca"] == pytest.approx(float((kl * (1 - p[:, 0])).mean()), rel=1e-5)


def _pgd_robust_acc(model, tok, task, x, y, eps):
    clf = ZeroShotClassifier(model, tok, task.classnames, task.templates)
    x_adv = pgd_linf(lambda z: F.cross_entropy(clf(z), y, reduction="sum"), x, eps, 10, eps / 4,
                     torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (clf(x_adv).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("method", ["tecoa", "caw"])
def test_adversarial_finetuning_raises_pgd_robust_accuracy(tiny, method):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    task = get_task("colors")
    x, y = task.load("test", 128, seed=0)
    cfg = _cfg(steps=40, batch_size=32, pool=256, warmup=3)
    METHODS["natural"](model, tok, task, cfg)
    before = _pgd_robust_acc(model, tok, task, x, y, cfg.eps)
    METHODS[method](model, tok, task, cfg)
    after = _pgd_robust_acc(model, tok, task, x, y, cfg.eps)
    assert after >= before + 0.05, (before, after)


def test_checkpoint_round_trip_with_provenance(tiny, tmp_path):
    model = tiny[0]
    cfg = _cfg(seed=7)
    meta = cfg.metadata("tecoa", arch=ARCH)
    path = save_checkpoint(visual_state(model), tmp_path / "rob.safetensors", meta)
    state, read = load_checkpoint(path)
    assert set(state) == set(model.visual.state_dict())
    assert not any(k.startswith("visual.") for k in state)
    assert all(v.dtype == torch.float32 for v in state.values())
    assert all(torch.equal(state[k], v) for k, v in model.visual.state_dict().items())
    assert read["method"] == "tecoa" and read["eps_label"] == "8/255"
    assert json.loads(read["seed"]) == 7 and json.loads(read["steps"]) == 8 and read["data"] == "colors"


def test_micro_zoo_builds_fast_with_manifest(tmp_path):
    t = time.perf_counter()
    manifest = build_zoo(tmp_path / "zoo", preset="micro", seed=0)
    elapsed = time.perf_counter() - t
    assert elapsed < 30, elapsed
    man = tomllib.loads(manifest.read_text())
    assert man["defaults"]["base"] == "pretrained"
    models = man["models"]
    assert {m["role"] for m in models.values()} == {"base", "natural", "robust"}
    assert {n for n, m in models.items() if m["role"] == "robust"} == {"tecoa", "fare", "caw"}
    arch = models["pretrained"]["arch"]
    open_clip.add_model_config(manifest.parent / models["pretrained"]["arch_config"])
    full = open_clip.create_model(arch, pretrained=None).state_dict()
    for entry in models.values():
        state, meta = load_checkpoint(manifest.parent / entry["weights"])
        assert entry["provenance"]["method"] == meta["method"]
        if entry["role"] == "base":
            assert entry["towers"] == ["visual", "text"] and set(state) == set(full)
        else:
            # fine-tunes tune the vision tower only and ship it like public FARE/TeCoA
            # releases: visual keys only, no prefix
            assert entry["towers"] == ["visual"]
            assert set(state) == {k[len("visual."):] for k in full if k.startswith("visual.")}
        if entry["role"] == "robust":
            assert meta["eps_label"] == entry["provenance"]["eps"]
    base, _ = load_checkpoint(manifest.parent / "pretrained.safetensors")
    nat, _ = load_checkpoint(manifest.parent / "natural.safetensors")
    assert any(not torch.equal(base[f"visual.{k}"], v) for k, v in nat.items())


def test_micro_zoo_is_reproducible(tmp_path):
    a = build_zoo(tmp_path / "a", preset="micro", seed=1).parent
    b = build_zoo(tmp_path / "b", preset="micro", seed=1).parent
    for name in ("pretrained", "tecoa"):
        sa, _ = load_checkpoint(a / f"{name}.safetensors")
        sb, _ = load_checkpoint(b / f"{name}.safetensors")
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_manifest_quoting_round_trips(tmp_path):
    from explorer.zoo import Manifest, ModelEntry, load_manifest
    entry = ModelEntry(name="p", role="base", arch="a", weights=str(tmp_path / "p.safetensors"),
                       towers=("visual",), provenance={"seed": 0, "data": 'a "b"'})
    path = Manifest(tmp_path / "m.toml", {"base": "p", "n": 3}, {"p": entry}).save(header="# hi\n")
    parsed = tomllib.loads(path.read_text())
    assert parsed["models"]["p"]["provenance"]["data"] == 'a "b"'
    assert parsed["defaults"]["n"] == 3 and parsed["models"]["p"]["weights"] == "p.safetensors"
    assert load_manifest(path).get("p").provenance["data"] == 'a "b"'
