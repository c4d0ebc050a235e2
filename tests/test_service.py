"""The application service: one engine per base behind its lock, defaults, image IO (tiny zoo, CPU)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explorer.app.images import (
    encode_png,
    image_to_tensor,
    tensor_to_image,
)
from explorer.app.images import (
    read_image as decode_image,
)
from explorer.app.service import EngineCache, Service
from explorer.config import MergeSpec


@pytest.fixture(scope="module")
def service(tiny_zoo: Path) -> Service:
    return Service(str(tiny_zoo), device="cpu", store_path="none")


def test_engine_cache_builds_each_base_once_across_threads() -> None:
    built: list[str] = []
    barrier = threading.Barrier(4)

    def build(base: str) -> object:
        built.append(base)
        return object()

    cache = EngineCache(build)
    got: list[object] = []

    def worker() -> None:
        barrier.wait()
        got.append(cache.get("a"))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == ["a"] and all(g is got[0] for g in got) and "a" in cache and "b" not in cache
    assert cache.lock("a") is cache.lock("a") and cache.lock("b") is not cache.lock("a")
    assert built == ["a", "b"]


def test_service_defaults_engine_and_point(service: Service) -> None:
    d = service.defaults
    assert d.base == service.default_base == "base" and service.store is None
    eng = service.engine()
    assert eng is service.engine("base") and eng.base == "base"
    row = service.point("base", ["natural"], ["robust"], MergeSpec.from_alpha(0.5), d.attack_spec("none"),
                        d.eval_spec(n=8))
    assert row["robust_acc"] == row["clean_acc"] and 0 <= row["clean_acc"] <= 1 and row["n"] == 8


def test_vector_stats_of_a_vector_with_itself(service: Service) -> None:
    s = service.vector_stats("base", ["natural", "robust"])
    assert [r["vector"] for r in s["table"]] == ["natural", "robust"]
    assert s["cos"][0][0] == 1.0 and s["cos"][0][1] == s["cos"][1][0] and -1 <= s["cos"][0][1] <= 1
    for r in s["table"]:
        per_layer = s["layer_norms"][r["vector"]]
        assert len(per_layer) == len(s["layers"])
        assert sum(v * v for v in per_layer) == pytest.approx(r["L2 norm"] ** 2, rel=1e-12)
        assert 0 < r["Linf norm"] <= r["L2 norm"] and 0 < r["nonzero fraction"] <= 1


def test_image_io_round_trip_and_readable_errors(tmp_path: Path) -> None:
    img = (np.arange(5 * 7 * 3) % 256).astype(np.uint8).reshape(5, 7, 3)
    path = encode_png(img, tmp_path / "x.png")
    back = decode_image(path)
    assert back.dtype == np.uint8 and np.array_equal(back, img)
    x = image_to_tensor(back)
    assert tuple(x.shape) == (1, 3, 5, 7) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert np.array_equal(tensor_to_image(x), img)
    Image.new("RGBA", (3, 2), (10, 20, 30, 255)).save(tmp_path / "rgba.png")
    assert decode_image(tmp_path / "rgba.png").shape == (2, 3, 3)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"^Could not read the image: is it a PNG"):
        decode_image(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="Upload an image"):
        decode_image(None)


def test_service_is_core_and_handlers_never_touch_tensors() -> None:
    """The service (and the CLI on it) imports no gradio; no ui/ module imports torch."""
    import ast
    import subprocess
    import sys

    code = ("import sys, explorer.app.service, explorer.cli.sweep, explorer.cli.evaluate; "
            "print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    ui = Path(__file__).resolve().parents[1] / "explorer" / "ui"
    for path in ui.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "torch" or n.startswith("torch.") for n in names), path.name


def test_adversarial_png_is_the_attacked_image_size_as_the_readme_says(tmp_path: Path) -> None:
    """Small uploads come back native size; large ones at the attacked size, longest side 224
    (issue 11.8: the README promised native size for every upload)."""
    small = np.zeros((30, 50, 3), np.uint8)
    assert Image.open(encode_png(tensor_to_image(image_to_tensor(small)), tmp_path / "s.png")).size == (50, 30)
    big = np.zeros((900, 1200, 3), np.uint8)
    out = encode_png(tensor_to_image(image_to_tensor(big)), tmp_path / "b.png")
    assert Image.open(out).size == (224, 168)
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "native size up to 224 px on the longest side" in readme and "comes back at 224x168" in readme


def test_the_executor_pool_is_where_points_run_and_holds_the_engine_lock(service: Service) -> None:
    """Service asks its pool where a base's points run: locally, the base's engine behind the lock
    every other use of that engine holds, taken per point (another thread waits, then runs)."""
    from explorer.executors import LocalExecutor
    from explorer.executors.base import ExecutorError
    from explorer.executors.pool import ExecutorPool

    ex = service.executor()
    assert isinstance(ex, LocalExecutor) and service.executor_kind == "local"
    assert ex.engine is service.engine("base") and ex.lock is service.lock("base")
    with pytest.raises(ExecutorError, match="^a Ray address or --workers needs the Ray executor"):
        ExecutorPool("local", service.engines.with_lock, lambda: service.manifest, workers=2)
    with pytest.raises(ExecutorError, match="^unknown executor 'gpu-farm'"):
        ExecutorPool("gpu-farm", service.engines.with_lock, lambda: service.manifest)


def test_added_checkpoints_leave_the_read_manifest_untouched(tiny_zoo: Path) -> None:
    """An added checkpoint lives in its engine's ``models.added``: the zoo as read keeps its entries,
    the engine's and the service's manifests are views that show it, and removing it hides it."""
    svc = Service(str(tiny_zoo), device="cpu", store_path="none")
    before = dict(svc.zoo.models)
    name = svc.add_checkpoint("base", str(tiny_zoo.parent / "robust.safetensors"), "extra", "robust")
    eng = svc.engine()
    assert name == "extra" and svc.zoo.models == before and "extra" not in svc.zoo.models
    assert eng.manifest.get("extra").role == "robust" and svc.manifest.get("extra") is eng.models.added["extra"]
    assert eng.vector("extra").digest == eng.vector("robust").digest
    eng.remove_entry("extra")
    assert "extra" not in eng.manifest.models and "extra" not in svc.manifest.models and "extra" not in eng._vectors


def test_a_local_point_waits_for_the_engine_lock(service: Service) -> None:
    from explorer.config import PointSpec

    d = service.defaults
    job = PointSpec(("natural",), ("robust",), MergeSpec.from_alpha(0.25), d.attack_spec("none"), d.eval_spec(n=8))
    ex, out = service.executor(), []
    worker = threading.Thread(target=lambda: out.extend(ex.run([job])))
    with service.lock("base"):          # another session's point in flight
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive() and out == []
    worker.join(timeout=30)
    assert [i for i, _ in out] == [0] and out[0][1]["lambdas"] == [0.75, 0.25]
