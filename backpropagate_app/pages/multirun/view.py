"""What the Multi-Run page shows: the campaign form, the per-run timeline, the loss curve
with its merge points, the forgetting heat-map, and two campaigns side by side.

Plain functions and one accumulator (`CampaignTail`), no Reflex: the page's States call
these and copy the results into their vars, and the unit tests check them without a
browser. The campaign's figures come from the run's summary, which the worker rewrites
after every phase of every run (see `backpropagate_core.training.campaign.Campaign.publish`).
"""

from __future__ import annotations

from typing import Any

from backpropagate_app.display import (DASH, EMPTY_RUN_VIEW, RunTail, fmt_clock, fmt_loss,
                                       loss_points, short_name, thin)
from backpropagate_core.errors import BackpropError
from backpropagate_core.training.multirun import CampaignSettings, campaign_settings
from backpropagate_core.runs.store import ACTIVE

_FIELDS = CampaignSettings.model_fields

FORM_FIELDS: list[tuple[str, str, type]] = [
    ("num_runs", "Runs", int),
    ("steps_per_run", "Steps per run", int),
    ("samples_per_run", "Samples per run", int),
    ("replay_fraction", "Replay fraction", float),
]
"""(campaign setting, label, type) of the number fields on the page."""
CAPTIONS: dict[str, str] = {
    **{key: _FIELDS[key].description for key, _label, _type in FORM_FIELDS},
    "samples_per_run": "Examples per chunk, its validation slice included; leave it empty to share "
                       "the dataset out evenly between the runs.",
    "replay_fraction": "Extra examples drawn from earlier chunks, as a share of each run's own "
                       "(0 = none, 0.1 = 10%).",
    "merge_mode": "slao merges the adapter after every run; sequential keeps training one adapter "
                  "(the baseline to compare with).",
    "schedule": f"How far B moves towards each new run's B in a SLAO merge: 1/√i, 1/i, or a "
                f"constant {_FIELDS['lambda_c'].default}.",
}
MERGE_MODES = [{"value": "slao", "label": "slao: merge between runs"},
               {"value": "sequential", "label": "sequential: no merge"}]
SCHEDULES = [{"value": "inv_sqrt", "label": "1/√i (inv_sqrt)"},
             {"value": "inv", "label": "1/i (inv)"},
             {"value": "constant", "label": f"constant {_FIELDS['lambda_c'].default}"}]
STATE_COLORS = {"pending": "gray", "training": "blue", "merging": "violet", "done": "green",
                "stopped": "orange"}


# ---- the form ---------------------------------------------------------------------------------

def default_form() -> dict[str, str]:
    """The engine's defaults as the form's text."""
    defaults = {key: _FIELDS[key].default for key in _FIELDS}
    form = {key: f"{defaults[key]:g}" if kind is float else str(defaults[key])
            for key, _label, kind in FORM_FIELDS}
    form["samples_per_run"] = ""  # the engine shares the dataset out between the runs
    return form | {"merge_mode": defaults["merge_mode"], "schedule": defaults["schedule"]}


def campaign_options(form: dict[str, str]) -> dict[str, Any]:
    """Keyword arguments for `worker.start_multi_run` from the form's text.

    Raises one CONFIG_INVALID naming every field that is not a number of the right kind,
    then the engine's own validation (ranges, room for a validation slice).
    """
    values: dict[str, Any] = {}
    problems = []
    for key, label, kind in FORM_FIELDS:
        text = (form.get(key) or "").strip()
        if key == "samples_per_run" and not text:
            continue
        try:
            number = float(text)
            if kind is int and not number.is_integer():
                raise ValueError(text)
            values[key] = kind(number)
        except ValueError:
            problems.append(f"{label}: {text!r} is not {'a whole number' if kind is int else 'a number'}")
    if problems:
        raise BackpropError("CONFIG_INVALID", "; ".join(problems), hint="Correct the fields named above.")
    values |= {"merge_mode": form.get("merge_mode") or "slao", "schedule": form.get("schedule") or "inv_sqrt"}
    campaign_settings(**values)  # the engine's checks, before a worker is started
    return values


# ---- the run timeline -------------------------------------------------------------------------

def _campaign(run: dict) -> tuple[dict, int, int]:
    """(summary, runs, steps per run): the summary once the worker published, else the config."""
    summary = run.get("summary") or {}
    settings = (run.get("config") or {}).get("campaign") or {}
    n = summary.get("num_runs") or settings.get("num_runs") or 0
    return summary, int(n), int(summary.get("steps_per_run") or settings.get("steps_per_run") or 0)


def timeline_rows(run: dict) -> list[dict[str, str]]:
    """One row per run of the campaign: its state (pending / training / merging / done, or
    stopped when the campaign ended while the run was under way), its steps, the merge λ
    and its validation loss right after training."""
    summary, n, steps = _campaign(run)
    states = list(summary.get("timeline") or [])
    states += ["pending"] * (n - len(states))
    lambdas, matrix = summary.get("lambdas") or [], summary.get("forgetting") or []
    live = run.get("status") in ACTIVE
    rows = []
    for i, state in enumerate(states[:n]):
        if not live and state in ("training", "merging"):
            state = "stopped"
        lam = lambdas[i] if i < len(lambdas) else None
        own = matrix[i][i] if i < len(matrix) and i < len(matrix[i]) else None
        rows.append({"index": str(i + 1), "state": state, "color": STATE_COLORS.get(state, "gray"),
                     "steps": f"steps {i * steps + 1}–{(i + 1) * steps}" if steps else "",
                     "lam": "" if lam is None else f"λ {lam:.3f}",
                     "loss": "" if own is None else f"val {own:.4f}"})
    return rows


# ---- the forgetting heat-map --------------------------------------------------------------------

def heat_color(value: float | None, lo: float, hi: float) -> str:
    """Background for a loss cell: green at the lowest loss of the matrix through yellow to
    red at the highest; a light gray for a chunk not seen yet."""
    if value is None:
        return "hsl(210, 16%, 93%)"
    t = 0.5 if hi <= lo else min(1.0, max(0.0, (value - lo) / (hi - lo)))
    return f"hsl({round(130 * (1 - t))}, 70%, 80%)"


def delta_color(delta: float | None, scale: float) -> str:
    """Background for a forgetting cell: red where the loss rose, green where it fell,
    stronger the further from zero (relative to the largest change, `scale`)."""
    if delta is None:
        return "transparent"
    strength = min(1.0, abs(delta) / scale) if scale > 0 else 0.0
    return f"hsl({0 if delta > 0 else 130}, 70%, {round(96 - 16 * strength)}%)"


def heatmap_cells(matrix: list[list[float | None]]) -> list[dict[str, str]]:
    """The heat-map as a flat list of cells for a grid of len(matrix) + 1 columns: a header
    row (chunks), one row per run (validation loss per chunk after that run), and a last
    row with how much each earlier chunk's loss rose since it was trained."""
    if not matrix:
        return []
    n = len(matrix[0])
    values = [x for row in matrix for x in row if x is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
    cells = [_cell("", "corner")] + [_cell(f"chunk {j + 1}", "head") for j in range(n)]
    for i, row in enumerate(matrix):
        cells.append(_cell(f"after run {i + 1}", "head"))
        cells += [_cell(DASH if x is None else f"{x:.4f}", "loss", heat_color(x, lo, hi),
                        "not seen yet" if x is None else f"validation loss on chunk {j + 1} after run {i + 1}")
                  for j, x in enumerate(row)]
    if len(matrix) > 1:
        now = matrix[-1]
        deltas = [now[j] - matrix[j][j] if j < len(matrix) - 1 and now[j] is not None
                  and matrix[j][j] is not None else None for j in range(n)]
        scale = max((abs(d) for d in deltas if d is not None), default=0.0)
        cells.append(_cell("forgot", "head"))
        cells += [_cell(DASH if d is None else f"{d:+.4f}", "delta", delta_color(d, scale),
                        f"chunk {j + 1}: loss now minus loss right after run {j + 1}" if d is not None
                        else "no earlier chunk to compare")
                  for j, d in enumerate(deltas)]
    return cells


def _cell(text: str, kind: str, background: str = "transparent", title: str = "") -> dict[str, str]:
    return {"text": text, "kind": kind, "background": background, "title": title}


def forgetting_figure(avg: float | None) -> tuple[str, str]:
    """(the average-forgetting figure, one sentence saying what it means)."""
    if avg is None:
        return DASH, "Measured once a second run has finished: how much the validation loss on earlier chunks rose."
    verb = "rose" if avg > 0 else "fell"
    return (f"{avg:+.4f}", f"Validation loss on earlier chunks {verb} by {abs(avg):.4f} on average "
                           "since the run that trained on them.")


# ---- the loss curve and its merge points ---------------------------------------------------------

def merge_markers(summary: dict) -> list[dict[str, Any]]:
    """A vertical marker {step, label} at the end of every merged run."""
    lambdas = summary.get("lambdas") or []
    sequential = summary.get("merge_mode") == "sequential"
    out = []
    for i, step in enumerate(summary.get("merge_steps") or []):
        lam = lambdas[i] if i < len(lambdas) else None
        label = f"run {i + 1} ends" if sequential or lam is None else f"merge {i + 1} · λ {lam:.2f}"
        out.append({"step": int(step), "label": label})
    return out


def chart_points(points: list[dict], markers: list[dict]) -> list[dict]:
    """Loss points with a `merge` value (the loss there) at every merge step, drawn as dots."""
    at = {m["step"] for m in markers}
    return [p | {"merge": p.get("loss")} if p["step"] in at else p for p in points]


# ---- following a campaign ---------------------------------------------------------------------

def _losses(values: list) -> str:
    return " · ".join(fmt_loss(x) for x in values)


_LOG_TEXT = {
    "campaign_run_started": lambda e: (f"run {e.get('run_index')}/{e.get('num_runs')} started · "
                                       f"{e.get('train_examples')} examples"
                                       + (f" + {e['replay_examples']} replayed" if e.get("replay_examples") else "")),
    "merge": lambda e: (f"merged after run {e.get('run_index')} · λ {e['lam']:.3f}" if e.get("lam") is not None
                        else f"run {e.get('run_index')} kept as it is ({e.get('mode')})"),
    "forgetting": lambda e: (f"validation loss per chunk after run {e.get('run_index')}: "
                             f"{_losses(e.get('losses') or [])}"
                             + (f" · avg forgetting {e['avg_forgetting']:+.4f}"
                                if e.get("avg_forgetting") is not None else "")),
}


class CampaignTail(RunTail):
    """A RunTail that also logs the campaign's own events and adds the campaign's figures
    (timeline, heat-map, merge markers) from the run's summary to the view."""

    def feed(self, rows: list[tuple[int, dict]]) -> bool:
        for row in rows:
            super().feed([row])
            text = _LOG_TEXT.get(row[1].get("type"))
            if text is not None:
                self.log.append({"time": fmt_clock(row[1].get("ts")), "kind": row[1]["type"],
                                 "text": text(row[1])})
        return bool(rows)

    def view(self, run: dict) -> dict:
        summary, n, _steps = _campaign(run)
        settings = (run.get("config") or {}).get("campaign") or {}
        matrix = summary.get("forgetting") or []
        figure, note = forgetting_figure(summary.get("avg_forgetting"))
        markers = merge_markers(summary)
        base = super().view(run)
        done = sum(1 for state in summary.get("timeline") or [] if state == "done")
        return base | {
            "points": chart_points(base["points"], markers),
            "markers": markers,
            "timeline": timeline_rows(run),
            "heat": heatmap_cells(matrix),
            "heat_columns": str(len(matrix[0]) + 1 if matrix else 1),
            "avg_forgetting": figure,
            "forgetting_note": note,
            "merge_mode": summary.get("merge_mode") or settings.get("merge_mode", ""),
            "runs_done": f"{done} of {n} runs done" if n else "",
        }


EMPTY_CAMPAIGN_VIEW: dict = EMPTY_RUN_VIEW | {
    "markers": [], "timeline": [], "heat": [], "heat_columns": "1", "avg_forgetting": DASH,
    "forgetting_note": "", "merge_mode": "", "runs_done": ""}


# ---- picking and comparing campaigns --------------------------------------------------------------

def campaign_option(run: dict) -> dict[str, str]:
    """{value, label, ...} of a campaign for the pickers, from `Run.to_dict()`."""
    settings = (run.get("config") or {}).get("campaign") or {}
    mode = (run.get("summary") or {}).get("merge_mode") or settings.get("merge_mode", "")
    name = run.get("name") or run["id"][:8]
    return {"value": run["id"], "label": f"{name} · {mode} · {run['status']} · {short_name(run.get('dataset'))}",
            "mode": mode, "dataset": run.get("dataset") or "", "status": run["status"]}


def default_pair(finished: list[dict[str, str]]) -> tuple[str, str]:
    """Two finished campaigns to compare (newest first in `finished`): the newest, and the
    newest other one on the same data with the other merge mode, else the next newest."""
    if len(finished) < 2:
        return (finished[0]["value"] if finished else ""), ""
    first = finished[0]
    rest = finished[1:]
    rival = [c for c in rest if c["dataset"] == first["dataset"] and c["mode"] != first["mode"]]
    return first["value"], (rival or rest)[0]["value"]


def comparison(a: dict, b: dict, steps_a: list[dict], steps_b: list[dict]) -> dict:
    """Two campaigns side by side from their `Run.to_dict()` and step events: average
    forgetting, final validation loss per chunk (the lower marked) and both loss curves."""
    sides = []
    for run in (a, b):
        summary, _n, _steps = _campaign(run)
        matrix = summary.get("forgetting") or []
        sides.append({"name": run.get("name") or run["id"][:8], "mode": summary.get("merge_mode", ""),
                      "avg": forgetting_figure(summary.get("avg_forgetting"))[0],
                      "final": matrix[-1] if matrix else []})
    rows = []
    for j in range(max(len(sides[0]["final"]), len(sides[1]["final"]))):
        x, y = (s["final"][j] if j < len(s["final"]) else None for s in sides)
        better = "" if x is None or y is None or x == y else ("a" if x < y else "b")
        rows.append({"chunk": f"chunk {j + 1}", "a": fmt_loss(x), "b": fmt_loss(y), "better": better})
    by_step: dict[int, dict] = {}
    for key, events in (("a", steps_a), ("b", steps_b)):
        for p in loss_points(events):
            if "loss" in p:
                by_step.setdefault(p["step"], {"step": p["step"]})[key] = p["loss"]
    return {"a": {k: v for k, v in sides[0].items() if k != "final"},
            "b": {k: v for k, v in sides[1].items() if k != "final"},
            "rows": rows, "points": thin([by_step[k] for k in sorted(by_step)])}


EMPTY_COMPARISON: dict = {"a": {}, "b": {}, "rows": [], "points": []}
