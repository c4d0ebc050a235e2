"""The manifest: a TOML file of named checkpoints (role, architecture, weights, towers,
normalisation, provenance) and the ``[defaults]`` every command falls back to.

Relative paths resolve against the manifest's folder; ``Manifest.dumps`` writes them back
relative, so a zoo folder can be moved whole.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import tomllib

Role = Literal["base", "natural", "robust"]
ROLES = ("base", "natural", "robust")
LOCAL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
ASSETS = Path(__file__).resolve().parents[2] / "assets"
# The embedded default: the Fashion-MNIST ViT zoo (real photographs, a ViT image tower). The ResNet
# zoo on procedural shapes (assets/zoo) stays as the test suite's fast fixture.
_DEFAULT_MANIFEST = ASSETS / "zoo-fashion" / "manifest.toml"
MANIFEST_ENV = "EXPLORER_MANIFEST"   # an operator's (or the test suite's) default manifest


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
    """The manifest every command falls back to: ``$EXPLORER_MANIFEST`` when set (an operator's own
    zoo; the test suite points it at the shapes zoo), else the shipped Fashion-MNIST ViT zoo."""
    env = os.environ.get(MANIFEST_ENV, "").strip()
    return Path(env) if env else _DEFAULT_MANIFEST


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Read a TOML manifest (a file, or a folder holding ``manifest.toml``); relative paths resolve
    against its folder.

    Raises:
        FileNotFoundError: no such file (the message says when ``$EXPLORER_MANIFEST`` named it, and
            gives the build command for the shipped demo zoo only). ValueError: invalid TOML, no models.
    """
    from_env = path is None and bool(os.environ.get(MANIFEST_ENV, "").strip())
    path = Path(path or default_manifest_path()).resolve()
    if path.is_dir():
        if not (path / "manifest.toml").is_file():
            raise FileNotFoundError(f"manifest {path} is a folder without a manifest.toml")
        path = path / "manifest.toml"
    if not path.exists():
        hint = (f" (named by ${MANIFEST_ENV})" if from_env else
                " (build the demo zoo with `python -m explorer zoo build`)" if path == _DEFAULT_MANIFEST.resolve()
                else "")
        raise FileNotFoundError(f"manifest {path} does not exist{hint}")
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
    if (not weights.startswith("hf-hub:") and not weights.endswith(LOCAL_SUFFIXES)
            and ("/" in weights or "\\" in weights or weights.startswith((".", "~")))):
        # A path without a checkpoint suffix would reach open_clip's pretrained-tag lookup.
        raise ValueError(f"manifest entry {name!r}: weights {weights!r} looks like a path but does not end "
                         f"in {', '.join(LOCAL_SUFFIXES)} (a file), nor is it an hf-hub: id or a tag")
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
