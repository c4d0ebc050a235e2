"""``check_device``: a typo or a CUDA device on a CPU machine is one readable ValueError."""
from __future__ import annotations

import re

import pytest
import torch

from explorer.core.device import check_device, check_precision, default_device, float32_precision


@pytest.mark.parametrize("name", [None, ""])
def test_default_passes_as_none(name):
    assert check_device(name) is None
    assert default_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cpu_names_pass_unchanged():
    assert check_device("cpu") == "cpu"
    assert check_device(torch.device("cpu")) == "cpu"


@pytest.mark.parametrize("name", ["nope", "mps", "meta", "cuda:x"])
def test_other_names_are_refused(name):
    with pytest.raises(ValueError, match=f"^{re.escape(f'device {name!r}: use cpu, cuda or cuda:N')}$"):
        check_device(name)


def test_cuda_without_cuda_and_an_index_past_the_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device 'cuda': CUDA is not available on this machine"):
        check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda:0") == "cuda:0"
    with pytest.raises(ValueError, match=r"^device 'cuda:1': this machine has 1 CUDA device\(s\)$"):
        check_device("cuda:1")


def test_engine_and_service_refuse_a_bad_device_before_loading(tiny_zoo):
    from explorer.app.service import Service
    from explorer.engine.frontier import Engine

    with pytest.raises(ValueError, match="^device 'nope'"):
        Service(str(tiny_zoo), "nope", "none")
    with pytest.raises(ValueError, match="^device 'nope'"):
        Engine(str(tiny_zoo), device="nope")


def _switches() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def switches():
    """The process's two TF32 switches, put back after the test whatever it did."""
    saved = _switches()
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_float32_precision_sets_inside_and_restores_after(switches):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, False
    with float32_precision("fp32"):
        assert _switches() == (False, False)
        with float32_precision("tf32"):
            assert _switches() == (True, True)
        assert _switches() == (False, False)
    assert _switches() == (True, False)
    with pytest.raises(RuntimeError, match="^boom$"), float32_precision("tf32"):
        raise RuntimeError("boom")
    assert _switches() == (True, False)                     # restored on the way out of an error
    with pytest.raises(ValueError, match="^precision must be 'fp32' or 'tf32', got 'bf16'$"):
        check_precision("bf16")


def test_an_engines_precision_is_its_own(tiny_zoo, switches):
    """Engine(precision=...) set TF32 for the whole process: another engine, the attack twin's fold
    check and everything after saw it. Now each engine's merge and point run under its own, and
    the process keeps its switches outside."""
    from explorer.config import AttackSpec, EvalSpec, MergeSpec
    from explorer.engine.attack_twin import exact_fp32
    from explorer.engine.frontier import Engine

    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, False   # neither engine's
    fp32, tf32 = Engine(tiny_zoo, device="cpu", precision="fp32"), Engine(tiny_zoo, device="cpu")
    assert _switches() == (True, False) and (fp32.precision, tf32.precision) == ("fp32", "tf32")
    for eng in (fp32, tf32):   # normalization is called inside point: it reports the switches there
        eng.inputs.normalization = lambda names, norm=eng.inputs.normalization: seen.append(_switches()) or norm(names)
    for eng, inside in ((fp32, (False, False)), (tf32, (True, True)), (fp32, (False, False))):
        seen = []
        eng.point(["natural"], ["robust"], MergeSpec.from_alpha(0.5), AttackSpec("pgd-1", eps="4/255"),
                  EvalSpec("shapes", n=4), use_store=False)
        assert seen and set(seen) == {inside} and _switches() == (True, False)
    with tf32.precision_scope():
        with exact_fp32():                                   # the twin's fold check: full fp32
            assert _switches() == (False, False)
        assert _switches() == (True, True)
    assert _switches() == (True, False)
    with pytest.raises(ValueError, match="^precision must be 'fp32' or 'tf32', got 'fp16'$"):
        Engine(tiny_zoo, device="cpu", precision="fp16")
