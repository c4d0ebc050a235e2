"""``check_device``: a typo or a CUDA device on a CPU machine is one readable ValueError."""
from __future__ import annotations

import pytest
import torch

from explorer.core.device import check_device, default_device


@pytest.mark.parametrize("name", [None, ""])
def test_default_passes_as_none(name):
    assert check_device(name) is None
    assert default_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cpu_names_pass_unchanged():
    assert check_device("cpu") == "cpu"
    assert check_device(torch.device("cpu")) == "cpu"


@pytest.mark.parametrize("name", ["nope", "mps", "meta", "cuda:x"])
def test_other_names_are_refused(name):
    with pytest.raises(ValueError) as err:
        check_device(name)
    assert str(err.value) == f"device {name!r}: use cpu, cuda or cuda:N"


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
