"""Per-model input normalisation is honoured (issue 11, item 2), on the demo zoo (trained: its
predictions depend on the mean/std, unlike a random tiny model's)."""

# The input: a manifest entry with ``normalize = "imagenet"`` used to be evaluated with the
# base's CLIP mean/std, silently.
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from explorer.cli import main
from explorer.config import AttackSpec, EvalSpec, MergeSpec, SweepSpec
from explorer.data import get_task
from explorer.engine.frontier import Engine
from explorer.evaluation.evaluate import Images, evaluate
from explorer.studies.bench import plain_classifier
from explorer.zoo import default_manifest_path, load_manifest

EV = EvalSpec(task="shapes", n=48, seed=0)
CLEAN = AttackSpec("none", eps=0.0)


@pytest.fixture(scope="module")
def manifest_path(tmp_path_factory):
    """The demo zoo plus ``tecoa_in`` and ``fare_in``: its robust checkpoints declared ImageNet-normalised."""
    m = load_manifest(default_manifest_path())
    for name in ("tecoa", "fare"):
        e = m.get(name)
        m.add(replace(e, name=f"{name}_in", normalize="imagenet", weights=str(Path(e.weights).resolve()),
                      arch_config=str(Path(e.arch_config).resolve())))
    return m.save(tmp_path_factory.mktemp("norm") / "manifest.toml")


@pytest.fixture(scope="module")
def engine(manifest_path):
    return Engine(manifest_path, device="cpu")


def test_a_model_is_evaluated_with_its_declared_normalisation(engine, manifest_path):
    row = engine.model_point("tecoa_in", CLEAN, EV, use_store=False)
    assert row["normalize"] == "imagenet"
    sd = engine.merged_state_dict(["tecoa_in"], MergeSpec(lambdas=(1.0,)))
    x, y = get_task("shapes").load("test", EV.n, EV.seed)
    manifest = load_manifest(manifest_path)
    imagenet = plain_classifier(manifest, "pretrained", sd, "shapes", normalize="imagenet")
    clip = plain_classifier(manifest, "pretrained", sd, "shapes", normalize="clip")
    assert row["clean_acc"] == evaluate(imagenet, Images(x, y), CLEAN).clean_acc
    with torch.no_grad():   # the engine's classifier of this point is the ImageNet-normalised one
        assert torch.allclose(engine.classifier("shapes", row["normalize"])(x), imagenet(x), atol=1e-4)
        assert (imagenet(x) - clip(x)).abs().max() > 1e-2          # and the declaration matters
    same_weights = engine.model_point("tecoa", CLEAN, EV, use_store=False)
    assert same_weights["normalize"] == "clip"
    assert same_weights["clean_acc"] == evaluate(clip, Images(x, y), CLEAN).clean_acc
    assert same_weights["key"] != row["key"]


def test_vectors_declaring_the_same_normalisation_merge_with_it(engine):
    row = engine.point([], ["tecoa_in", "fare_in"], MergeSpec(lambdas=(0.5, 0.5)), CLEAN, EV, use_store=False)
    assert row["normalize"] == "imagenet"
    assert engine.model_point("pretrained", CLEAN, EV, use_store=False)["normalize"] == "clip"


def test_merging_different_declarations_is_refused(engine, manifest_path, capsys):
    msg = r"different input normalisations: natural \(clip\), tecoa_in \(imagenet\)"
    with pytest.raises(ValueError, match=msg):
        engine.point(["natural"], ["tecoa_in"], MergeSpec.from_alpha(0.5), CLEAN, EV)
    spec = SweepSpec(manifest=str(manifest_path), base="pretrained", natural=("natural",), robust=("tecoa_in",),
                     alphas=(0.0, 1.0), attack=CLEAN, eval=EV)
    with pytest.raises(ValueError, match=msg):
        next(engine.sweep(spec, progress=False))
    assert main(["sweep", "--manifest", str(manifest_path), "--natural", "natural", "--robust", "tecoa_in",
                 "--alphas", "0,1", "--attack", "none", "--n", "16", "--no-store"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot merge vectors with different input normalisations")


def test_calibration_sees_the_vectors_declared_normalisation(engine):
    """Data-aware methods (stability, PISTOLE, VTVC) calibrate on the same function the point is
    evaluated with: the vectors' normalisation, not the base's; their cache keys say which."""
    from explorer.calibrate.batch import FlatModel
    from explorer.calibrate.cache import vector_identity

    x, _ = get_task("shapes").load("test", 8, 0)
    names = ["tecoa_in", "fare_in"]
    engine.merge(names, MergeSpec(lambdas=(0.5, 0.5)))
    with torch.no_grad():
        got = FlatModel(engine, "shapes", names)(engine.theta, x)
        want = engine.classifier("shapes", "imagenet")(x)
        base_norm = FlatModel(engine, "shapes", ["tecoa", "fare"])(engine.theta, x)
    assert torch.allclose(got, want, atol=1e-4)
    assert (got - base_norm).abs().max() > 1e-2
    assert vector_identity(engine, names)[0] == {"base": engine.base_digest, "normalize": "imagenet"}
    assert vector_identity(engine, ["tecoa", "fare"])[0] == {"base": engine.base_digest}   # old keys hold
