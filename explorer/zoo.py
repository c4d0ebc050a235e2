"""Model zoo: a TOML manifest of named checkpoints and safe open_clip loading.

A manifest entry names an open_clip architecture (built-in or a custom config file), a
weights source (open_clip pretrained tag, local ``.safetensors``/``.pt``/``.bin``, or
``hf-hub:org/repo[/file]``), the towers the checkpoint holds, the input normalisation and
its provenance. Loading never unpickles arbitrary objects (safetensors, or
``torch.load(weights_only=True)``), normalises the key layouts real robust checkpoints use,
and refuses checkpoints of the wrong architecture or with non-finite weights.
"""
from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

Role = Literal["base", "natural", "robust"]
ROLES = ("base", "natural", "robust")
LOCAL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "vision_encoder_state_dict", "module")
_DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "assets" / "zoo" / "manifest.toml"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: wrong architecture, missing keys, non-finite weights."""


@dataclass(frozen=True)
class ModelEntry:
    name: str                          # manifest key
    role: Role                         # base | natural | robust
    arch: str                          # open_clip model name
    weights: str                       # pretrained tag | local path | hf-hub:org/repo[/file]
    arch_config: str | None = None     # custom open_clip config JSON (absolute after loading)
    towers: tuple[str, ...] = ("visual", "text")   # towers the checkpoint holds
    normalize: str = "clip"            # clip | imagenet input mean/std
    provenance: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def is_local(self) -> bool:
        return self.weights.endswith(LOCAL_SUFFIXES)


@dataclass
class Manifest:
    path: Path | None
    defaults: dict[str, Any]
    models: dict[str, ModelEntry]

    def get(self, name: str) -> ModelEntry:
        if name not in self.models:
            raise KeyError(f"no model {name!r} in the manifest; it has {sorted(self.models)}")
        return self.models[name]

    def names(self, role: str | None = None) -> list[str]:
        return [n for n, e in self.models.items() if role is None or e.role == role]

    def add(self, entry: ModelEntry) -> None:
        self.models[entry.name] = entry

    def dumps(self, header: str = "") -> str:
        """TOML text (paths relative to the manifest's folder where possible), after ``header``."""
        root = self.path.parent if self.path else None
        lines = [header.rstrip("\n")] if header else []
        lines += ["[defaults]"] + [f"{k} = {_toml(v)}" for k, v in self.defaults.items()]
        for e in self.models.values():
            lines += ["", f"[models.{e.name}]", f"role = {_toml(e.role)}", f"arch = {_toml(e.arch)}"]
            if e.arch_config:
                lines.append(f"arch_config = {_toml(_rel(e.arch_config, root))}")
            weights = _rel(e.weights, root) if e.is_local() else e.weights
            lines += [f"weights = {_toml(weights)}", f"towers = {_toml(list(e.towers))}",
                      f"normalize = {_toml(e.normalize)}"]
            if e.provenance:
                lines.append(f"[models.{e.name}.provenance]")
                lines += [f"{k} = {_toml(v)}" for k, v in e.provenance.items()]
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path | None = None, header: str = "") -> Path:
        self.path = Path(path or self.path).resolve()
        self.path.write_text(self.dumps(header))
        return self.path


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(i) for i in v) + "]"
    return json.dumps(str(v))


def _rel(p: str, root: Path | None) -> str:
    try:
        return str(Path(p).resolve().relative_to(root)) if root else p
    except ValueError:
        return p


def default_manifest_path() -> Path:
    """The shipped demo zoo's manifest."""
    return _DEFAULT_MANIFEST


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Read a TOML manifest; relative paths resolve against its folder."""
    path = Path(path or default_manifest_path()).resolve()
    if not path.exists():
        raise FileNotFoundError(f"manifest {path} does not exist (build the demo zoo with "
                                "`python -m explorer zoo build`)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"manifest {path} is not valid TOML: {exc}") from exc
    models = {}
    for name, raw in data.get("models", {}).items():
        models[name] = _entry(name, raw, path.parent)
    if not models:
        raise ValueError(f"manifest {path} lists no [models.NAME] entries")
    return Manifest(path=path, defaults=dict(data.get("defaults", {})), models=models)


def _entry(name: str, raw: dict[str, Any], root: Path) -> ModelEntry:
    for key in ("role", "arch", "weights"):
        if key not in raw:
            raise ValueError(f"manifest entry {name!r} lacks {key!r}")
    if raw["role"] not in ROLES:
        raise ValueError(f"manifest entry {name!r}: role must be one of {ROLES}, got {raw['role']!r}")
    weights = str(raw["weights"])
    if weights.endswith(LOCAL_SUFFIXES) and not weights.startswith("hf-hub:"):
        weights = str((root / weights).resolve())
    cfg = raw.get("arch_config")
    return ModelEntry(
        name=name, role=raw["role"], arch=raw["arch"], weights=weights,
        arch_config=str((root / cfg).resolve()) if cfg else None,
        towers=tuple(raw.get("towers", ("visual", "text"))),
        normalize=raw.get("normalize", "clip"), provenance=dict(raw.get("provenance", {})))


def entry_from_path(path: str | Path, like: ModelEntry, name: str | None = None,
                    role: Role = "robust") -> ModelEntry:
    """A manifest entry for a local checkpoint of the same architecture as ``like``."""
    p = Path(path).expanduser().resolve()
    return replace(like, name=name or p.stem, role=role, weights=str(p),
                   towers=("visual", "text"), provenance={"source": str(p)})


# --------------------------------------------------------------------------- loading

def register_arch(entry: ModelEntry) -> None:
    """Make a custom architecture config known to open_clip under ``entry.arch``."""
    if not entry.arch_config:
        return
    import open_clip
    from open_clip.factory import _MODEL_CONFIGS

    cfg_path = Path(entry.arch_config)
    if not cfg_path.exists():
        raise FileNotFoundError(f"architecture config {cfg_path} of {entry.name!r} does not exist")
    if entry.arch not in _MODEL_CONFIGS:
        # open_clip names a config after its file; copy under the entry's arch name if needed.
        if cfg_path.stem == entry.arch:
            open_clip.add_model_config(cfg_path)
        else:
            _MODEL_CONFIGS[entry.arch] = json.loads(cfg_path.read_text())


def create_model(entry: ModelEntry, device: str | torch.device = "cpu"):
    """An open_clip model of the entry's architecture with random weights, and its tokenizer."""
    import open_clip

    register_arch(entry)
    if entry.arch not in open_clip.list_models():
        raise CheckpointError(f"unknown open_clip architecture {entry.arch!r} for {entry.name!r}")
    model = open_clip.create_model(entry.arch, pretrained=None, device=device)
    model.eval()
    return model, open_clip.get_tokenizer(entry.arch)


def read_checkpoint(source: str, cache_dir: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (local or ``hf-hub:org/repo[/file]``), loaded safely."""
    if source.startswith("hf-hub:"):
        source = _hf_download(source[len("hf-hub:"):], cache_dir)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} could not be loaded with weights_only=True (files that need "
                              f"arbitrary unpickling are refused): {exc}") from exc
    return unwrap_state_dict(obj, str(path))


def _hf_download(spec: str, cache_dir: str | None) -> str:
    """Resolve ``org/repo[/file]`` through the Hugging Face hub cache (offline when cached)."""
    from huggingface_hub import hf_hub_download, list_repo_files

    parts = spec.split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    if not filename:
        for candidate in ("open_clip_model.safetensors", "model.safetensors",
                          "open_clip_pytorch_model.bin", "pytorch_model.bin"):
            try:
                return hf_hub_download(repo, candidate, cache_dir=cache_dir)
            except Exception:  # try the next conventional name
                continue
        raise FileNotFoundError(f"hf-hub:{repo}: none of the conventional weight files found "
                                f"(files: {_safe_list(list_repo_files, repo)})")
    return hf_hub_download(repo, filename, cache_dir=cache_dir)


def _safe_list(fn, repo: str) -> list[str] | str:
    try:
        return fn(repo)
    except Exception:
        return "unavailable offline"


def unwrap_state_dict(obj: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Peel the wrappers real checkpoints use (``state_dict``, ``vision_encoder_state_dict``, ...)."""
    for _ in range(4):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            key = next((k for k in _WRAPPER_KEYS if k in obj), None)
            if key is None:
                break
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{where} holds no state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{where} holds no tensors")
    return tensors


def normalize_keys(sd: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a checkpoint's keys onto the model's: strip ``module.``, add ``visual.`` to tower-only dicts."""
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "model."):
            if k.startswith(prefix) and k not in reference:
                k = k[len(prefix):]
        out[k] = v
    # A vision-tower-only dict (FARE/TeCoA releases): its keys fit under ``visual.`` better
    # than at the top level (a few names, e.g. ``positional_embedding``, exist in both towers).
    direct = sum(k in reference for k in out)
    prefixed = sum(f"visual.{k}" in reference for k in out)
    if prefixed > direct:
        out = {f"visual.{k}": v for k, v in out.items()}
    return out


def validate_state_dict(sd: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
                        name: str, towers: tuple[str, ...]) -> None:
    """Raise ``CheckpointError`` naming keys that are unknown, mis-shaped, missing or non-finite."""
    unknown = sorted(k for k in sd if k not in reference)
    if unknown:
        raise CheckpointError(f"{name}: {len(unknown)} keys do not belong to this architecture, "
                              f"e.g. {unknown[:5]} (is it a checkpoint of another model?)")
    shapes = [f"{k}: {tuple(sd[k].shape)} vs {tuple(reference[k].shape)}"
              for k in sd if sd[k].shape != reference[k].shape]
    if shapes:
        raise CheckpointError(f"{name}: shape mismatch (checkpoint vs architecture) {shapes[:5]}")
    held = [k for k in reference if _tower(k) in towers]
    missing = sorted(k for k in held if k not in sd)
    if missing:
        raise CheckpointError(f"{name}: {len(missing)} keys of the {'+'.join(towers)} tower(s) are "
                              f"missing, e.g. {missing[:5]}")
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{name}: non-finite weights (NaN/Inf) in {bad[:5]}")


def _tower(key: str) -> str:
    return "visual" if key.startswith("visual.") else "text"


def load_weights(entry: ModelEntry, reference: dict[str, torch.Tensor] | None = None,
                 cache_dir: str | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors keyed like the model's state dict (only the towers it holds).

    ``reference`` is a state dict of the architecture (random weights are fine); it is made
    from the entry when not given. Open_clip pretrained tags are loaded through open_clip.
    """
    if reference is None:
        reference = create_model(entry)[0].state_dict()
    if entry.is_local() or entry.weights.startswith("hf-hub:"):
        raw = read_checkpoint(entry.weights, cache_dir)
    else:
        import open_clip
        register_arch(entry)
        raw = open_clip.create_model(entry.arch, pretrained=entry.weights, cache_dir=cache_dir).state_dict()
    sd = normalize_keys(raw, reference)
    towers = tuple(entry.towers)
    if "text" in towers and not any(_tower(k) == "text" for k in sd):
        towers = tuple(t for t in towers if t != "text")   # a visual-only file behind a full entry
    validate_state_dict(sd, reference, entry.name, towers)
    return {k: v.to(reference[k].dtype) if v.is_floating_point() else v for k, v in sd.items()}


def convert(src: str | Path, dst: str | Path) -> Path:
    """Re-save a ``.pt``/``.bin`` checkpoint as ``.safetensors`` (safe loading, wrappers peeled)."""
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"output must end in .safetensors, got {dst}")
    sd = read_checkpoint(str(src))
    for prefix in ("module.",):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dst),
              metadata={"converted_from": Path(src).name})
    return dst
