"""Frontier tab handlers: named UI values -> config -> one service call -> figure, table, text.

Every handler that reads the controls takes one mapping of values by control name (Gradio passes
``{component: value}`` for set inputs; ``Form.read`` names them); ``common.selection`` turns them
into config objects, so a new control is read in one place.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import gradio as gr

from explorer.app.background import FIRST_CHUNK, NO_RULE, StopRule
from explorer.app.service import Service
from explorer.config import PointSpec, SweepSpec, parse_alphas
from explorer.core.cancel import Cancelled, CancelToken, cancel_scope, scoped
from explorer.merging import canonical_spec
from explorer.viz import partial, plots

from . import common, tiers
from .common import readable_errors, setting_of
from .form import Form
from .guard import session_of, start_job, stop
from .outputs import Outputs

# Each event's outputs by name: frontier_tab wires these components, the handlers return these values.
PREVIEW = Outputs("plot", "summary", "current", "status")
REFINE = Outputs("plot", "summary", "table", "rows", "current", "status")
SWEEP = Outputs("plot", "table", "rows", "status")
SHOW_STORED = Outputs("plot", "table", "status")
FIRST_VIEW = Outputs("plot", "table", "status", "summary", "current")
FIRST_VIEW_STREAM_S = 900.0   # how long a page follows the first view's background sweeps (one thread each)
LAMBDA_SLIDERS = Outputs("alpha", *(f"lambda_{i}" for i in range(common.MAX_VECTORS)))


class FrontierHandlers:
    """Handlers of the frontier tab, bound to one service (and the page's form, to name values)."""

    def __init__(self, service: Service, form: Form | None = None) -> None:
        self.service = service
        self.form = form or Form()
        self._live: dict[str, int] = {}               # session -> live-point generation (newest wins)
        self._shown: dict[str, tuple] = {}            # session -> the setting a setting change last showed

    # ------------------------------------------------------------------ parsing
    def read(self, values: Mapping[Any, Any], request: gr.Request | None = None) -> tuple[dict[str, Any], PointSpec]:
        """Values by name, and the selection they make (``ValueError`` naming a bad value, or a
        vector the caller's session may not use: another session's added checkpoint)."""
        v = self.form.read(values)
        sel = common.selection(v, self.service.default_base)
        self.service.serving.check_names(session_of(request), sel.names)
        return v, sel

    def curve_rows(self, rows: Sequence[dict], ref: dict) -> list[dict]:
        """Rows of ``ref``'s setting from this session, the background sweeps (partial points
        included) and the store, one per config (the first found, in that order)."""
        store = self.service.store
        pool = [*rows, *self.service.background_rows(), *(store.rows() if store is not None else [])]
        want, seen, out = setting_of(ref), set(), []
        for r in pool:
            if (setting_of(r) == want and not r.get("preview") and not r.get("failed")
                    and r.get("key") not in seen):
                seen.add(r.get("key"))
                out.append(r)
        return out

    def plane(self, rows: Sequence[dict], ref: dict) -> tiers.Plane:
        """``ref``'s curve and its companion tier's (``tiers``: which one leads)."""
        label = tiers.companion_label(ref.get("attack"), self.service.defaults.attack)
        other = self.curve_rows(rows, {**ref, "attack": label}) if label else []
        return tiers.choose_plane(self.curve_rows(rows, ref), ref, other, label)

    def _figure(self, rows: Sequence[dict], ref: dict, current: dict | None = None, theme: str | None = None):
        """The plane of ``ref``'s setting (``plane``) drawn, ``current`` highlighted."""
        pl = self.plane(rows, ref)
        return _draw(pl, current, theme), pl

    def stored(self, rows: Sequence[dict], sel: PointSpec) -> dict | None:
        """The selection's point on the plotted main curve, else at the chosen attack and n, when
        already computed or under way (no engine needed)."""
        spec = canonical_spec(sel.spec)
        return (common.at_merge(self.plane(rows, common.setting_ref(sel)).curve, spec)
                or common.at_merge(self.curve_rows(rows, common.setting_ref(sel)), spec))

    # ------------------------------------------------------------------ live point
    @readable_errors
    def preview(self, values: Mapping[Any, Any], request: gr.Request = None):
        """Fast tier: the current merge under ``pgd-5`` on at most 48 images, labelled preview.

        It may reuse adversarial examples of earlier previews (labelled ``+reuse``); the refined
        tier never does: its number depends only on the point's spec.
        """
        v, sel = self.read(values, request)
        session = session_of(request)
        self._live[session] = self._live.get(session, 0) + 1   # abandons this session's running refine
        known = self.stored(v["rows"] or [], sel)
        if known is not None:   # on a computed curve: the full-tier point at once
            fig, pl = self._figure(v["rows"] or [], common.setting_ref(sel), known, v.get("theme"))
            state = "Computing in the background" if partial.is_partial(known) else "Computed"
            return PREVIEW(plot=fig, summary=common.point_summary(known, state), current=known,
                           status=tiers.plane_caption(pl, known))
        quick = replace(sel.attack, name=common.PREVIEW_ATTACK) if sel.attack.name != "none" else sel.attack
        ev = replace(sel.eval, n=min(sel.eval.n, common.PREVIEW_N))
        job = start_job(self.service, request, "Preview", 1, ev.n, quick)
        try:
            with cancel_scope(job):
                row = self.service.point(sel.base, sel.natural, sel.robust, sel.spec, quick, ev, reuse=True)
        except Cancelled:
            return PREVIEW.skip()
        row = {**row, "preview": True}
        fig, pl = self._figure(v["rows"] or [], common.setting_ref(sel), row, v.get("theme"))
        return PREVIEW(plot=fig, summary=common.point_summary(row, "Preview (refining…)"), current=row,
                       status=tiers.plane_caption(pl, row))

    @readable_errors
    def refine(self, values: Mapping[Any, Any], request: gr.Request = None):
        """Full tier: the same merge under the chosen attack and n; added to the curve rows.

        A newer preview in the same session abandons it mid-attack (outputs left as they are).
        """
        v, sel = self.read(values, request)
        session = session_of(request)
        generation = self._live.get(session, 0)
        known = self.stored(v["rows"] or [], sel)
        if known is not None and known.get("attack") != sel.attack.label:   # the leading tier's point: kept
            return REFINE.skip()
        if known is not None and not partial.is_partial(known):   # computed: no need to wait for the engine
            row = {**known, "cached": True}
        else:
            job = start_job(self.service, request, "Refine", 1, sel.eval.n, sel.attack)
            superseded = CancelToken(also=lambda: self._live.get(session, 0) != generation or job.cancelled)
            try:
                with cancel_scope(superseded):
                    row = self.service.point(sel.base, sel.natural, sel.robust, sel.spec, sel.attack, sel.eval)
            except Cancelled:
                return REFINE.skip()
        rows = [r for r in (v["rows"] or []) if r.get("key") != row["key"]] + [row]
        fig, pl = self._figure(rows, row, row, v.get("theme"))
        return REFINE(plot=fig, summary=common.point_summary(row, "Refined"), table=common.rows_table(pl.rows),
                      rows=rows, current=row, status=tiers.plane_caption(pl, row))

    # ------------------------------------------------------------------ sweep
    @readable_errors
    def sweep(self, values: Mapping[Any, Any], request: gr.Request = None,
              progress=gr.Progress(track_tqdm=True)):
        """Stream the curve of each chosen method: figure, table and status after every point.

        Under a reported-tier attack (AutoAttack, APGD), or when a stop rule is set, the sweep is
        anytime (``Service.anytime_sweep``): every point gets its first images before any is
        refined, partial points drawn hollow; it stops refining a point at the interval target and
        ends at the time budget; Stop keeps every finished image. Such a sweep is priced by its first
        round (every point on ``FIRST_CHUNK`` images): later rounds are bounded by the job's time cap.
        """
        v, sel = self.read(values, request)
        rule = tiers.stop_rule(v.get("until_ci"), v.get("budget_s"))
        sw = SweepSpec(manifest=self.service.manifest_path, base=sel.base, natural=tuple(sel.natural),
                       robust=tuple(sel.robust), methods=tuple(v["methods"] or [sel.spec.method]),
                       alphas=parse_alphas(v["alphas"] or ""), keeps=(sel.spec.keep,),
                       scope=sel.spec.scope, attack=sel.attack, eval=sel.eval, options=sel.spec.options)
        total = 1 + len(sw.methods) * len(sw.alphas)
        if tiers.tier_of(sel.attack.label) == "reported" or rule != NO_RULE:
            yield from self._anytime_sweep(v, sel, sw, rule, total, request)
            return
        rows = list(v["rows"] or [])
        job = start_job(self.service, request, "Sweep", total, sel.eval.n, sel.attack)
        done, fresh, failed = 0, 0, []
        for row in scoped(job, self.service.sweep(sw)):
            done += 1
            if row.get("failed"):      # no accuracy: named in the status, never plotted
                failed.append(f"{row['method']} λ = {tuple(row['lambdas'])}: {row['error']}")
                yield SWEEP(status=self._sweep_status(done, total, fresh, failed, self.plane(rows, common.setting_ref(sel))))
                continue
            fresh += not row.get("cached")
            rows = [r for r in rows if r.get("key") != row["key"]] + [row]
            fig, pl = self._figure(rows, row, row, v.get("theme"))
            yield SWEEP(plot=fig, table=common.rows_table(pl.rows), rows=rows,
                        status=self._sweep_status(done, total, fresh, failed, pl))
            if job.cancelled:
                break
        if job.cancelled:
            yield SWEEP(status=f"Stopped after {done}/{total} points{self._why(job)}; they are stored, a re-run "
                               "resumes from there.")

    def _anytime_sweep(self, v: Mapping[str, Any], sel: PointSpec, sw: SweepSpec, rule: StopRule, total: int,
                       request: gr.Request | None):
        """``sweep`` coarse first (its docstring): figure, table and status after every chunk."""
        rows = list(v["rows"] or [])
        job = start_job(self.service, request, "Sweep", total, min(sel.eval.n, FIRST_CHUNK), sel.attack)
        latest: dict[Any, dict] = {}
        failed: list[str] = []
        for row in scoped(job, self.service.anytime_sweep(sw, rule=rule)):
            latest[row.get("key") or len(latest)] = row
            if row.get("failed"):
                failed.append(f"{row['method']} λ = {tuple(row['lambdas'])}: {row['error']}")
                continue
            rows = [r for r in rows if r.get("key") != row["key"]] + [row]
            fig, pl = self._figure(rows, row, row, v.get("theme"))
            yield SWEEP(plot=fig, table=common.rows_table(pl.rows), rows=rows,
                        status=f"Sweep, coarse first: {tiers.anytime_progress(latest, total)}. "
                               + tiers.plane_caption(pl) + self._failed(failed))
            if job.cancelled:
                break
        end = tiers.anytime_end(latest, total, rule, f"Stopped{self._why(job)}" if job.cancelled else None)
        yield SWEEP(status=end + self._failed(failed))

    def _why(self, job) -> str:
        return {"time limit": f" (this server's time limit per job, "
                              f"{self.service.serving.limits.max_job_seconds:g} s)"}.get(job.stop_reason, "")

    @staticmethod
    def _failed(failed: list[str]) -> str:
        return f" {len(failed)} point(s) failed (no accuracy): " + " | ".join(failed[-3:]) if failed else ""

    @staticmethod
    def _sweep_status(done: int, total: int, fresh: int, failed: list[str], pl: tiers.Plane) -> str:
        status = (f"Sweep {done}/{total} points ({fresh} computed, {done - fresh - len(failed)} from the "
                  f"store). " + tiers.plane_caption(pl))
        if failed:
            status += f". {len(failed)} point(s) failed (no accuracy): " + " | ".join(failed[-3:])
        return status

    def stop(self, request: gr.Request = None) -> str:
        """Stop this session's running and queued jobs (the point being attacked is abandoned)."""
        return stop(self.service, request)

    # ------------------------------------------------------------------ page state
    @readable_errors
    def show_stored(self, values: Mapping[Any, Any], request: gr.Request = None):
        """The stored points of the chosen setting (shown on setting changes). A bad value is one
        readable line and changes nothing on the page (what is plotted stays); the first view's
        stream draws only while the page shows its setting (``first_view``)."""
        v, sel = self.read(values, request)   # ValueError -> one line (readable_errors); outputs kept
        self._shown[session_of(request)] = setting_of(common.setting_ref(sel))
        pl = self.plane(v["rows"] or [], common.setting_ref(sel))
        label = pl.ref.get("attack")
        fig = plots.frontier_figure(pl.curve, current=self.stored(v["rows"] or [], sel), attack=label,
                                    setting=f"{label}, n={sel.eval.n}, task {sel.eval.task}", theme=v.get("theme"),
                                    other=pl.other, other_faded=pl.faded)
        return SHOW_STORED(plot=fig, table=common.rows_table(pl.rows), status=tiers.plane_caption(pl))

    # ------------------------------------------------------------------ first view
    @readable_errors
    def first_view(self, values: Mapping[Any, Any], request: gr.Request = None):
        """On page load: the stored points of the opening setting and, while the default curve is
        computed in the background (``tiers.first_view_jobs``: the preview curve, then the same
        curve under ``autoattack-fast``, coarse first), each update as it lands, with a status line
        saying what is computing. Partial points are hollow with their intervals, filled when
        final; the AutoAttack curve leads once its first round is in (``tiers.choose_plane``).
        Once the user moves α (or keep, a λ, the method) the plot is theirs: only the status line
        keeps updating; while a setting change shows another setting (``show_stored``: vectors,
        attack, eps, task, n ...) the stream writes nothing, and it draws again once the page is
        back on its setting. The stream ends after ``FIRST_VIEW_STREAM_S`` (a page holds one server thread while it
        streams; the AutoAttack curve may take an hour on a CPU): the sweep goes on, and a setting
        change or a reload shows its latest points."""
        try:
            v, sel = self.read(values)
        except ValueError as exc:
            yield FIRST_VIEW(plot=plots.frontier_figure([]), table=common.rows_table([]), status=str(exc))
            return
        session, spec = session_of(request), common.default_curve(self.service)
        start, mine = self._live.get(session, 0), setting_of(common.setting_ref(sel))
        self._shown.pop(session, None)   # a page (re)load shows its own setting
        jobs = tiers.first_view_jobs(self.service) if spec is not None and common.setting_ref(sel) == common.setting_ref(spec) else []
        t0 = time.monotonic()
        while True:
            snaps = [job.snapshot() for job in jobs]
            rows = v["rows"] or []
            pl = self.plane(rows, common.setting_ref(sel))
            over = not all(s.done for s in snaps) and time.monotonic() - t0 > FIRST_VIEW_STREAM_S
            status = " ".join(filter(None, [tiers.background_status(jobs, snaps), tiers.plane_caption(pl),
                                            *tiers.background_trouble(snaps)]))
            if over:
                status += (" This page stopped following it; the curve keeps growing in the background "
                           "(reload the page, or change a setting and back, to see its latest points).")
            if self._shown.get(session, mine) != mine:   # the page shows another setting: not ours to write
                pass
            elif self._live.get(session, 0) != start:   # the user took over the plot
                yield FIRST_VIEW(status=status)
            else:
                current = common.at_merge(pl.curve, canonical_spec(sel.spec))
                state = "On the curve, computing" if current is not None and partial.is_partial(current) \
                    else "On the curve"
                summary = (common.point_summary(current, state) if current is not None
                           else "Move α (or any control) to compute the current merge.")
                yield FIRST_VIEW(plot=_draw(pl, current, v.get("theme")), table=common.rows_table(pl.rows),
                                 status=status, summary=summary, current=current)
            if over or all(s.done for s in snaps):
                return
            seen = tiers.snapshots_progress(snaps)
            while (tiers.snapshots_progress([job.snapshot() for job in jobs]) == seen
                   and time.monotonic() - t0 <= FIRST_VIEW_STREAM_S):
                time.sleep(0.25)

    # ------------------------------------------------------------------ downloads
    @readable_errors
    def export(self, rows: list[dict] | None, current: dict | None):
        """CSV + JSON of the plotted points and the figure as HTML (PNG too if kaleido works)."""
        ref = current if current and not current.get("preview") else (rows[-1] if rows else current)
        if ref is None:
            raise gr.Error("nothing to export yet: move the slider or run a sweep first")
        fig, pl = self._figure(rows or [], {**ref, "preview": False}, current)
        text = json.dumps(common.marked(pl.rows), indent=1, default=str)
        out = common.export_dir(text)
        common.export_table(pl.rows).to_csv(out / "frontier.csv", index=False)
        (out / "frontier.json").write_text(text)
        fig.write_html(out / "frontier.html", include_plotlyjs=True)
        files = [str(out / f) for f in ("frontier.csv", "frontier.json", "frontier.html")]
        try:
            fig.write_image(out / "frontier.png", scale=2)
            files.append(str(out / "frontier.png"))
        except Exception:  # kaleido missing or without a browser: HTML only
            pass
        return files

    @readable_errors
    def checkpoint(self, values: Mapping[Any, Any], request: gr.Request = None):
        """The current merge as ``.safetensors`` (config in its metadata)."""
        _, sel = self.read(values, request)
        spec = sel.spec
        out = (common.export_dir(repr((sel.base, sel.natural, sel.robust, spec.to_json())))
               / f"merged-{spec.method}-{spec.digest()[:8]}.safetensors")
        return str(self.service.merged_checkpoint(sel.base, sel.names, spec, out))

    @staticmethod
    def lambda_sliders(natural, robust, advanced: bool, alpha: float):
        """Show one lambda slider per chosen vector in advanced mode, set from alpha."""
        natural, robust = list(natural or []), list(robust or [])
        names = natural + robust
        vals = [(1 - alpha) / max(len(natural), 1)] * len(natural) + [alpha / max(len(robust), 1)] * len(robust)
        ups = {}
        for i in range(common.MAX_VECTORS):
            if i < len(names):
                kind = "natural" if i < len(natural) else "robust"
                ups[f"lambda_{i}"] = gr.update(visible=bool(advanced), label=f"λ {names[i]} ({kind})",
                                               value=vals[i])
            else:
                ups[f"lambda_{i}"] = gr.update(visible=False)
        return LAMBDA_SLIDERS(alpha=gr.update(visible=not advanced), **ups)


def _draw(pl: tiers.Plane, current: dict | None, theme: str | None):
    """The frontier figure of a plane: its main curve, the companion tier's, ``current``."""
    return plots.frontier_figure(pl.curve, current=current, theme=theme, attack=pl.ref.get("attack"),
                                 other=pl.other, other_faded=pl.faded)

