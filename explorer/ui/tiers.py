"""The two tiers on one plane: the preview curve (pgd-K, seconds) and the reported curve
(``autoattack-fast``, grown coarse first), for the first view, the Sweep's stop rules and every
figure of the frontier tab.

The first view computes the default curve under the manifest's preview attack, then the same
curve under ``REPORTED_ATTACK`` as an anytime sweep (``Service.background_sweep``: round-robin,
16 images per point first, giving the engine way to any interactive request). A figure of a setting draws its
*companion*, the same setting under the other tier, beside it (``companion_label``): the reported
curve is the main one (full colour, its Pareto front and hypervolume) once it has as many points
as the preview curve (its first round is in), and the preview curve is then drawn faded behind
it; before that the reported points so far are drawn as their own curve. Every curve's legend
names its attack, eps and n.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from explorer.app.background import FIRST_CHUNK, BackgroundSweep, Snapshot, StopRule
from explorer.attacks import find_attack
from explorer.config import SweepSpec, parse_alphas
from explorer.viz import partial

from .common import DEFAULT_CURVE_ALPHAS, caption, default_curve

REPORTED_ATTACK = "autoattack-fast"   # the reported tier the first view grows after its preview curve
FIRST_VIEW_POINTS = 1 + len(parse_alphas(DEFAULT_CURVE_ALPHAS))   # the pretrained point and the alphas


def tier_of(label: str | None) -> str:
    """``preview``, ``reported`` or ``clean`` of an attack label (``pgd-10 Linf eps=4/255``)."""
    try:
        return find_attack(str(label or "none").split(" ")[0]).tier
    except (KeyError, ValueError):   # not an attack's label
        return "clean"


def reported_twin(spec: SweepSpec) -> SweepSpec | None:
    """``spec`` under ``REPORTED_ATTACK`` (same eps, norm, seed, vectors, alphas, n); None when
    ``spec``'s attack is not a preview attack."""
    if find_attack(spec.attack.name).tier != "preview":
        return None
    return replace(spec, attack=replace(spec.attack, name=REPORTED_ATTACK))


def first_view_jobs(service: Any) -> list[BackgroundSweep]:
    """The first view's background sweeps, started (shared by every visitor): the default curve
    (``common.default_curve``), then, once it is complete, its ``reported_twin``. Empty when the
    manifest has no default curve."""
    spec = default_curve(service)
    if spec is None:
        return []
    first = service.background_sweep(spec)
    twin = reported_twin(spec)
    return [first] if twin is None else [first, service.background_sweep(twin, after=first)]


def companion_label(label: str | None, preview: str) -> str | None:
    """The same attack label under the other tier: ``preview`` (an attack name, the manifest's
    default) <-> ``REPORTED_ATTACK``; None for any other attack."""
    name, _, rest = str(label or "").partition(" ")
    if not rest or find_attack(preview).tier != "preview":
        return None
    other = {preview: REPORTED_ATTACK, REPORTED_ATTACK: preview}.get(name)
    return None if other is None else f"{other} {rest}"


@dataclass(frozen=True)
class Plane:
    """What one figure shows: the main curve (its setting ``ref``) and the companion tier's."""

    curve: list[dict]            # main curve's rows (Pareto front, hypervolume, the highlighted point)
    ref: dict[str, Any]          # the main curve's setting (``common.setting_ref`` fields)
    other: list[dict]            # the companion tier's rows (same setting, other attack)
    faded: bool                  # the companion is drawn faded (it is the preview tier)

    @property
    def rows(self) -> list[dict]:
        """Every plotted row, main curve first (the points table)."""
        return [*self.curve, *self.other]


def choose_plane(selected: list[dict], ref: Mapping[str, Any], other: list[dict], other_label: str | None) -> Plane:
    """The main curve: the reported tier once it has as many points as the preview tier, or as
    many as the first view's curve has (its first round is in; refining more preview points
    later does not demote it)."""
    ref = dict(ref)
    if not other or other_label is None:
        return Plane(selected, ref, [], False)
    if tier_of(ref.get("attack")) == "reported":
        return Plane(selected, ref, other, True)
    if len(other) >= min(len(selected), FIRST_VIEW_POINTS):   # the reported curve leads
        return Plane(other, {**ref, "attack": other_label}, selected, True)
    return Plane(selected, ref, other, False)


def plane_caption(plane: Plane, current: Mapping[str, Any] | None = None) -> str:
    """``common.caption`` of the main curve, then what the companion curve is."""
    text = caption(plane.curve, plane.ref, current)
    if plane.other:
        first = plane.other[0]
        grow = partial.curve_progress({"": plane.other}).lstrip(": ")
        text += (f" Also plotted{' (faded)' if plane.faded else ''}: the same curve under {first.get('attack')}, "
                 f"{len(plane.other)} points, n = {first.get('n')}" + (f" ({grow})" if grow else "") + ".")
    return text


def stop_rule(until_ci: Any, budget_s: Any) -> StopRule:
    """The Sweep's stop rules from the page's text boxes (empty = none).

    Raises:
        ValueError: not a number, or out of range (one line naming the box).
    """
    def number(text: Any, what: str) -> float | None:
        text = "" if text is None else str(text).strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{what} must be a number, got {text!r}") from None
        return value

    w = number(until_ci, "the interval target (95% half-width)")
    s = number(budget_s, "the time budget (seconds)")
    if w is not None and not (math.isfinite(w) and 0 < w <= 0.5):
        raise ValueError(f"the interval target is a 95% half-width in (0, 0.5], e.g. 0.05; got {w:g}")
    if s is not None and not (math.isfinite(s) and s > 0):
        raise ValueError(f"the time budget must be a positive number of seconds, got {s:g}")
    return StopRule(until_ci=w, budget_s=s)


def images_span(rows: Sequence[Mapping[str, Any]]) -> str:
    """``16-32/256 images`` (or ``16/256``) over the rows' ``n_done`` of ``n``."""
    done = sorted({partial.progress(r)[0] for r in rows}) or [0]
    n = max((partial.progress(r)[1] for r in rows), default=0)
    return (f"{done[0]}" if len(done) == 1 else f"{done[0]}-{done[-1]}") + f"/{n} images"


def anytime_progress(latest: Mapping[Any, Mapping[str, Any]], total: int) -> str:
    """``3/6 points complete, 6 begun (16-32/256 images each)`` of an anytime sweep's latest rows."""
    ok = [r for r in latest.values() if not r.get("failed")]
    complete = sum(not partial.is_partial(r) for r in ok)
    text = f"{complete}/{total} points complete"
    if ok and complete < len(ok):
        text += f", {len(ok)} begun ({images_span(ok)} each)"
    return text


def background_status(jobs: Sequence[BackgroundSweep], snaps: Sequence[Snapshot]) -> str:
    """What the first view's background sweeps are computing, one sentence ('' when done)."""
    for job, snap in zip(jobs, snaps):
        if snap.done:
            continue
        attack = job_attack(job, snap)
        if not snap.started:
            return f"Then: the same curve under {attack}, coarse first."
        if tier_of(attack) == "reported":
            return (f"Computing the same curve under {attack} (the reported tier) in the background, coarse "
                    f"first, {FIRST_CHUNK} images per point a round: "
                    f"{anytime_progress({i: r for i, r in enumerate(snap.rows)}, snap.total)}. A control "
                    f"gets the engine at the attack's next step meanwhile.")
        text = (f"Computing the default curve under {attack} in the background: {len(snap.rows)}/{snap.total} "
                "points (the page is usable meanwhile).")
        later = [j for j, s in zip(jobs, snaps) if not s.started]
        if later:
            text += f" Then the same curve under {job_attack(later[0], None)}, coarse first."
        return text
    return ""


def job_attack(job: BackgroundSweep, snap: Snapshot | None) -> str:
    """The attack label of a background sweep (its rows', or the label it was made with)."""
    if snap is not None and snap.rows:
        return str(snap.rows[0].get("attack"))
    return getattr(job, "label", "") or "its attack"


def anytime_end(latest: Mapping[Any, Mapping[str, Any]], total: int, rule: StopRule, stopped: str | None) -> str:
    """The last status line of an anytime sweep: why it ended (``stopped``: the Stop's own words),
    how far it got and that every finished image is kept."""
    kept = "every finished image is stored; a re-run resumes from there."
    text = anytime_progress(latest, total)
    ok = [r for r in latest.values() if not r.get("failed")]
    if stopped is not None:
        return f"{stopped}: {text}; {kept}"
    if len(latest) == total and not any(partial.is_partial(r) for r in ok):
        return f"Sweep complete: {text}."
    if rule.until_ci is not None and all(rule.satisfied(r) for r in ok):
        return f"Every point reached the interval target (95% half-width ≤ {rule.until_ci:g}): {text}."
    if rule.budget_s is not None:
        return f"The time budget ({rule.budget_s:g} s) is spent: {text}; {kept}"
    return f"The sweep ended: {text}; {kept}"


def background_trouble(snaps: Sequence[Snapshot]) -> list[str]:
    """A background sweep's failure and its failed points, one line each."""
    out = [f"The background curve stopped: {s.error}" for s in snaps if s.error]
    failed = [r for s in snaps for r in s.rows if r.get("failed")]
    if failed:
        out.append(f"{len(failed)} point(s) failed (no accuracy): {failed[-1].get('error')}")
    return out


def snapshots_progress(snaps: Sequence[Snapshot]) -> tuple:
    """What changes when a background sweep moves on: rows received, started, done."""
    return tuple((s.updates, s.started, s.done) for s in snaps)
