"""A merge method as data: its function, the spec fields and options it reads, version, paper.

After mergekit's "parameters declared as data": every method module ends with one
:class:`MethodRecord`, and :mod:`explorer.merging.registry` lists them. Everything else that
needs to know about a method (the canonical spec, the store key's method version, option
validation, the UI's choices, the CLI help, the parametrised tests) reads the record.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Literal

if TYPE_CHECKING:
    from explorer.config import MergeSpec

    from .base import MergeInputs, MergeResult

MergeFn = Callable[["MergeInputs", "MergeSpec"], "MergeResult"]
SPEC_FIELDS = ("keep", "scope", "seed")  # the MergeSpec fields a method may or may not read
KeepCount = Literal["exact", "at_most", "expected"]


@dataclass(frozen=True)
class Option:
    """One method option (``MergeSpec.options`` entry): its default and a one-line help.

    ``default=None`` means "resolved elsewhere" (e.g. the manifest's default task), stated in ``help``.
    ``choices``: the values it takes, when they are names (checked by ``validate_spec``).
    """

    default: Any
    help: str
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class MethodRecord:
    """Everything the rest of the package knows about one merge method."""

    name: str                    # registry name (MergeSpec.method)
    fn: MergeFn                  # (MergeInputs, MergeSpec) -> one coefficient per vector, or a MergedDelta
    paper: str                   # URL (or title when there is none) of what it follows
    fields: tuple[str, ...] = ()  # the SPEC_FIELDS it reads; canonical_spec resets the others
    options: Mapping[str, Option] = field(default_factory=dict)  # MergeSpec.options it accepts
    version: int = 1             # bumped when its results change; part of its points' store key
    preparer: str | None = None  # name in explorer.calibrate.PREPARERS that fills MergeInputs.context
    dense_at_full_keep: bool = False  # keep = 1 turns its mask off, so scope and seed act no more
    keep_count: KeepCount = "at_most"  # coordinates kept per vector at keep < 1: exactly
    # kept_count(n, keep), at most that many, or that many in expectation (random masks)
    lambdas_only: Literal["never", "always", "at_full_keep"] = "never"  # when its coefficients are the
    # lambdas themselves, no tau read (task arithmetic always; DARE / magnitude at keep = 1: their
    # docstrings' "keep=1 is task arithmetic exactly"): the engine then skips building the inputs
    exact_endpoints: bool = True  # alpha = 0 / 1 at keep = 1 give the fine-tunes bit for bit (False:
    # the method reshapes even a single vector, e.g. soft masks or a spectrum; stated in its docstring)

    def __post_init__(self) -> None:
        bad = [f for f in self.fields if f not in SPEC_FIELDS]
        if bad:
            raise ValueError(f"method {self.name!r}: unknown spec fields {bad}; valid: {SPEC_FIELDS}")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def is_lambdas(self, spec: "MergeSpec") -> bool:
        """Whether ``spec``'s coefficients are its lambdas exactly (``lambdas_only``)."""
        return self.lambdas_only == "always" or (self.lambdas_only == "at_full_keep" and spec.keep >= 1.0)

    def options_at_default(self) -> dict[str, Any]:
        """Every option with a declared default (``None`` ones are resolved elsewhere), by name."""
        return {k: o.default for k, o in self.options.items() if o.default is not None}


def read_option(spec: "MergeSpec", options: Mapping[str, Option], key: str) -> Any:
    """``spec.option(key)`` with the default declared in ``options`` (a method's OPTIONS)."""
    return spec.option(key, options[key].default)


# Options of the calibration shared by the data-aware methods (explorer.calibrate reads them).
CALIBRATION_OPTIONS: dict[str, Option] = {
    "calib_task": Option(None, "task whose train split calibrates (default: the manifest's task)"),
    "calib_n": Option(64, "number of calibration images"),
    "calib_seed": Option(0, "seed of the calibration subset and of the calibration attack"),
    "calib_eps": Option(None, "Linf radius of the calibration attack (default: the manifest's eps)"),
    "attack_steps": Option(5, "PGD steps of the calibration attack"),
    "anchor": Option(0.5, "alpha of the parameter point the calibration runs at"),
}
