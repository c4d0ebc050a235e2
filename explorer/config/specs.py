"""Frozen configuration objects with JSON round-trip and a stable content hash.

Every result row carries these; a row can be reproduced from its stored config.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .parse import eps_label, parse_eps

Scope = Literal["global", "per_tensor"]
Norm = Literal["Linf", "L2"]
CODE_VERSION = "0.6.0"  # part of every store key: bump when results would change (0.3.0: pooled-query
# twin and padded predict batches change float rounding; 0.4.0: autoattack-fast runs RobustVLM's 5
# APGD-CE restarts, autoattack's Square the reference p-schedule; 0.5.0: nested eval sets, so a
# synthetic task's test images at n != 128 changed; 0.6.0: APGD / APGD-T / Square draw per image,
# seeded by (seed, image id, stage, target, restart))


@dataclass(frozen=True)
class Defaults:
    """What every page and command falls back to: a manifest's ``[defaults]`` over these values.

    The only place the fallback task, radius, attack and sample count are written; the spec
    dataclasses below take their field defaults from here. Build one with ``resolve_defaults``.
    """

    task: str = "shapes"    # evaluation task (registry name)
    eps: str = "4/255"      # radius as a person types it (``parse_eps`` reads it)
    attack: str = "pgd-10"  # attack (registry name or pattern)
    n: int = 256            # evaluation images
    base: str | None = None  # pretrained base (manifest name); None when the manifest has none

    @property
    def eps_value(self) -> float:
        """``eps`` as a float in pixel units."""
        return parse_eps(self.eps)

    def attack_spec(self, name: str | None = None, eps: str | float | None = None, norm: Norm = "Linf",
                    seed: int = 0) -> "AttackSpec":
        """The attack of the given values, each one that is None taken from these defaults."""
        return AttackSpec(name=name or self.attack, eps=self.eps if eps is None else eps, norm=norm,
                          seed=int(seed))

    def eval_spec(self, task: str | None = None, n: int | None = None, seed: int = 0,
                  split: str = "test") -> "EvalSpec":
        """The evaluation of the given values, each one that is None taken from these defaults
        (``n=0`` is an error, not the default)."""
        return EvalSpec(task=task or self.task, n=int(self.n if n is None else n), seed=int(seed), split=split)


def resolve_defaults(manifest_defaults: Mapping[str, Any] | None, bases: Sequence[str] = ()) -> Defaults:
    """A manifest's ``[defaults]`` table (task, eps, attack, n, base) over ``Defaults``.

    Args:
        manifest_defaults: the table as read from the TOML (missing keys fall back; others ignored).
        bases: the manifest's base names, in order; the first is the base when the table names none.

    Raises:
        ValueError: an ``eps`` that is not a radius or an ``n`` below 1 (one readable line).
    """
    d, fallback = dict(manifest_defaults or {}), Defaults()
    n = int(d.get("n", fallback.n))
    if n < 1:
        raise ValueError(f"manifest [defaults] n must be >= 1, got {n}")
    out = Defaults(task=str(d.get("task", fallback.task)), eps=str(d.get("eps", fallback.eps)),
                   attack=str(d.get("attack", fallback.attack)), n=n,
                   base=d.get("base") or (bases[0] if bases else None))
    out.eps_value  # noqa: B018 -- validates the radius where it is read
    return out


class _Config:
    """Mixin: JSON round-trip and content hash for frozen dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                v = data[f.name]
                sub = _NESTED.get((cls.__name__, f.name))
                if sub is not None and isinstance(v, dict):
                    v = sub.from_dict(v)
                elif isinstance(v, list):
                    v = tuple(tuple(i) if isinstance(i, list) else i for i in v)
                kwargs[f.name] = v
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def digest(self) -> str:
        """Stable content hash (sha256 of the canonical JSON)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


@dataclass(frozen=True)
class AttackSpec(_Config):
    name: str = Defaults.attack   # registry name: none | fgsm | pgd-K | apgd-ce | apgd-t | autoattack-fast | autoattack
    eps: float = parse_eps(Defaults.eps)   # radius in pixel units ([0,1] images)
    norm: Norm = "Linf"    # threat model
    seed: int = 0          # every random choice of the attack derives from this

    def __post_init__(self) -> None:
        if self.norm not in ("Linf", "L2"):
            raise ValueError(f"norm must be 'Linf' or 'L2', got {self.norm!r}")
        if int(self.seed) < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        object.__setattr__(self, "eps", parse_eps(self.eps, 1.0 if self.norm == "Linf" else 64.0))

    @property
    def label(self) -> str:
        """E.g. ``pgd-10 Linf eps=4/255``: what every number on screen names."""
        if self.name == "none" or self.eps == 0:
            return "none (clean)"
        return f"{self.name} {self.norm} eps={eps_label(self.eps, self.norm)}"


@dataclass(frozen=True)
class EvalSpec(_Config):
    task: str = Defaults.task   # registry name of the evaluation task
    n: int = Defaults.n         # number of evaluation images (a fixed seeded subset)
    seed: int = 0          # which subset
    split: str = "test"    # held-out split

    def __post_init__(self) -> None:
        if int(self.n) < 1:
            raise ValueError(f"sample count n must be >= 1, got {self.n}")
        if int(self.seed) < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class MergeSpec(_Config):
    method: str = "task_arithmetic"    # registry name in explorer.merging.METHODS (one MethodRecord each)
    lambdas: tuple[float, ...] = ()    # one coefficient per task vector (natural ones first)
    keep: float = 1.0                  # fraction of coordinates kept, in (0, 1]
    scope: Scope = "global"            # sparsity over all merged tensors or per tensor
    seed: int = 0                      # randomness of the method (DARE drops, ...)
    alpha: float | None = None         # trade-off weight when built by ``from_alpha``
    options: tuple[tuple[str, Any], ...] = ()  # method-specific settings, sorted (key, value) pairs;
    # the method's record declares them (explorer.merging.validate_spec refuses any other)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambdas", tuple(float(v) for v in self.lambdas))
        object.__setattr__(self, "options", tuple(sorted((str(k), v) for k, v in self.options)))
        if not all(math.isfinite(v) for v in self.lambdas):
            raise ValueError(f"lambdas must be finite numbers, got {self.lambdas}")
        bad = [k for k, v in self.options if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise ValueError(f"method option {bad[0]} must be a finite number, got {dict(self.options)[bad[0]]}")
        if not 0.0 < float(self.keep) <= 1.0:
            raise ValueError(f"keep must lie in (0, 1], got {self.keep}")
        if self.scope not in ("global", "per_tensor"):
            raise ValueError(f"scope must be 'global' or 'per_tensor', got {self.scope!r}")
        if self.alpha is not None and not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")

    @classmethod
    def from_alpha(cls, alpha: float, n_natural: int = 1, n_robust: int = 1, scale: float = 1.0,
                   **kwargs: Any) -> "MergeSpec":
        """The trade-off parametrisation: natural vectors share ``s*(1-alpha)``, robust ``s*alpha``.

        With one vector of each kind, alpha=0 is the natural model and alpha=1 the robust one.
        """
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        nat = [scale * (1.0 - alpha) / n_natural] * n_natural
        rob = [scale * alpha / n_robust] * n_robust
        return cls(lambdas=tuple(nat + rob), alpha=float(alpha), **kwargs)

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


@dataclass(frozen=True)
class SweepSpec(_Config):
    manifest: str                         # path of the TOML manifest
    base: str                             # manifest name of the pretrained model
    natural: tuple[str, ...]              # manifest names of natural fine-tunes
    robust: tuple[str, ...]               # manifest names of robust fine-tunes
    methods: tuple[str, ...] = ("task_arithmetic",)
    alphas: tuple[float, ...] = tuple(i / 10 for i in range(11))
    keeps: tuple[float, ...] = (1.0,)
    scope: Scope = "global"
    scale: float = 1.0
    attack: AttackSpec = field(default_factory=AttackSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    merge_seed: int = 0
    options: tuple[tuple[str, Any], ...] = ()  # method options (key, value); each method gets those it declares

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(sorted((str(k), v) for k, v in self.options)))
        if not math.isfinite(float(self.scale)):
            raise ValueError(f"scale must be a finite number, got {self.scale}")


_NESTED = {("SweepSpec", "attack"): AttackSpec, ("SweepSpec", "eval"): EvalSpec}


@dataclass(frozen=True)
class PointSpec:
    """One point of the frontier: what the page selects, what an executor runs, what the engine grows.

    ``sweep`` is where its row is filed, not what it is (two points differing only there are equal).
    """

    natural: tuple[str, ...]      # manifest names of the natural vectors (first in the lambdas)
    robust: tuple[str, ...]       # manifest names of the robust vectors
    spec: MergeSpec               # the merge (the engine drops the settings its method ignores)
    attack: AttackSpec            # the attack the robust accuracy is measured under
    eval: EvalSpec                # the eval set (``n`` is the target)
    base: str | None = None       # manifest name of the pretrained model (None: the engine's)
    sweep: str | None = field(default=None, compare=False)   # sweep id stored beside the row

    def __post_init__(self) -> None:
        object.__setattr__(self, "natural", tuple(self.natural))
        object.__setattr__(self, "robust", tuple(self.robust))

    @property
    def names(self) -> tuple[str, ...]:
        """Every vector, natural ones first (the order of ``spec.lambdas``)."""
        return (*self.natural, *self.robust)
