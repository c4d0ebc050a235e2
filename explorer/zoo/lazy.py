"""Checkpoints read at the memory floor: tensor by tensor, straight into a flat buffer.

A ``.safetensors`` file is opened with ``safe_open`` (header checked, a truncated file refused
before anything is read) and each tensor is read with ``readinto`` directly into its slice of
the destination, so loading a model costs its flat buffer and one tensor of scratch at most
(an fp16 tensor or a device copy), never a second model. A ``.pt``/``.bin`` is read once with
``torch.load(weights_only=True)`` and re-saved, tensor by tensor, as safetensors under
``$EXPLORER_HOME/checkpoints/<sha256 of the file>.safetensors`` (content-addressed: the same
bytes anywhere convert once); later loads read the cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import torch
from safetensors import safe_open

from .checkpoints import CheckpointError, _hf_download, load_weights_only, unwrap_state_dict

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
          "U8": torch.uint8, "BOOL": torch.bool}
_CODES = {v: k for k, v in DTYPES.items()}


def explorer_home() -> Path:
    """``$EXPLORER_HOME`` (default ``~/.cache/trade-off-explorer``)."""
    return Path(os.environ.get("EXPLORER_HOME", Path.home() / ".cache" / "trade-off-explorer"))


def file_sha256(path: str | Path, chunk: int = 1 << 23) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_streaming(tensors: dict[str, torch.Tensor], path: str | Path,
                   metadata: dict[str, str] | None = None) -> Path:
    """Write safetensors one tensor at a time (no whole-file buffer); atomic via a temp name."""
    header, offset = {}, 0
    for k, t in tensors.items():
        if t.dtype not in _CODES:
            raise CheckpointError(f"tensor {k} has dtype {t.dtype}, which safetensors cannot hold")
        n = t.numel() * t.element_size()
        header[k] = {"dtype": _CODES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors.values():
            f.write(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    tmp.replace(path)
    return path


def cached_safetensors(path: str | Path) -> Path:
    """The safetensors twin of a ``.pt``/``.bin`` checkpoint (converted once, content-addressed).

    Raises:
        CheckpointError: the file cannot be read with ``weights_only=True`` or holds no tensors.
    """
    path = Path(path)
    digest = file_sha256(path)
    out = explorer_home() / "checkpoints" / f"{digest[:40]}.safetensors"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    sd = unwrap_state_dict(load_weights_only(path, mmap=True), str(path))
    return save_streaming(sd, out, {"converted_from": path.name, "sha256": digest})


def resolve_safetensors(source: str, cache_dir: str | None = None) -> Path:
    """A local safetensors path for ``source`` (a file or ``hf-hub:org/repo[/file]``)."""
    if source.startswith("hf-hub:"):
        source = _hf_download(source[len("hf-hub:"):], cache_dir)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path if path.suffix == ".safetensors" else cached_safetensors(path)


class LazyCheckpoint:
    """A safetensors file whose tensors are read one at a time, on demand.

    Raises (on open):
        CheckpointError: unreadable header or a file shorter than its header says (truncated).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with safe_open(str(self.path), framework="pt") as f:
                self.metadata = f.metadata() or {}
                keys = list(f.keys())
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{self.path.name} is not a readable safetensors file "
                                  f"(truncated or corrupt?): {exc}") from exc
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        self._start = 8 + n
        self.info = {k: header[k] for k in keys}

    def keys(self) -> list[str]:
        return list(self.info)

    def dtype(self, key: str) -> torch.dtype:
        return DTYPES[self.info[key]["dtype"]]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.info[key]["shape"])

    def meta(self) -> dict[str, torch.Tensor]:
        """Storage-free stand-ins (device ``meta``) with each tensor's shape and dtype."""
        return {k: torch.empty(self.shape(k), dtype=self.dtype(k), device="meta") for k in self.info}

    def read(self, key: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Tensor ``key``; with ``out`` (a contiguous buffer of its numel, any float dtype/device)
        written there, read straight into it when it is a CPU tensor of the file's dtype."""
        dtype, shape = self.dtype(key), self.shape(key)
        a, b = self.info[key]["data_offsets"]
        direct = out is not None and out.device.type == "cpu" and out.dtype == dtype and out.is_contiguous()
        buf = out if direct else torch.empty(shape, dtype=dtype)
        view = buf.reshape(-1).view(torch.uint8).numpy() if buf.numel() else None
        if view is not None:
            with open(self.path, "rb") as f:
                f.seek(self._start + a)
                if f.readinto(memoryview(view)) != b - a:
                    raise CheckpointError(f"{self.path.name}: tensor {key} is cut short (truncated file)")
        if out is None:
            return buf
        if not direct:
            out.copy_(buf.reshape(out.shape))
        return out
