"""The CLI contract: flags, JSON keys, defaults from the manifest, clear errors."""
from __future__ import annotations

import json

import pytest

from explorer.cli import main

KEYS = {"method", "alpha", "keep", "scope", "lambdas", "clean_acc", "robust_acc", "attack", "eps",
        "n", "seed", "seconds", "cached"}


def test_sweep_writes_points_and_rerun_is_cached(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "frontier.json"
    argv = ["sweep", "--manifest", str(tiny_zoo), "--natural", "natural", "--robust", "robust",
            "--method", "task_arithmetic", "--method", "ties", "--keep", "1.0", "--keep", "0.5",
            "--alphas", "0,1", "--attack", "pgd-2", "--eps", "4/255", "--n", "16",
            "--store", str(tmp_path / "s.sqlite"), "--out", str(out)]
    assert main(argv) == 0
    pts = json.loads(out.read_text())
    # Task arithmetic ignores keep: its two alphas once; TIES at both keeps.
    assert len(pts) == 2 + 2 * 2
    assert all(KEYS <= set(p) for p in pts)
    assert sorted((p["method"], p["keep"]) for p in pts) == [
        ("task_arithmetic", 1.0)] * 2 + [("ties", 0.5)] * 2 + [("ties", 1.0)] * 2
    assert all(0 <= p["robust_acc"] <= p["clean_acc"] <= 1 for p in pts)
    assert pts[0]["eps"] == pytest.approx(4 / 255) and pts[0]["task"] == "shapes"   # manifest default
    assert main(argv) == 0
    assert all(p["cached"] for p in json.loads(out.read_text()))


def test_evaluate_single_model(tiny_zoo, tmp_path):
    out = tmp_path / "x.json"
    assert main(["evaluate", "--manifest", str(tiny_zoo), "--model", "robust2", "--attack", "fgsm",
                 "--eps", "0.01", "--n", "16", "--no-store", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["model"] == "robust2" and "alpha" not in row
    assert (KEYS - {"alpha"}) <= set(row) and row["attack"] == "fgsm Linf eps=0.01"


@pytest.mark.parametrize("flag,value,message", [("--eps", "4/0", "eps"), ("--attack", "pgd-x", "pgd-K"),
                                                ("--alphas", "0:2:3", "alphas")])
def test_bad_input_gives_clear_error(tiny_zoo, capsys, flag, value, message):
    argv = ["sweep", "--manifest", str(tiny_zoo), "--natural", "natural", "--robust", "robust",
            "--n", "8", "--no-store", flag, value]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["bench", "--attack", "cw", "--points", "2"], "unknown attack 'cw'"),
    (["bench", "--attack", "autoattack", "--points", "2", "--n", "8"],
     "bench supports fgsm, pgd-K, apgd-ce, apgd-t, autoattack-fast; got autoattack"),
    (["compare", "--attack", "pgd-0", "--alphas", "0.5"], "pgd-K"),
    (["compare", "--methods", "task_arithmetic", "--alphas", "0.5", "--split", "train", "--attack", "none"],
     "held-out"),
    (["evaluate", "--model", "nobody", "--attack", "none", "--no-store"], "nobody"),
    (["sweep", "--natural", "natural", "--robust", "robust", "--n", "0"], "n must be >= 1"),
    (["sweep", "--natural", "natural", "--robust", "robust", "--alphas", ""],
     "alphas '': no values; use start:stop:count, both ends included (e.g. 0:1:11), or a comma list"),
    (["sweep", "--natural", "natural", "--robust", "robust", "--alphas", "0:1:2:3"],
     "alphas '0:1:2:3': a range has 3 parts start:stop:count, got 4; use start:stop:count"),
    # bad numbers and devices found by trying them (each once a traceback or a run of failed points)
    (["sweep", "--natural", "natural", "--robust", "robust", "--scale", "nan"],
     "scale must be a finite number, got nan"),
    (["sweep", "--natural", "natural", "--robust", "robust", "--scale", "inf"],
     "scale must be a finite number, got inf"),
    (["sweep", "--natural", "natural", "--robust", "robust", "--method", "pistole", "--options", "kappa=inf"],
     "method option kappa must be a finite number, got 'inf'"),
    (["evaluate", "--model", "robust", "--attack", "none", "--no-store", "--seed", "-1"],
     "seed must be >= 0, got -1"),
    (["evaluate", "--model", "robust", "--attack", "none", "--no-store", "--device", "nope"],
     "device 'nope': use cpu, cuda or cuda:N"),
    (["zoo", "list", "--device", "mps"], "device 'mps': use cpu, cuda or cuda:N"),
    (["bench", "--interactive", "--requests", "0"], "--requests must lie in [1, 8], got 0"),
    (["bench", "--interactive", "--gap-s", "nan"], "the gap between requests must be >= 0 s, got nan"),
    (["evaluate", "--model", "robust", "--attack", "none", "--no-store", "--n", "99999999"],
     "n=99999999 synthetic images need about 30517.6 GiB of host memory to render"),
])
def test_every_command_reports_a_user_error_in_one_line(tiny_zoo, capsys, argv, message):
    assert main([*argv[:1], "--manifest", str(tiny_zoo), *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("cmd", ["serve", "sweep", "evaluate", "bench", "compare", "zoo"])
def test_missing_manifest_is_one_line_before_any_work(tmp_path, capsys, cmd):
    extra = {"sweep": ["--natural", "a", "--robust", "b"], "evaluate": ["--model", "a"], "zoo": ["list"]}
    missing = tmp_path / "nowhere.toml"
    assert main([cmd, *extra.get(cmd, []), "--manifest", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: manifest {missing} does not exist\n"


def test_manifest_from_the_environment_or_a_folder(tmp_path, tiny_zoo, capsys, monkeypatch):
    """EXPLORER_MANIFEST=/nonexistent said 'build the demo zoo', and --manifest DIR printed
    '[Errno 21] Is a directory'; now the env var is named and a zoo folder is read."""
    monkeypatch.setenv("EXPLORER_MANIFEST", str(tmp_path / "gone.toml"))
    assert main(["zoo", "list"]) == 2
    assert capsys.readouterr().err == f"error: manifest {tmp_path / 'gone.toml'} does not exist " \
                                      "(named by $EXPLORER_MANIFEST)\n"
    assert main(["zoo", "list", "--manifest", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: manifest {tmp_path} is a folder without a manifest.toml\n"
    assert main(["zoo", "list", "--manifest", str(tiny_zoo.parent)]) == 0
    assert "robust2" in capsys.readouterr().out


def test_convert(tiny_zoo, tmp_path):
    assert main(["convert", str(tiny_zoo.parent / "robust2.pt"), str(tmp_path / "r.safetensors")]) == 0
    assert (tmp_path / "r.safetensors").stat().st_size > 0


def test_sweep_is_history_free_by_default_and_reuse_is_a_labelled_variant(tiny_zoo, tmp_path):
    out = tmp_path / "f.json"
    argv = ["sweep", "--manifest", str(tiny_zoo), "--natural", "natural", "--robust", "robust",
            "--alphas", "0,0.5,1", "--attack", "pgd-2", "--n", "16", "--store", str(tmp_path / "s.sqlite"),
            "--out", str(out)]
    assert main(argv) == 0
    fresh = json.loads(out.read_text())
    assert all(p["n_reused"] == 0 and p["reuse"] is False for p in fresh)
    assert all(p["attack"] == "pgd-2 Linf eps=4/255" for p in fresh)
    assert main(argv + ["--reuse"]) == 0
    reused = json.loads(out.read_text())
    assert not any(p["cached"] for p in reused)            # stored apart from the history-free run
    assert all(p["reuse"] is True and p["attack"] == "pgd-2 Linf eps=4/255 +reuse" for p in reused)
    assert all(f["robust_acc"] >= r["robust_acc"] for f, r in zip(fresh, reused))
    assert main(argv) == 0                                 # the history-free rows, from the store
    again = json.loads(out.read_text())
    assert all(p["cached"] for p in again)
    assert [p["robust_acc"] for p in again] == [p["robust_acc"] for p in fresh]


def test_zoo_report_prints_every_model_and_a_frontier(tiny_zoo, capsys):
    assert main(["zoo", "report", "--manifest", str(tiny_zoo), "--attack", "pgd-2", "--n", "16",
                 "--alphas", "0,1", "--also", "colors", "--no-store"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "|---" not in line]
    assert rows[0].split("|")[1].strip() == "model" and "clean colors" in rows[0]
    assert [r.split("|")[1].strip() for r in rows[1:5]] == ["base", "natural", "robust", "robust2"]
    assert "Task arithmetic natural -> robust" in out and "| 1.000 |" in out


def test_bench_prints_both_paths_and_the_ratio_last(tiny_zoo, capsys):
    assert main(["bench", "--manifest", str(tiny_zoo), "--attack", "pgd-3", "--eps", "4/255", "--n", "48",
                 "--points", "3", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("speedup ratio: ") and float(lines[-1].split(": ")[1]) > 0
    plain = next(l for l in lines if l.startswith("plain path:"))
    engine = next(l for l in lines if l.startswith("engine:"))
    robust = [float(l.rsplit(" ", 1)[1]) for l in (plain, engine)]
    assert robust[1] <= robust[0]          # the engine's attack is never weaker
    # Every robust image got all 3 steps at every point (early exit never cuts them short).
    steps = next(l for l in lines if l.startswith("engine attack:"))
    floor = next(l for l in lines if "PGD cannot skip" in l)
    assert int(steps.split()[2]) >= int(floor.split(": ")[1]) > 0
    bound = next(l for l in lines if "plain path / floor" in l)
    assert float(bound.rsplit("= ", 1)[1].rstrip("x")) > 0


def test_app_entry_answers_a_bad_manifest_in_one_line(tmp_path, capsys) -> None:
    """``python app.py --manifest missing.toml``: one ``error:`` line, exit 2, no traceback."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("app_entry", Path(__file__).resolve().parents[1] / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    assert app.main(["--manifest", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: manifest ") and "does not exist" in err and "\n" not in err
    assert "Traceback" not in err


def test_cuda_device_without_cuda_is_one_line(tiny_zoo, capsys, monkeypatch):
    """``--device cuda`` on a machine without CUDA: one line naming the fix, before any work."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["evaluate", "--manifest", str(tiny_zoo), "--model", "robust", "--device", "cuda",
                 "--no-store"]) == 2
    assert capsys.readouterr().err == ("error: device 'cuda': CUDA is not available on this machine; "
                                       "use --device cpu\n")


def test_help_shows_each_commands_whole_summary(capsys):
    """The zoo's two-line summary is printed whole (it was cut at 'list or measure a')."""
    assert main(["zoo", "--help"]) == 0      # --help: the usage, exit 0
    raw = capsys.readouterr().out
    out = " ".join(raw.split())
    assert raw.startswith("usage: python -m explorer zoo") and "multitask" in out
    assert ("build the demo zoo, list or measure a manifest, merge its task vectors across their tasks, or "
            "write a synthetic scale fixture") in out


def test_interrupted_sweep_keeps_its_points_and_the_rerun_resumes(tiny_zoo, tmp_path, capsys, monkeypatch):
    """Ctrl-C after two of four points: their lines and JSON are written, the one error line says
    how many and where they are, and the same command then serves them from the store."""
    from explorer.executors import LocalExecutor

    real_run = LocalExecutor.run

    def interrupted_run(self, jobs, **kwargs):
        for k, item in enumerate(real_run(self, jobs, **kwargs)):
            yield item
            if k == 1:
                raise KeyboardInterrupt

    out = tmp_path / "f.json"
    argv = ["sweep", "--manifest", str(tiny_zoo), "--natural", "natural", "--robust", "robust",
            "--alphas", "0:1:4", "--attack", "pgd-2", "--n", "8", "--store", str(tmp_path / "s.sqlite"),
            "--out", str(out)]
    monkeypatch.setattr(LocalExecutor, "run", interrupted_run)
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1] == ("error: interrupted after 2 of 4 points (in the store; "
                                             "the same command resumes from them)")
    first = json.loads(out.read_text())
    assert [p["alpha"] for p in first] == [0.0, pytest.approx(1 / 3)]
    assert captured.out.count("\n") == 2
    monkeypatch.setattr(LocalExecutor, "run", real_run)
    assert main(argv) == 0
    again = json.loads(out.read_text())
    assert [p["cached"] for p in again] == [True, True, False, False]
    assert [(p["clean_acc"], p["robust_acc"]) for p in again[:2]] == [(p["clean_acc"], p["robust_acc"])
                                                                      for p in first]


@pytest.mark.parametrize("where,message", [
    ("missing/x.json", "folder {tmp}/missing does not exist"),
    (".", "is a folder; name a file, e.g. {tmp}/points.json"),
])
def test_unwritable_out_is_refused_before_the_sweep(tiny_zoo, tmp_path, capsys, where, message):
    """A bad ``--out`` was found only after every point was computed (and, with --no-store, lost)."""
    out = tmp_path / where if where != "." else tmp_path
    argv = ["sweep", "--manifest", str(tiny_zoo), "--natural", "natural", "--robust", "robust",
            "--alphas", "0,1", "--attack", "none", "--n", "8", "--no-store", "--out", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: --out {out}: {message.format(tmp=tmp_path)}\n"
    assert captured.out == ""   # refused before any point ran


def test_convert_to_a_missing_folder_is_one_line(tiny_zoo, tmp_path, capsys):
    """Was safetensors' SafetensorError traceback (exit 1) after reading the source."""
    dst = tmp_path / "missing" / "r.safetensors"
    assert main(["convert", str(tiny_zoo.parent / "robust2.pt"), str(dst)]) == 2
    assert capsys.readouterr().err == f"error: dst {dst}: folder {dst.parent} does not exist\n"


@pytest.mark.parametrize("argv,message", [
    (["--port", "99999"], "argument --port: port must lie in [0, 65535], got 99999"),
    (["--max-job-seconds", "nan"], "argument --max-job-seconds: must be a finite number > 0, got nan"),
    (["--max-pixels", "-1"], "argument --max-pixels: must be an integer >= 1, got -1"),
    (["--workers", "0"], "argument --workers: must be an integer >= 1, got 0"),
])
def test_serve_flags_out_of_range_stop_before_serving(capsys, argv, message):
    """``serve --port 99999`` aborted the process (OverflowError in bind, then 'terminate called');
    a negative or NaN cap was accepted and served."""
    assert main(["serve", *argv]) == 2              # a usage error: one line, exit 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: python -m explorer serve: ")
    assert err.endswith(f"{message} (see --help)\n")


def test_zoo_synth_with_a_config_that_is_not_json_names_the_file(tmp_path, capsys):
    """Was 'error: Expecting value: line 1 column 1 (char 0)', naming no file."""
    bad = tmp_path / "my-arch.json"
    bad.write_text("hello, not json")
    assert main(["zoo", "synth", "--arch", "my-arch", "--arch-config", str(bad),
                 "--into", str(tmp_path / "fx")]) == 2
    assert capsys.readouterr().err == (f"error: architecture config {bad} is not a JSON model config: "
                                       "Expecting value: line 1 column 1 (char 0)\n")


def test_sweep_defaults_to_the_manifests_first_vectors_and_notes_a_role_mismatch(tiny_zoo, tmp_path, capsys):
    """``sweep`` needed --natural and --robust; a robust model named as --natural ran without a word."""
    out = tmp_path / "f.json"
    common = ["--manifest", str(tiny_zoo), "--alphas", "0,1", "--attack", "none", "--n", "8", "--no-store"]
    assert main(["sweep", *common, "--out", str(out)]) == 0
    pts = json.loads(out.read_text())
    assert {(tuple(p["natural"]), tuple(p["robust"])) for p in pts} == {(("natural",), ("robust",))}
    assert "note:" not in capsys.readouterr().err
    assert main(["sweep", *common, "--natural", "robust", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "note: robust is a robust model in the manifest; used here as --natural\n" in err
    assert "note: robust is on both sides (--natural and --robust): the sweep moves along one vector\n" in err
    assert {tuple(p["natural"]) for p in json.loads(out.read_text())} == {("robust",)}
    assert main(["sweep", *common, "--robust", "nobody"]) == 2
    assert "no model 'nobody' in the manifest" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--n", "1e12"], "python -m explorer evaluate: argument --n: invalid int value: '1e12' (see --help)"),
    (["sweep", "--seed", "nan"], "python -m explorer sweep: argument --seed: invalid int value: 'nan' (see --help)"),
    (["evaluate", "--model", "natural", "--bogus"], "unrecognized arguments: --bogus (see --help)"),
    (["nope"], "python -m explorer: argument cmd: invalid choice: 'nope'"),
])
def test_a_flag_that_does_not_parse_is_one_line_not_the_usage_block(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err and "usage:" not in err

