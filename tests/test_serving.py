"""Serving safely, core side: checkpoint files (regular, capped, inside the folder, one generic
refusal), job prices and stops, added checkpoints bounded and scoped (tiny zoo, CPU)."""
from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from explorer.app.added import AddedCheckpoints
from explorer.app.jobs import MIN_BATCH, JobBoard, JobRefused, Limits, check_cost, job_cost
from explorer.app.service import Service
from explorer.attacks import parse_attack
from explorer.core.cancel import Cancelled, cancel_scope, check_cancelled
from explorer.zoo import CheckpointError, CheckpointRefused, load_manifest, load_weights, read_checkpoint_file
from explorer.zoo.files import refused_message, resolve_in_folder

CAP = 1 << 20


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    root.mkdir()
    save_file({"w": torch.ones(3)}, str(root / "good.safetensors"))
    (tmp_path / "secret.pt").write_bytes(b"cache_dir=/x\napi_token=SECRET\n")   # first byte 'c'
    (root / "secret.pt").write_bytes(b"cache_dir=/x\napi_token=SECRET\n")
    os.symlink(tmp_path / "secret.pt", root / "link.pt")
    os.mkfifo(root / "fifo.pt")
    (root / "big.pt").write_bytes(b"\0" * (CAP + 1))
    (root / "noext").write_bytes(b"cache_dir=/x\n")
    return root


def _refusal(fn) -> str:
    """The refusal ``fn`` raises: always the one line (``refused_message``), whatever the cause."""
    with pytest.raises(CheckpointRefused, match=f"^{re.escape(refused_message(CAP))}$") as info:
        fn()
    return str(info.value)


def test_every_refusal_is_the_same_line(folder: Path) -> None:
    """No file, outside, symlink out, FIFO, too big, no suffix, content that does not parse:
    one message, which names neither the path nor the content (and returns at once for a FIFO)."""
    t0 = time.perf_counter()
    cases = ["missing.pt", "../secret.pt", "link.pt", "fifo.pt", "big.pt", "noext", "secret.pt",
             "/etc/passwd", "", "sub/../../secret.pt"]
    msgs = {_refusal(lambda c=c: read_checkpoint_file(resolve_in_folder(folder, c, CAP), CAP)) for c in cases}
    assert msgs == {refused_message(CAP)} and "\n" not in refused_message(CAP)
    assert time.perf_counter() - t0 < 5      # the FIFO did not block
    assert "SECRET" not in refused_message(CAP) and "allowed" in refused_message(CAP)
    assert read_checkpoint_file(resolve_in_folder(folder, "good.safetensors", CAP), CAP)["w"].sum() == 3


def test_symlink_inside_the_folder_is_followed_only_inside(folder: Path) -> None:
    os.symlink(folder / "good.safetensors", folder / "alias.safetensors")
    assert resolve_in_folder(folder, "alias.safetensors", CAP) == (folder / "good.safetensors").resolve()
    assert _refusal(lambda: resolve_in_folder(folder, "link.pt", CAP)) == refused_message(CAP)


def test_manifest_path_without_suffix_is_one_line(tiny_zoo: Path, tmp_path: Path, capsys) -> None:
    """``weights = "/etc/passwd"`` never reaches open_clip's tag lookup: one line, CLI exit 2."""
    from explorer.cli import main

    text = tiny_zoo.read_text().replace('weights = "natural.safetensors"', 'weights = "/etc/passwd"')
    bad = tiny_zoo.parent / "bad_manifest.toml"
    bad.write_text(text)
    with pytest.raises(ValueError, match="looks like a path"):
        load_manifest(bad)
    assert main(["evaluate", "--manifest", str(bad), "--model", "natural", "--no-store"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: manifest entry 'natural'") and "\n" not in err and "Traceback" not in err
    # A bare word that is no pretrained tag of the architecture: a CheckpointError, not an IndexError.
    text = tiny_zoo.read_text().replace('weights = "natural.safetensors"', 'weights = "passwd"')
    bad.write_text(text)
    m = load_manifest(bad)
    with pytest.raises(CheckpointError, match="not a checkpoint file.*pretrained tag"):
        load_weights(m.get("natural"))


def test_torch_refusal_is_one_line_without_content(tmp_path: Path) -> None:
    from explorer.zoo import read_checkpoint

    (tmp_path / "x.pt").write_bytes(b"cache_dir=/x\napi_token=SECRET\n")
    with pytest.raises(CheckpointError, match="could not be loaded with weights_only=True") as info:
        read_checkpoint(str(tmp_path / "x.pt"))
    assert "SECRET" not in str(info.value) and "\n" not in str(info.value) and "\x1b" not in str(info.value)


def test_job_cost_and_cap() -> None:
    pgd10 = parse_attack("pgd-10", "4/255", "Linf")
    assert job_cost(12, 256, pgd10) == 12 * 256 * 11
    assert job_cost(3, 1, pgd10) == 3 * MIN_BATCH * 11       # one image priced as a small batch
    lim = Limits(max_job_cost=1e5, max_points=50)
    assert check_cost(lim, "Sweep", 12, 256, pgd10) == 12 * 256 * 11
    with pytest.raises(JobRefused, match="Sweep: about 1.35e\\+05 image-passes .*allows 1e\\+05"):
        check_cost(lim, "Sweep", 12, 256 * 4, pgd10)
    with pytest.raises(JobRefused, match="1000001 points"):
        check_cost(lim, "Sweep", 1_000_001, 1, pgd10)
    big = parse_attack("pgd-10000", "4/255", "Linf")
    with pytest.raises(JobRefused, match="Inspect"):
        check_cost(Limits(), "Inspect", 3, 1, big)    # 10000 PGD steps on 3 models: refused on CPU
    assert Limits.for_device("cuda").max_job_cost > 100 * Limits.for_device("cpu").max_job_cost / 2


def test_stop_reaches_queued_and_running_jobs_not_later_ones() -> None:
    board = JobBoard(Limits(max_job_seconds=0.5))
    queued_at = time.monotonic()
    board.stop("ann")                                # Stop pressed while the job waited in the queue
    assert board.start("ann", submitted=queued_at).cancelled
    later = board.start("ann")                        # submitted after the Stop: runs
    other = board.start("bob")
    assert not later.cancelled and not other.cancelled
    board.stop("ann")
    assert later.cancelled and later.stop_reason == "stopped" and not other.cancelled
    time.sleep(0.6)
    assert other.cancelled and other.stop_reason == "time limit"
    gone = board.start("cy", alive=lambda: False)
    assert gone.cancelled and gone.stop_reason == "client gone"
    # A job is the token its work runs under: inside its scope the attack loop's check raises.
    with cancel_scope(gone), pytest.raises(Cancelled, match="job client gone"):
        check_cancelled()


def test_added_book_evicts_least_recently_used() -> None:
    book = AddedCheckpoints(max_count=2, max_bytes=100)
    book.add("a", "ann", 40)
    book.add("b", "bob", 40)
    book.touch(["a"])
    assert book.admit("c", "ann", 40) == ["b"]         # count cap: b is the least recently used
    book.remove("b")
    book.add("c", "ann", 40)
    assert book.visible("ann") == ["a", "c"] and book.visible("bob") == []
    assert not book.can_use("bob", "a") and book.can_use("bob", "not-added")
    assert book.admit("d", "bob", 70) == ["a", "c"]    # bytes cap: both go
    with pytest.raises(ValueError, match="at most"):
        book.admit("e", "bob", 101)


def test_service_scopes_and_evicts_added_checkpoints(tiny_zoo: Path, tmp_path: Path) -> None:
    svc = Service(str(tiny_zoo), device="cpu", store_path="none")
    nbytes = svc.engine().vector_bytes()
    svc.serving.configure(Limits(max_added=2, max_added_mb=100 * nbytes / 2**20), share_added=False)
    src = tiny_zoo.parent / "robust.safetensors"
    names = [svc.serving.add_checkpoint(f"s{i}", "base", src, "robust", name="mine") for i in range(3)]
    assert names == ["mine", "mine-2", "mine"]        # s0's "mine" was evicted (LRU), the name reused
    eng = svc.engine()
    assert {"mine", "mine-2"} == set(eng._vectors) - {"natural", "robust", "robust2"}
    assert len(svc.serving.added) == 2 and svc.serving.added.nbytes == 2 * nbytes
    assert svc.serving.names("s2", "robust") == ["robust", "robust2", "mine"]
    with pytest.raises(ValueError, match="no task vector named 'mine'"):
        svc.serving.check_names("s0", ["natural", "mine"])        # now s2's, not s0's
    with pytest.raises(ValueError, match="no task vector named 'mine-2'"):
        svc.serving.check_names("s2", ["mine-2"])
    svc.serving.check_names("s2", ["natural", "mine"])
    svc.serving.add_checkpoint("s3", "base", src, "robust", name="third")
    assert "mine-2" not in eng._vectors and "mine-2" not in eng.manifest.models   # s1's: least recently used
    # The added vector is the file's: same digest as the manifest entry of the same file.
    assert eng.vector("mine").digest == eng.vector("robust").digest


def test_reading_a_fifo_does_not_block_a_thread(folder: Path) -> None:
    out: list = []
    t = threading.Thread(target=lambda: out.append(_refusal(lambda: read_checkpoint_file(folder / "fifo.pt", CAP))))
    t.start()
    t.join(timeout=5)
    assert not t.is_alive() and out == [refused_message(CAP)]
