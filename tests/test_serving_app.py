"""Serving safely, against a running app: what a hostile page user tries, through gradio_client
and raw HTTP (httpx) where the client refuses to send it. Loopback only; tiny zoo; CPU."""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import time
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from explorer.app.flags import add_serve_args
from explorer.ui import build_demo
from explorer.zoo.files import refused_message

CAP_MB = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb() -> float:
    """This process's resident memory (the app is served from it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def folder(tiny_zoo: Path, tmp_path_factory) -> Path:
    """The operator-allowed checkpoint folder, with traps beside a good checkpoint."""
    root = tmp_path_factory.mktemp("serve") / "allowed"
    root.mkdir()
    (root / "good.safetensors").write_bytes((tiny_zoo.parent / "robust.safetensors").read_bytes())
    secret = root.parent / "secret.pt"
    secret.write_bytes(b"cache_dir=/x\napi_token=SECRET\n")
    (root / "secret.pt").write_bytes(secret.read_bytes())
    (root / "secret").write_bytes(secret.read_bytes())
    os.symlink(secret, root / "link.pt")
    os.mkfifo(root / "fifo.pt")
    (root / "big.pt").write_bytes(b"\0" * (CAP_MB * 2**20 + 1))
    return root


@pytest.fixture(scope="module")
def app(tiny_zoo: Path, folder: Path, tmp_path_factory):
    store = tmp_path_factory.mktemp("serve_store") / "results.sqlite"
    args = add_serve_args(argparse.ArgumentParser()).parse_args(
        ["--checkpoint-dir", str(folder), "--max-checkpoint-mb", str(CAP_MB), "--max-job-cost", "1e7",
         "--max-job-seconds", "60", "--max-added", "2", "--max-pixels", "4000000"])
    demo = build_demo(str(tiny_zoo), device="cpu", store_path=str(store), args=args)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(), quiet=True,
                show_error=False, max_file_size=f"{CAP_MB * 4}mb")
    yield demo
    demo.close()


def client(app) -> Client:
    return Client(app.local_url, verbose=False)


def values(alpha=0.5, attack="pgd-2", n=16, **changes) -> dict:
    v = dict(base="base", natural=["natural"], robust=["robust"], method="task_arithmetic", alpha=alpha,
             keep=1.0, scope="global", advanced=False, options="", attack=attack, eps="4/255", norm="Linf",
             task="shapes", theme="light",
             n=n, methods=["task_arithmetic"], alphas="0,1", image=None, classes="circle, square",
             kind="pgd", inspect_eps="4/255", steps=2, frames=5)
    v.update({f"lambda_{i}": 0.0 for i in range(6)})
    return {**v, **changes}


def api_args(app, api_name: str, **changes) -> list:
    """Positional API arguments of ``api_name``, from its inputs in the app's config (States not sent)."""
    import gradio as gr

    form = app.explorer_form
    by_id = {c._id: (n, c) for n, c in form._by_name.items()}
    dep = next(d for d in app.config["dependencies"] if d.get("api_name") == api_name)
    v = values(**changes)
    return [v.get(by_id[i][0]) for i in dep["inputs"] if not isinstance(by_id[i][1], gr.State)]


def text_of(outputs) -> str:
    return json.dumps(outputs, default=str)


def error_of(fn, match: str) -> str:
    """The one line the page's client gets for ``fn`` (Gradio's ``AppError``: a ``gr.Error``'s
    message), checked against ``match`` (a regex, as ``pytest.raises`` takes it)."""
    with pytest.raises(AppError, match=match) as info:
        fn()
    return str(info.value)


# ---------------------------------------------------------------------------- 1, 2: files
def test_add_by_name_refuses_everything_outside_in_one_line(app, folder: Path) -> None:
    c = client(app)
    t0 = time.perf_counter()
    names = ["missing.pt", "../secret.pt", "link.pt", "fifo.pt", "big.pt", "secret.pt", "secret",
             "/etc/passwd", "../../../../etc/hostname.pt", str(folder / "secret.pt")]
    refused = re.escape(refused_message(CAP_MB * 2**20))
    msgs = {error_of(lambda n=n: c.predict("base", None, n, "", "robust", api_name="/add_checkpoint"), refused)
            for n in names}
    assert msgs == {refused_message(CAP_MB * 2**20)}   # same line, every cause, said once
    assert time.perf_counter() - t0 < 30        # the FIFO did not hang the queue
    table, msg, *_ = c.predict("base", None, "good.safetensors", "fare", "robust", api_name="/add_checkpoint")
    assert msg.startswith("Added **fare**") and "fare" in [row[0] for row in table["data"]]
    assert "allowed" not in json.dumps(table) or str(folder) not in json.dumps(table)   # no server path shown


def test_upload_is_scoped_to_its_session(app, tiny_zoo: Path) -> None:
    a, b = client(app), client(app)
    _, msg, *_ = a.predict("base", handle_file(str(tiny_zoo.parent / "robust.safetensors")), "", "mine",
                           "robust", api_name="/add_checkpoint")
    assert "Added **mine**" in msg
    out = a.predict(*api_args(app, "preview_point", robust=["mine"]), api_name="/preview_point")
    assert "Preview" in text_of(out)
    # choosing it is a setting change: its stored points are shown, not "may have been evicted"
    shown = a.predict(*api_args(app, "show_stored", robust=["mine"]), api_name="/show_stored")
    assert "evicted" not in text_of(shown) and "robust" in text_of(shown)
    error_of(lambda: b.predict(*api_args(app, "show_stored", robust=["mine"]), api_name="/show_stored"),
             "'mine'")   # not another session's: Gradio's choices or our own line name it
    err = error_of(lambda: b.predict(*api_args(app, "preview_point", robust=["mine"]), api_name="/preview_point"),
                   "mine")
    assert "Preview" not in err                # another session cannot use it
    # A non-checkpoint upload: the same generic line, no temp path, no content.
    bad = tiny_zoo.parent / "notes.pt"
    bad.write_bytes(b"cache_dir=/x\napi_token=SECRET\n")
    err = error_of(lambda: a.predict("base", handle_file(str(bad)), "", "", "robust", api_name="/add_checkpoint"),
                   re.escape(refused_message(CAP_MB * 2**20)))
    assert err == refused_message(CAP_MB * 2**20)


def test_added_checkpoints_are_bounded(app, tiny_zoo: Path) -> None:
    c = client(app)
    for i in range(3):
        c.predict("base", handle_file(str(tiny_zoo.parent / "robust.safetensors")), "", f"n{i}", "natural",
                  api_name="/add_checkpoint")
    serving = app.explorer_service.serving
    assert len(serving.added) == 2 and serving.added.nbytes <= 2 * app.explorer_service.engine().vector_bytes()
    assert "n0" not in app.explorer_service.engine()._vectors     # evicted (least recently used) and dropped


# ---------------------------------------------------------------------------- 4, 6: images and errors
def test_images_are_checked_before_decoding_and_errors_are_one_line(app, tiny_zoo: Path, tmp_path: Path) -> None:
    c = client(app)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n")
    err = error_of(lambda: c.predict(*api_args(app, "inspect", image=handle_file(str(text))),
                                     api_name="/inspect"), "^Could not read the image")
    assert err.startswith("Could not read the image") and "\n" not in err
    assert "preprocess" not in err and "/tmp" not in err and "index 0" not in err
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(bomb, optimize=True)           # 144 MP in a few kB
    before, t0 = rss_mb(), time.perf_counter()
    err = error_of(lambda: c.predict(*api_args(app, "inspect", image=handle_file(str(bomb))),
                                     api_name="/inspect"), "pixels")
    assert "pixels" in err and "4,000,000" in err and "\n" not in err
    assert time.perf_counter() - t0 < 10 and rss_mb() - before < 150   # nothing was decoded
    ok = tmp_path / "ok.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(ok)
    out = c.predict(*api_args(app, "inspect", image=handle_file(str(ok))), api_name="/inspect")
    assert "pgd-2 Linf eps=4/255" in text_of(out)


def test_bad_input_logs_one_line_and_real_faults_keep_their_traceback(app, tmp_path: Path, capfd, caplog,
                                                                       monkeypatch) -> None:
    """A page user's bad input is not a server fault: one INFO line, no traceback on the console
    (Gradio prints one for every gr.Error unless told not to). A real fault: its traceback, once."""
    from explorer.ui.common import INTERNAL_ERROR
    from explorer.ui.guard import IMAGE_REFUSED, uploaded_image

    caplog.set_level(logging.INFO, logger="explorer.ui")
    c = client(app)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    calls = [("inspect", dict(image=handle_file(str(corrupt))), "^Could not read the image"),
             ("inspect", dict(classes="cat"), re.escape("Only one class ('cat'): zero-shot classification needs at least two.")),
             ("preview_point", dict(eps="four"), re.escape("eps 'four' is not a number")),
             ("sweep", dict(alphas="0:1:50000"), "^Sweep: 50001 points is more than this server allows"),
             # Gradio's own range checks, naming the control
             ("preview_point", dict(alpha=5.0), "^α: trade-off.*greater than maximum value 1"),
             ("inspect", dict(steps=0), "^" + re.escape("PGD steps: Value 0 is less than minimum value 1.") + "$")]
    for api, change, match in calls:
        err = error_of(lambda api=api, change=change: c.predict(*api_args(app, api, **change), api_name="/" + api),
                       match)
        assert "\n" not in err and err != INTERNAL_ERROR
    with pytest.raises(gr.Error, match=re.escape(IMAGE_REFUSED)) as info:   # not an uploaded file: refused in preprocess
        uploaded_image().preprocess({"url": "data:image/png;base64,AAAA"})
    assert info.value.message == IMAGE_REFUSED and info.value.print_exception is False
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == len(calls) + 1
    assert all(r.levelno == logging.INFO and not r.exc_info and "\n" not in r.getMessage() for r in refused)
    caplog.clear()
    # A real fault (here: the service breaks) keeps its traceback in the log, and shows nothing of it.
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire at /srv/secret")
    monkeypatch.setattr(app.explorer_service, "decode_image", broken)
    ok = tmp_path / "ok.png"
    Image.new("RGB", (8, 8)).save(ok)
    err = error_of(lambda: c.predict(*api_args(app, "inspect", image=handle_file(str(ok))), api_name="/inspect"),
                   re.escape(INTERNAL_ERROR))
    assert err == INTERNAL_ERROR
    faults = [r for r in caplog.records if r.exc_info]
    assert len(faults) == 1 and isinstance(faults[0].exc_info[1], RuntimeError)
    assert capfd.readouterr().err.count("Traceback") <= 1    # Gradio does not print a second one


# ---------------------------------------------------------------------------- 3: runaway jobs
def test_runaway_jobs_are_refused_before_they_start(app) -> None:
    c = client(app)
    err = error_of(lambda: c.predict(*api_args(app, "sweep", alphas="0:1:50000"),
                                     api_name="/sweep"), re.escape("50001 points is more than this server allows (201)"))
    assert "50001 points is more than this server allows (201)" in err and "\n" not in err
    for alphas in ("0:1:1000000", "0:1:5000000000"):   # refused before a list of that length is built
        err = error_of(lambda alphas=alphas: c.predict(*api_args(app, "sweep", alphas=alphas),
                                                       api_name="/sweep"), "count must be a whole number from 1 to 100000")
        assert "count must be a whole number from 1 to 100000" in err
    err = error_of(lambda: c.predict(*api_args(app, "refine_point", attack="pgd-10000", n=100000),
                                     api_name="/refine_point"), "image-passes")
    assert "image-passes" in err and "allows 1e+07" in err


# Nothing is fooled: every step runs. 64 images: the tiny zoo is near chance, and 16 of its nested eval
# order may hold no clean-correct image (then nothing is attacked and the "slow" sweep is instant).
SLOW = dict(attack="pgd-3000", eps="0.0001", alphas="0:1:40", n=64)


def test_stop_ends_running_and_queued_jobs_within_seconds(app) -> None:
    a, b, probe = client(app), client(app), client(app)
    running = a.submit(*api_args(app, "sweep", **SLOW), api_name="/sweep")
    time.sleep(3)
    queued = b.submit(*api_args(app, "sweep", **SLOW), api_name="/sweep")
    time.sleep(1)
    b.predict(api_name="/stop")                        # b's job is still waiting in the queue
    t0 = time.perf_counter()
    a.predict(api_name="/stop")
    last_a = running.result(timeout=30)
    assert time.perf_counter() - t0 < 10 and "Stopped after" in last_a[-1]
    last_b = queued.result(timeout=30)
    assert "Stopped after" in last_b[-1] and "Sweep" not in str(last_b[-1]).split("Stopped")[0]
    assert time.perf_counter() - t0 < 15              # both done; the engine is free again
    out = probe.predict(*api_args(app, "preview_point"), api_name="/preview_point")
    assert "Preview" in text_of(out)


def test_a_job_ends_when_its_client_goes_away(app) -> None:
    """Raw HTTP: join a slow sweep, read its stream briefly, drop the connection; the job stops."""
    url, form = app.local_url, app.explorer_form
    cfg = httpx.get(url + "config").json()
    dep = next(d for d in cfg["dependencies"] if d.get("api_name") == "sweep")
    by_id = {c._id: n for n, c in form._by_name.items()}
    v = values(**SLOW)
    data = [v.get(by_id[i]) if by_id.get(i) != "rows" else [] for i in dep["inputs"]]
    r = httpx.post(url + "gradio_api/queue/join", json={"data": data, "fn_index": dep["id"],
                                                         "session_hash": "gone-away", "trigger_id": None})
    assert r.status_code == 200
    with httpx.stream("GET", url + "gradio_api/queue/data", params={"session_hash": "gone-away"},
                      timeout=30) as resp:
        for line in resp.iter_lines():
            if "process_generating" in line:   # the first point is out: the job is running
                break
    t0 = time.perf_counter()
    lock = app.explorer_service.lock("base")
    assert lock.acquire(timeout=40), "the sweep of a departed client still holds the engine"
    lock.release()
    assert time.perf_counter() - t0 < 40
    time.sleep(1)
    assert lock.acquire(timeout=0.5)   # and does not take it again
    lock.release()


# ---------------------------------------------------------------------------- fuzz
def test_fuzz_malformed_requests(app, tmp_path: Path) -> None:
    """A few hundred malformed requests across the endpoints, in under a minute: the server still
    answers, a real request still works, and memory stays bounded."""
    rng = np.random.default_rng(0)
    url = app.local_url
    cfg = httpx.get(url + "config").json()
    deps = [d for d in cfg["dependencies"] if d.get("api_name") and d.get("api_visibility", "public") != "private"]
    junk = [None, "", "x" * 5000, -1, 1e308, float("nan"), [], {}, [1, [2, [3]]], {"path": "/etc/passwd"},
            {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, "../../etc/passwd", "pgd-99999999",
            "0:1:999999999", "\x00\x1b[31m", True, {"url": "data:image/png;base64,AAAA"}]
    before, t0, sent = rss_mb(), time.perf_counter(), 0
    with httpx.Client(timeout=10) as h:
        for i in range(240):
            dep = deps[i % len(deps)]
            n_in = len(dep["inputs"]) + int(rng.integers(-2, 2))
            data = [junk[int(rng.integers(len(junk)))] for _ in range(max(n_in, 0))]
            sid = f"fuzz{i % 7}"
            body = {"data": data, "fn_index": dep["id"] if i % 11 else 99999, "session_hash": sid}
            r = h.post(url + "gradio_api/queue/join", content=json.dumps(body, allow_nan=True)
                       if i % 13 else b"{not json", headers={"content-type": "application/json",
                                                              "connection": "close"})
            # Gradio answers an unknown fn_index with a bare 500 and bad JSON with a 4xx: no detail.
            assert r.status_code in (200, 400, 404, 422, 500, 503) and "Traceback" not in r.text
            sent += 1
        for path in ["gradio_api/file=/etc/passwd", "gradio_api/file=../../etc/passwd", "gradio_api/upload",
                     "gradio_api/queue/data?session_hash=nope", "gradio_api/info", "config"] * 10:
            try:
                r = (h.post(url + path, content=b"\x00" * 100, headers={"connection": "close"})
                     if path.endswith("upload") else h.get(url + path, timeout=3, headers={"connection": "close"}))
                assert "root:" not in r.text and "Traceback" not in r.text
            except httpx.TransportError:   # Gradio ends the stream of an unknown session abruptly
                pass
            sent += 1
        # The queue drains: every fuzz session's events end (errors), none hangs.
        for sid in {f"fuzz{j}" for j in range(7)}:
            with h.stream("GET", url + "gradio_api/queue/data", params={"session_hash": sid}, timeout=20) as resp:
                for line in resp.iter_lines():
                    if "close_stream" in line:
                        break
    assert sent >= 300 and time.perf_counter() - t0 < 60
    out = client(app).predict(*api_args(app, "preview_point"), api_name="/preview_point")
    assert "Preview" in text_of(out)                     # still serving real requests
    assert rss_mb() - before < 300                    # bounded memory
