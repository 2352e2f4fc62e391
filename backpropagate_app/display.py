"""Turn engine data (runs, event dicts, dataset reports) into what the pages show.

Plain functions and one accumulator class, no Reflex: the States call these and copy the
results into their vars, and the unit tests check them without a browser.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.protocol import DatasetReport
from backpropagate_app import preference
from backpropagate_app.quality import learned_cells, samples_view

MAX_CHART_POINTS = 400
"""Charts get at most this many points; longer runs are thinned evenly (last point kept)."""
LOG_LINES = 100
RESUMABLE = ("interrupted", "cancelled", "failed")
STATUS_COLORS = {"queued": "gray", "running": "blue", "completed": "green", "failed": "red",
                 "cancelled": "orange", "interrupted": "amber"}

# ---- formatting ---------------------------------------------------------------------------

DASH = "—"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return DASH
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def fmt_loss(value: float | None) -> str:
    return DASH if value is None else f"{value:.4f}"


def fmt_lr(value: float | None) -> str:
    return DASH if value is None else f"{value:.2e}"


def fmt_rate(value: float | None) -> str:
    return DASH if value is None else f"{value:,.0f} tok/s"


def fmt_time(ts: float | None) -> str:
    return DASH if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def fmt_clock(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%H:%M:%S", time.localtime(ts))


def short_name(spec: str | None) -> str:
    """A model or dataset spec as a short label: paths become their last part, hub ids stay."""
    if not spec:
        return DASH
    looks_like_path = spec.startswith(("/", "~", ".")) or Path(spec).expanduser().exists()
    return Path(spec).name if looks_like_path else spec


def error_view(err: BackpropError) -> dict[str, str]:
    return {"code": err.code, "message": err.message, "hint": err.hint}


def unexpected_error(exc: Exception) -> dict[str, str]:
    """A coded error for anything a UI task did not expect (the UI's outer edge)."""
    return error_view(BackpropError("RUNTIME_UNEXPECTED", f"{type(exc).__name__}: {exc}"))


# ---- charts --------------------------------------------------------------------------------

def thin(points: list[dict], limit: int = MAX_CHART_POINTS) -> list[dict]:
    """At most `limit` points spread evenly over the list, always keeping the last one."""
    if len(points) <= limit:
        return list(points)
    stride = len(points) / (limit - 1)
    picked = [points[int(i * stride)] for i in range(limit - 1)]
    return picked + [points[-1]]


def loss_points(events: Iterable[dict]) -> list[dict]:
    """Chart points {step, loss, eval_loss} from step and eval events, in step order."""
    by_step: dict[int, dict] = {}
    for event in events:
        if event.get("type") == "step":
            point = by_step.setdefault(event["step"], {"step": event["step"]})
            point["loss"] = _round(event.get("loss"))
        elif event.get("type") == "eval":
            point = by_step.setdefault(event["step"], {"step": event["step"]})
            point["eval_loss"] = _round(event.get("loss"))
    return [by_step[k] for k in sorted(by_step)]


def sparkline(losses: list[float | None], width: int = 30) -> list[dict]:
    """A tiny chart's points {i, loss} from a run's step losses."""
    values = [v for v in losses if v is not None]
    return [{"i": i, "loss": v} for i, v in enumerate(
        p["v"] for p in thin([{"v": v} for v in values], width))]


def histogram_bars(histogram: list[dict]) -> list[dict]:
    """Bars {range, count} from the report's token-length histogram."""
    return [{"range": _bin_label(h["bin_start"], h["bin_end"]), "count": h["count"]} for h in histogram]


def _bin_label(start: int, end: int) -> str:
    """Label of a [start, end) bin of whole token counts."""
    return str(start) if end - start <= 1 else f"{start}–{end - 1}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 5)


# ---- hardware -----------------------------------------------------------------------------

def hardware_view(sample: dict | None) -> list[dict]:
    """Rows {label, value, pct} for the hardware panel; pct is -1 where no bar applies."""
    if not sample:
        return []
    rows: list[dict] = []
    if sample.get("gpu_name") or sample.get("vram_total_mb"):
        rows.append(_row("GPU", sample.get("gpu_name") or sample.get("device", "GPU")))
        if sample.get("gpu_util_pct") is not None:
            rows.append(_row("Utilisation", f"{sample['gpu_util_pct']:.0f}%", sample["gpu_util_pct"]))
        if sample.get("vram_total_mb"):
            rows.append(_mem_row("VRAM", sample.get("vram_used_mb"), sample["vram_total_mb"]))
        if sample.get("gpu_temp_c") is not None:
            rows.append(_row("Temperature", f"{sample['gpu_temp_c']:.0f} °C"))
        if sample.get("power_w") is not None:
            rows.append(_row("Power", f"{sample['power_w']:.0f} W"))
    if sample.get("cpu_pct") is not None:
        rows.append(_row("CPU", f"{sample['cpu_pct']:.0f}%", sample["cpu_pct"]))
    if sample.get("ram_total_mb"):
        rows.append(_mem_row("RAM", sample.get("ram_used_mb"), sample["ram_total_mb"]))
    return rows


def _row(label: str, value: str, pct: float = -1) -> dict:
    return {"label": label, "value": value, "pct": round(float(pct), 1)}


def _mem_row(label: str, used_mb: float | None, total_mb: float) -> dict:
    used = used_mb or 0.0
    return _row(label, f"{used / 1024:.1f} / {total_mb / 1024:.1f} GB", 100 * used / total_mb)


# ---- event log ----------------------------------------------------------------------------

def log_line(event: dict) -> dict | None:
    """One line {time, kind, text} for the event log; None for events the log leaves out."""
    kind = event.get("type", "")
    text = _LOG_TEXT.get(kind, lambda e: None)(event)
    if text is None:
        return None
    return {"time": fmt_clock(event.get("ts")), "kind": kind, "text": text}


def _step_text(e: dict) -> str | None:
    step, total = e.get("step", 0), e.get("total") or 0
    every = max(1, min(total // 20, 10))
    if step != 1 and step % every and step != total:
        return None  # the chart shows every step; the log samples them
    pairs = f" · reward accuracy {e['reward_accuracy']:.0%}" if e.get("reward_accuracy") is not None else ""
    return f"step {step}/{total} · loss {fmt_loss(e.get('loss'))}{pairs} · {fmt_rate(e.get('tokens_per_s'))}"


def _eval_text(e: dict) -> str:
    pairs = (f" · held-out reward accuracy {e['reward_accuracy']:.0%}"
             if e.get("reward_accuracy") is not None else "")
    return f"eval at step {e.get('step')} · {e.get('split', 'validation')} loss {fmt_loss(e.get('loss'))}{pairs}"


_LOG_TEXT: dict[str, Any] = {
    "run_started": lambda e: (f"started · {e.get('total_steps', 0)} steps"
                              + (f", resumed from step {e['resumed_from_step']}"
                                 if e.get("resumed_from_step") else "")),
    "step": _step_text,
    "eval": _eval_text,
    "checkpoint": lambda e: f"checkpoint at step {e.get('step')} → {e.get('path')}",
    "log": lambda e: f"{e.get('level', 'INFO')}: {e.get('message', '')}",
    "finished": lambda e: (f"exported {e['artifacts']['export']}" if "export" in (e.get("artifacts") or {})
                           else f"finished · final loss {fmt_loss(e.get('final_loss'))} after {e.get('steps')} steps"),
    "export_progress": lambda e: " · ".join(filter(None, (e.get("stage"), e.get("message")))),
    "failed": lambda e: f"failed [{e.get('code')}] {e.get('message', '')}",
    "cancelled": lambda e: f"stopped at step {e.get('step')}"
                           + (f" · checkpoint {e['checkpoint']}" if e.get("checkpoint") else ""),
}


# ---- following a run ----------------------------------------------------------------------

class RunTail:
    """Folds a run's events, as read from the store, into the live view of that run.

    The background task keeps one per followed run outside the State, feeds it the rows
    `RunStore.events(run_id, after_id)` returns, and copies `view()` into the State only
    when something changed.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.after_id = 0
        self.points: dict[int, dict] = {}
        self.last_step: dict | None = None
        self.last_eval: dict | None = None
        self.hardware: dict | None = None
        self.finished: dict | None = None
        self.samples: dict | None = None
        self.reasons: dict = {}
        self.config: dict = {}
        self.log: deque[dict] = deque(maxlen=LOG_LINES)

    def feed(self, rows: list[tuple[int, dict]]) -> bool:
        """Fold new (row id, event) pairs; True when any arrived."""
        for row_id, event in rows:
            self.after_id = max(self.after_id, row_id)
            kind = event.get("type")
            if kind == "step":
                self.last_step = event
                point = self.points.setdefault(event["step"], {"step": event["step"]})
                point["loss"] = _round(event.get("loss"))
                point.update(preference.point_fields(event))
            elif kind == "eval":
                self.last_eval = event
                point = self.points.setdefault(event["step"], {"step": event["step"]})
                point["eval_loss"] = _round(event.get("loss"))
                point.update(preference.point_fields(event))
                if event.get("answer_score") is not None:
                    point["answer_score"] = round(100 * event["answer_score"], 1)
            elif kind == "samples":
                self.samples = event
            elif kind == "hardware":
                self.hardware = event
            elif kind == "run_started":
                self.config, self.reasons = event.get("config") or {}, event.get("reasons") or {}
                if event.get("resumed_from_step"):
                    # The resumed worker replays from the checkpoint: later steps are redone.
                    self.points = {k: v for k, v in self.points.items()
                                   if k <= event["resumed_from_step"]}
            elif kind == "finished":
                self.finished = event
            line = log_line(event)
            if line is not None:
                self.log.append(line)
        return bool(rows)

    def view(self, run: dict) -> dict:
        """The run panel: the run row (`Run.to_dict()`) merged with what the events said."""
        step_event = self.last_step or {}
        step = run.get("step") or step_event.get("step") or 0
        total = run.get("total_steps") or step_event.get("total") or 0
        status = run.get("status", "")
        tokens = step_event.get("tokens_per_s")
        if self.finished and self.finished.get("tokens_per_s"):
            tokens = self.finished["tokens_per_s"]
        return {
            "run_id": run.get("id", self.run_id),
            "name": run.get("name") or run.get("id", self.run_id)[:8],
            "status": status,
            "active": status in ("queued", "running"),
            "model": run.get("model") or "",
            "dataset": run.get("dataset") or "",
            "step": step,
            "total": total,
            "progress": round(100 * step / total, 1) if total else 0.0,
            "loss": fmt_loss(run.get("last_loss") if run.get("last_loss") is not None
                             else step_event.get("loss")),
            "final_loss": fmt_loss(run.get("final_loss")),
            "tokens_per_s": fmt_rate(tokens),
            "lr": fmt_lr(step_event.get("lr")),
            "eta": fmt_duration(step_event.get("eta_s")) if status == "running" else DASH,
            "elapsed": fmt_duration(run.get("duration_s")),
            # Copies: an eval event later fills in a point, and the previous view must not
            # change with it, or the State would never see the difference.
            "points": thin([dict(self.points[k]) for k in sorted(self.points)]),
            # Apart from the loss points, so the score chart redraws only at evaluations.
            "score_points": [{"step": k, "answer_score": p["answer_score"]}
                             for k, p in sorted(self.points.items()) if "answer_score" in p],
            "hardware": hardware_view(self.hardware),
            "log": list(reversed(self.log)),
            "artifacts": [{"name": k, "path": v} for k, v in sorted((run.get("artifacts") or {}).items())],
            **samples_view(self.samples, self.finished),
            "error": ({"code": run["error_code"], "message": run.get("error_message") or "",
                       "hint": run.get("error_hint") or ""} if run.get("error_code")
                      and status in ("failed", "interrupted") else {}),
            "resumable": status in RESUMABLE,
            **preference.live_view(preference.method_of(run, {"config": self.config}, self.finished),
                                   self.last_step, self.last_eval, self.finished),
        }


EMPTY_RUN_VIEW: dict = RunTail("").view({"id": "", "status": ""}) | {"name": ""}


# ---- runs table -------------------------------------------------------------------------

def run_row(run: dict, spark: list[dict], facts: dict | None = None) -> dict:
    """One row of the Runs table from `Run.to_dict()`, the run's sparkline points and what
    its events said (`preference.fold`): a preference run's headline is its held-out reward
    accuracy, an SFT run's its held-out answer score."""
    facts = facts or {}
    method = preference.method_of(run, facts.get("started"), facts.get("finished"))
    learned = (preference.learned_cells(facts.get("reward_accuracy")) if method in preference.PREFERENCE_METHODS
               else learned_cells(run.get("summary") or {}))
    return {
        "id": run["id"],
        "short_id": run["id"][:8],
        "name": run.get("name") or run["id"][:8],
        "kind": run.get("kind") or "train",
        "status": run["status"],
        "model": short_name(run.get("model")),
        "dataset": short_name(run.get("dataset")),
        "started": fmt_time(run.get("started_at") or run.get("created_at")),
        "duration": fmt_duration(run.get("duration_s")),
        "loss": fmt_loss(run.get("final_loss") if run.get("final_loss") is not None
                         else run.get("last_loss")),
        "progress": f"{run.get('step') or 0}/{run.get('total_steps') or 0}",
        "spark": spark,
        "method": preference.LABELS.get(method, "auto"),
        **learned,
    }



def config_rows(config: dict, reasons: dict) -> list[dict]:
    """Flat {key, value, reason} rows of a run config (nested lora/training sections)."""
    rows = []
    for key, value in _flatten(config):
        leaf = key.rsplit(".", 1)[-1]
        rows.append({"key": key, "value": _text(value), "reason": reasons.get(leaf, "")})
    return rows


def _flatten(config: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += _flatten(value, name + ".")
        else:
            out.append((name, value))
    return out


def _text(value: Any) -> str:
    if value is None:
        return "auto"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def event_rows(rows: list[tuple[int, dict]]) -> list[dict]:
    """{time, kind, text} rows for the run detail's event table (every event kind)."""
    out = []
    for _row_id, event in rows:
        line = log_line(event)
        if line is None and event.get("type") == "step":
            line = {"time": fmt_clock(event.get("ts")), "kind": "step",
                    "text": f"step {event.get('step')}/{event.get('total')} · loss {fmt_loss(event.get('loss'))}"}
        elif line is None and event.get("type") == "hardware":
            parts = [f"{r['label']} {r['value']}" for r in hardware_view(event)]
            line = {"time": fmt_clock(event.get("ts")), "kind": "hardware", "text": " · ".join(parts)}
        if line is not None:
            out.append(line)
    return out


# ---- dataset report -------------------------------------------------------------------------

@dataclass
class ReportSummary:
    """The figures of the Dataset page's summary card."""

    format: str = ""
    """Empty until a report arrived."""
    examples: int = 0
    duplicates: int = 0
    empty: int = 0
    over_long: int = 0
    tokens: str = ""
    """Token-length percentiles as one line."""
    total_tokens: str = DASH
    """With thousands separators."""
    pairs: int = 0
    """Answer pairs of a preference dataset; 0 for other formats."""
    chosen_length: str = ""
    rejected_length: str = ""
    chosen_longer: str = ""
    """Share of pairs whose chosen answer is the longer one."""
    length_note: str = ""
    """A warning when that share is lopsided."""


def report_view(report: DatasetReport) -> dict:
    """The summary, chart bars, problems and chat previews of a dataset report."""
    pct = report.token_percentiles or {}
    summary = ReportSummary(
        format=report.format, examples=report.examples, duplicates=report.duplicates, empty=report.empty,
        over_long=report.over_long,
        tokens=(f"p50 {pct.get('p50')} · p95 {pct.get('p95')} · max {pct.get('max')}"
                if pct else "no tokenizer: token counts skipped"),
        total_tokens=f"{report.total_tokens:,}" if report.total_tokens else DASH,
        **preference.pair_view(report.pairs))
    return {
        "summary": summary,
        "histogram": histogram_bars([b.model_dump() for b in report.histogram]),
        "problems": [{"line": DASH if p.line is None else str(p.line), "code": p.code, "message": p.message}
                     for p in report.problems[:200]],
        "problem_count": len(report.problems),
        "preview": [[{"role": m.role, "content": m.content[:2000]} for m in messages]
                    for messages in report.preview[:5]],
    }
