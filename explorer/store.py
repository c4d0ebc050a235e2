"""SQLite results store: every point is committed the moment it is computed.

Rows are keyed by a content hash of (weights digests, merge spec, eval spec, attack spec,
code version), so a re-run is served from the store and a sweep cut off midway resumes where
it stopped. Per-sample flags are kept beside each row. Rows carry their accuracies' 95%
intervals (``clean_ci``, ``robust_ci``) in the row JSON; rows stored before intervals existed get
them from ``n`` and the accuracies when read (``intervals.with_intervals``).

Per-image results (table ``images``, the anytime tier): one row per (image key, image id) with the
image's clean flag, robust flag, the attack stage that broke it and its cost in fwd+bwd passes
(both NULL until the attack reports them), and the code version that computed it. The image key
hashes (weights or merge key, eval task/split/seed, attack spec, code version) but not ``n``:
image ``i`` is the i-th of the split's fixed seeded order (``explorer.data`` nested sets), so a
point at n is the aggregate of images 0..n-1 and growing n computes only the new ones. Rows are
written one chunk per transaction (``put_images``): a killed process loses at most the chunk it
was computing; rows of another code version are never returned (``images``).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .stats.intervals import with_intervals

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    key TEXT PRIMARY KEY,
    created REAL NOT NULL,
    sweep TEXT,
    row TEXT NOT NULL,
    clean_flags BLOB,
    robust_flags BLOB
);
CREATE INDEX IF NOT EXISTS points_sweep ON points(sweep);
CREATE TABLE IF NOT EXISTS images (
    ikey TEXT NOT NULL,
    image INTEGER NOT NULL,
    clean INTEGER NOT NULL,
    robust INTEGER NOT NULL,
    stage TEXT,
    cost INTEGER,
    code_version TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (ikey, image)
);
"""


@dataclass(frozen=True)
class ImageRows:
    """Per-image results of one image key, ordered by image id.

    Shape: every field [k] (k images found); ``stage`` entries None for images not broken (or
    not reported), ``cost`` -1 where the attack did not report it.
    """

    ids: np.ndarray          # int64 image ids (positions in the split's seeded order)
    clean: np.ndarray        # bool: clean-correct
    robust: np.ndarray       # bool: clean-correct and not broken by the attack
    stage: list[str | None]  # the stage that broke the image, or None
    cost: np.ndarray         # int64 fwd+bwd passes spent on the image (-1: not reported)

    def __len__(self) -> int:
        return len(self.ids)


def default_store_path() -> Path:
    """``$EXPLORER_HOME/results.sqlite`` (default ``~/.cache/trade-off-explorer``)."""
    import os

    home = Path(os.environ.get("EXPLORER_HOME", Path.home() / ".cache" / "trade-off-explorer"))
    home.mkdir(parents=True, exist_ok=True)
    return home / "results.sqlite"


class Store:
    """Thread-safe SQLite store of result rows (JSON) with per-sample boolean flags."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._cache: dict[str, dict[str, Any]] = {}
        self._seen_until = float("-inf")
        with self._lock:
            if str(self.path) != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._db.commit()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            cur = self._db.execute("SELECT row FROM points WHERE key = ?", (key,)).fetchone()
        return with_intervals(json.loads(cur[0])) if cur else None

    def flags(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(clean_correct, robust) boolean arrays of a stored point."""
        with self._lock:
            cur = self._db.execute("SELECT clean_flags, robust_flags FROM points WHERE key = ?",
                                   (key,)).fetchone()
        if not cur or cur[0] is None:
            return None
        return (np.frombuffer(cur[0], dtype=np.bool_).copy(), np.frombuffer(cur[1], dtype=np.bool_).copy())

    def put(self, key: str, row: dict[str, Any], clean: np.ndarray | None = None,
            robust: np.ndarray | None = None, sweep: str | None = None) -> None:
        """Insert or replace one point and commit at once."""
        blob = (lambda a: None if a is None else np.asarray(a, dtype=np.bool_).tobytes())
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO points (key, created, sweep, row, clean_flags, robust_flags) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key, time.time(), sweep, json.dumps(row, sort_keys=True), blob(clean), blob(robust)))
            self._db.commit()

    def rows(self, sweep: str | None = None) -> list[dict[str, Any]]:
        """All rows (of one sweep if given), oldest first."""
        if sweep is not None:
            with self._lock:
                cur = self._db.execute("SELECT row FROM points WHERE sweep = ? ORDER BY created",
                                       (sweep,)).fetchall()
            return [with_intervals(json.loads(r[0])) for r in cur]
        # The UI asks for every row on each interaction: parse only what is new since last time
        # (rows written by other processes included).
        with self._lock:
            cur = self._db.execute("SELECT key, row, created FROM points WHERE created >= ? "
                                   "ORDER BY created", (self._seen_until,)).fetchall()
            for key, row, created in cur:
                self._cache.pop(key, None)
                self._cache[key] = with_intervals(json.loads(row))
                self._seen_until = max(self._seen_until, created)
            return list(self._cache.values())

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM points").fetchone()[0])

    def put_images(self, ikey: str, ids: np.ndarray, clean: np.ndarray, robust: np.ndarray, code_version: str,
                   stage: list[str | None] | None = None, cost: np.ndarray | None = None) -> None:
        """Record one chunk of per-image results in one transaction (committed before returning).

        Args:
            ikey: the image key (module docstring). ids, clean, robust: [k] image ids and flags.
            code_version: the version that computed them (``config.CODE_VERSION``).
            stage, cost: [k] breaking stage / fwd+bwd passes, or None when not known.
        """
        k = len(ids)
        stage = stage if stage is not None else [None] * k
        cost_l = [None if c is None or int(c) < 0 else int(c) for c in (cost if cost is not None else [None] * k)]
        now = time.time()
        rows = [(ikey, int(i), int(bool(c)), int(bool(r)), s, co, code_version, now)
                for i, c, r, s, co in zip(ids, clean, robust, stage, cost_l, strict=True)]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO images (ikey, image, clean, robust, stage, cost, "
                                 "code_version, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.commit()

    def images(self, ikey: str, n: int, code_version: str) -> ImageRows:
        """The stored results of images ``0..n-1`` of ``ikey`` computed by ``code_version`` only."""
        with self._lock:
            cur = self._db.execute("SELECT image, clean, robust, stage, cost FROM images WHERE ikey = ? "
                                   "AND code_version = ? AND image < ? ORDER BY image",
                                   (ikey, code_version, int(n))).fetchall()
        return ImageRows(ids=np.array([r[0] for r in cur], dtype=np.int64),
                         clean=np.array([bool(r[1]) for r in cur], dtype=np.bool_),
                         robust=np.array([bool(r[2]) for r in cur], dtype=np.bool_),
                         stage=[r[3] for r in cur],
                         cost=np.array([-1 if r[4] is None else r[4] for r in cur], dtype=np.int64))

    def close(self) -> None:
        with self._lock:
            self._db.close()
