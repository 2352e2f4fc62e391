"""What the Export page shows: runs to export, options with their sizes, the progress and
result of an export run (a run of kind "export" whose parent is the training run), chat
answers.

Plain functions and one accumulator class, no Reflex, so the unit tests check them
without a browser. Everything reads the run store and files; nothing loads a model.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from backpropagate_app.display import DASH, fmt_clock, fmt_duration, fmt_time, short_name
from backpropagate_core.model import presets
from backpropagate_core.errors import BackpropError
from backpropagate_core.export import QUANTIZATIONS, estimated_size_bytes
from backpropagate_core.export.jobs import KIND, checkpoints, final_adapter
from backpropagate_core.runs.layout import RunDir

FINAL = "final"
"""Source picker value for a run's final adapter (the others are checkpoint names)."""
NO_GGUF = "none"
RECOMMENDED = "q4_k_m"
FORMATS: list[tuple[str, str, str]] = [
    ("gguf", "GGUF", "One file for llama.cpp, Ollama and LM Studio; loaded in llama.cpp and "
                     "compared with the trained model before it is kept."),
    ("merged", "Merged model", "The adapter merged into the base weights: safetensors, tokenizer "
                               "and chat template; loads anywhere transformers runs."),
    ("adapter", "LoRA adapter", "Only the trained LoRA weights (peft safetensors): a few MB, "
                                "loaded on top of the base model."),
]
DTYPES: list[tuple[str, str, float]] = [
    ("auto", "the dtype the base model was published in", 0.0),
    ("f32", "32-bit floats: exactly the merged weights", 4.0),
    ("bf16", "bfloat16: half the size, the usual training dtype", 2.0),
    ("f16", "16-bit floats: half the size, for older GPUs", 2.0),
]
STAGES: dict[str, str] = {"load": "Load", "reference": "Reference logits", "merge": "Merge",
                          "write": "Write", "quantize": "Quantize", "verify": "Verify",
                          "ollama": "Register with Ollama"}
MESSAGES_KEPT = 6


def fmt_bytes(n: int | float | None) -> str:
    if n is None or n < 0:
        return DASH
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


# ---- what can be exported ---------------------------------------------------------------

def param_count(model: str | None) -> int | None:
    """Parameters of a base model from its config or preset table, without loading it."""
    if not model:
        return None
    try:
        return presets.shape_of(model).params
    except (BackpropError, KeyError, TypeError, ValueError, OSError):
        return None


def exportable_runs(store) -> list[dict[str, str]]:
    """Runs with a final adapter, newest first, then runs with only checkpoints (stopped
    early), as {value, label}."""
    finished, partial = [], []
    for run in store.list(limit=200, top_level=True):
        has_final = (final_adapter(run) / "adapter_config.json").is_file()
        if run.active or not (has_final or checkpoints(run.run_dir)):
            continue
        label = f"{run.name or run.id[:8]} · {run.status} · {short_name(run.model)}"
        (finished if has_final else partial).append({"value": run.id, "label": label})
    return finished + partial


def source_options(run) -> list[dict[str, str]]:
    """The final adapter (if the run has one), then checkpoints, newest first."""
    options = [{"value": FINAL, "label": "Final adapter"}] \
        if (final_adapter(run) / "adapter_config.json").is_file() else []
    for name in reversed(checkpoints(run.run_dir)):
        options.append({"value": name, "label": f"Checkpoint at step {name.split('-')[1]}"})
    return options


def folder_bytes(folder: Path) -> int | None:
    files = list(folder.glob("*.safetensors")) if folder.is_dir() else []
    return sum(f.stat().st_size for f in files) if files else None


def format_options(n_params: int | None, adapter_bytes: int | None) -> list[dict[str, str]]:
    sizes = {"adapter": fmt_bytes(adapter_bytes),
             "merged": f"≈ {fmt_bytes(n_params * 2)} (bf16)" if n_params else DASH,
             "gguf": f"≈ {fmt_bytes(estimated_size_bytes(n_params, RECOMMENDED))} ({RECOMMENDED})"
             if n_params else DASH}
    return [{"value": key, "label": label, "note": note, "size": sizes[key]} for key, label, note in FORMATS]


def quant_options(n_params: int | None) -> list[dict[str, str]]:
    """Every quantization the engine offers, with its one-line note and expected size."""
    return [{"value": name, "label": name, "note": note,
             "size": f"≈ {fmt_bytes(estimated_size_bytes(n_params, name))}" if n_params else DASH,
             "recommended": "yes" if name == RECOMMENDED else ""}
            for name, (_ftype, note, _bits) in QUANTIZATIONS.items()]


def dtype_options(n_params: int | None) -> list[dict[str, str]]:
    return [{"value": name, "label": name, "note": note,
             "size": f"≈ {fmt_bytes(n_params * width)}" if n_params and width else DASH}
            for name, note, width in DTYPES]


def export_rows(summary: dict) -> list[dict[str, str]]:
    """The run's recorded exports, newest first: {key, format, size, verified, path, exists}."""
    entries = sorted((summary.get("exports") or {}).items(), key=lambda kv: -(kv[1].get("created_at") or 0))
    rows = []
    for key, e in entries:
        v = e.get("verification") or {}
        rows.append({"key": key, "format": e.get("format") or "", "size": fmt_bytes(e.get("size_bytes")),
                     "verified": "verified" if v.get("passed") else "not verified",
                     "path": e.get("path") or "", "exists": "yes" if Path(e.get("path") or "").exists() else ""})
    return rows


def gguf_options(summary: dict) -> list[dict[str, str]]:
    """The run's GGUF exports that are still on disk, newest first, for the chat panel."""
    return [{"value": r["key"], "label": f"{r['key']} ({r['size']})"}
            for r in export_rows(summary) if r["format"] == "gguf" and r["exists"]]


def gguf_path(summary: dict, key: str) -> str | None:
    """The file of export `key`; None for "none" or an unknown key (never a path from the browser)."""
    entry = (summary.get("exports") or {}).get(key) or {}
    return entry.get("path") if entry.get("format") == "gguf" else None


def run_info(store, run_id: str) -> dict[str, Any]:
    """Everything the page shows about one run besides its newest export run."""
    run = store.get(run_id)
    n_params = param_count(run.config.get("model") or run.model)
    return {"run_id": run.id, "name": run.name or run.id[:8], "model": short_name(run.model),
            "params": f"{n_params / 1e6:,.1f}M parameters" if n_params else "size unknown",
            "sources": source_options(run),
            "format_options": format_options(n_params, folder_bytes(final_adapter(run))),
            "quant_options": quant_options(n_params), "dtype_options": dtype_options(n_params),
            "files": file_rows(run), "ggufs": gguf_options(run.summary)}


def file_rows(run) -> list[dict[str, str]]:
    """The run's final adapter, then its exports, as the "Files of this run" table shows them."""
    adapter = final_adapter(run)
    rows = [{"key": "adapter", "format": "adapter", "size": fmt_bytes(folder_bytes(adapter)), "verified": "",
             "path": str(adapter), "exists": "yes"}] if (adapter / "adapter_config.json").is_file() else []
    return rows + export_rows(run.summary)


def default_ollama_name(run_name: str, quantization: str | None) -> str:
    """`<run name>:<quantization>` in Ollama's alphabet, as the CLI names it."""
    import re

    base = re.sub(r"[^A-Za-z0-9._-]+", "-", run_name).strip("-.").lower() or "model"
    return f"{base}:{quantization}" if quantization else base


# ---- one export run ------------------------------------------------------------------------

def expected_stages(fmt: str, quantization: str | None, ollama: bool) -> list[str]:
    if fmt == "adapter":
        return ["load"]
    stages = ["load", "reference", "merge", "write"]
    if fmt == "gguf" and quantization not in ("f32", "f16", "bf16"):
        stages.append("quantize")
    stages.append("verify")
    return stages + (["ollama"] if ollama else [])


class ExportFollow:
    """The view of a training run's newest export run, as the store records it.

    The page's background task keeps one per shown training run and calls `read` each
    poll: the export run's row gives its status, error and result (summary); its
    export_progress events, read incrementally, give the stages and the latest messages.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._follow("")

    def _follow(self, export_id: str) -> None:
        self.export_id, self.after_id = export_id, 0
        self.stage: dict | None = None
        self.seen: list[str] = []
        self.messages: deque[dict] = deque(maxlen=MESSAGES_KEPT)

    def read(self, store) -> dict[str, Any]:
        newest = store.list(kind=KIND, parent=self.run_id, limit=1)
        if not newest:
            return EMPTY_JOB
        export = newest[0]
        if export.id != self.export_id:
            self._follow(export.id)
        self.feed(store.events(export.id, after_id=self.after_id, types=("export_progress",)))
        return self.view(export)

    def feed(self, rows: list[tuple[int, dict]]) -> None:
        for row_id, event in rows:
            self.after_id = max(self.after_id, row_id)
            self.stage = event
            if event.get("stage") not in self.seen:
                self.seen.append(event.get("stage"))
            if event.get("message") and event.get("stage") != "done":
                self.messages.append({"time": fmt_clock(event.get("ts")), "stage": event.get("stage", ""),
                                      "text": event["message"]})

    def view(self, export) -> dict[str, Any]:
        """The export panel for the export run `export` (a store Run)."""
        c = export.config
        status = "running" if export.active else "done" if export.status == "completed" else "failed"
        error = {}
        if status == "failed":
            error = {"code": export.error_code or "", "message": export.error_message or export.status,
                     "hint": export.error_hint or ""}
            if export.status == "interrupted" and not error["hint"]:
                error["hint"] = (f"It was killed or ran out of memory; its output is in "
                                 f"{RunDir(export.run_dir).worker_log}. Start the export again.")
        stages = self._stages(c, status)
        return {
            "job": export.id, "status": status,
            "title": export_title(c),
            "started": fmt_clock(export.started_at or export.created_at),
            "stages": stages,
            "progress": _percent(stages, self.stage),
            "messages": list(reversed(self.messages)),
            "error": error,
            **(done_view(export.summary, c) if status == "done" else _NO_RESULT),
        }

    def _stages(self, config: dict, job_status: str) -> list[dict[str, str]]:
        keys = expected_stages(config.get("format", ""), config.get("quantization"), bool(config.get("ollama_name")))
        keys += [k for k in self.seen if k in STAGES and k not in keys]
        current = (self.stage or {}).get("stage")
        reached = keys.index(current) if current in keys else -1
        if job_status == "done" or current == "done":
            reached = len(keys)
        rows = []
        for i, key in enumerate(keys):
            status = "done" if i < reached else "active" if i == reached else "pending"
            if status == "active" and job_status == "failed":
                status = "failed"
            rows.append({"key": key, "label": STAGES[key], "status": status})
        return rows


def export_title(config: dict) -> str:
    """"GGUF q4_k_m of the final adapter", from an export run's config."""
    return " ".join(filter(None, (_FORMAT_LABEL.get(config.get("format"), config.get("format")),
                                  config.get("quantization"), "of the", config.get("source_label") or "adapter")))


def export_run_rows(store, run_id: str) -> list[dict[str, str]]:
    """A training run's export runs, newest first, as its run page lists them."""
    return [{"id": e.id, "short_id": e.id[:8], "title": export_title(e.config), "status": e.status,
             "started": fmt_time(e.started_at or e.created_at), "path": e.artifacts.get("export", ""),
             "error": f"[{e.error_code}] {e.error_message}" if e.error_code else ""}
            for e in store.list(kind=KIND, parent=run_id)]


_FORMAT_LABEL = {"gguf": "GGUF", "merged": "Merged model", "adapter": "LoRA adapter"}
_NO_RESULT: dict[str, Any] = {"result": {}, "checks": [], "ollama": {}, "ollama_error": {}}
EMPTY_JOB: dict[str, Any] = {"job": "", "status": "", "title": "", "started": "", "stages": [], "progress": 0,
                             "messages": [], "error": {}, **_NO_RESULT}


def _percent(stages: list[dict[str, str]], event: dict | None) -> int:
    if not stages:
        return 0
    done = sum(1 for s in stages if s["status"] == "done")
    within = 0.0
    if event and event.get("total"):
        within = min(1.0, event.get("done", 0) / event["total"])
    return int(round(100 * min(1.0, (done + within) / len(stages))))


def done_view(summary: dict, config: dict) -> dict[str, Any]:
    """Result card, verification rows and the Ollama command of a finished export, from
    its run's summary (result, ollama, ollama_error) and config."""
    r = summary.get("result") or {}
    result = {"path": r.get("path", ""), "folder": r.get("folder") or "", "size": fmt_bytes(r.get("size_bytes")),
              "seconds": fmt_duration(r.get("seconds")), "format": r.get("format", ""),
              "quantization": r.get("quantization") or "",
              "verified": "verified" if (r.get("verification") or {}).get("passed") else "not verified"}
    checks = verification_rows(r.get("verification") or {}) + template_rows(r.get("ollama") or {})
    return {"result": result, "checks": checks,
            "ollama": ollama_view(summary, config), "ollama_error": summary.get("ollama_error") or {}}


def template_rows(template: dict) -> list[dict[str, str]]:
    """Whether Ollama's TEMPLATE gives the prompts training gave (checked at export)."""
    if template.get("faithful") is None:
        return []
    if template["faithful"]:
        return [{"label": "Ollama TEMPLATE", "status": "ok",
                 "value": "formats prompts exactly like training (no system, system, multi-turn)"}]
    return [{"label": "Ollama TEMPLATE", "status": "bad",
             "value": "Ollama will format prompts differently from training: " + (template.get("mismatch") or "")}]


def verification_rows(v: dict) -> list[dict[str, str]]:
    """{label, value, status} rows; status ok / bad / info (reported, not a pass condition)."""
    if "max_logit_diff" not in v:
        if "identical" in v:
            return [{"label": "Adapter files", "status": "ok" if v["identical"] else "bad",
                     "value": f"{len(v.get('files') or [])} file(s) identical to the run's adapter"
                     if v["identical"] else "differ from the run's adapter"}]
        return []

    def ok(good: bool) -> str:
        return "ok" if good else "bad"

    rows = [
        {"label": "Max logit difference", "status": ok(v["max_logit_diff"] <= v["bound"]),
         "value": f"{v['max_logit_diff']:.4g} (bound {v['bound']:.4g})"},
        {"label": "Top-1 agreement", "status": ok(v["top1_agreement"] >= v.get("min_top1_agreement", 0)),
         "value": f"{v['top1_agreement']:.1%} of {v.get('positions', '?')} positions "
                  f"(at least {v.get('min_top1_agreement', 0):.0%})"},
    ]
    if "tokenization_match" in v:
        rows.append({"label": "Tokenization", "status": ok(v["tokenization_match"]),
                     "value": f"matches on {v.get('tokenization_cases', '?')} texts" if v["tokenization_match"]
                     else "differs from the trained tokenizer"})
    if "greedy_match" in v:
        rows.append({"label": "Greedy continuation", "status": "ok" if v["greedy_match"] else "info",
                     "value": "same tokens as the trained model" if v["greedy_match"]
                     else "differs from the trained model (expected at low bit widths)"})
    if "kl_divergence" in v:
        rows.append({"label": "Mean KL divergence", "status": "info", "value": f"{v['kl_divergence']:.3g}"})
    return rows


def ollama_view(summary: dict, config: dict) -> dict[str, str]:
    """The command a person copies: `ollama run NAME` when registered, else how to create it."""
    r = summary.get("result") or {}
    if r.get("format") != "gguf":
        return {}
    registration = summary.get("ollama") or {}
    if registration:
        return {"registered": "yes", "name": registration["name"], "host": registration.get("host", ""),
                "command": registration["run_command"]}
    name = config.get("ollama_name") or default_ollama_name(_run_label(r), r.get("quantization"))
    return {"registered": "", "name": name, "host": "",
            "command": f"cd {r.get('folder', '.')} && ollama create {name} -f Modelfile && ollama run {name}"}


def _run_label(result: dict) -> str:
    """The run's name as the exporter put it in the file name (`<label>-<quant>.gguf`)."""
    stem, quant = Path(result.get("path", "model")).stem, result.get("quantization") or ""
    return stem[: -len(quant) - 1] if quant and stem.endswith("-" + quant) else stem


# ---- chat --------------------------------------------------------------------------------------

ENGINE_LABELS = {"base": "Base model (no adapter)", "transformers": "Fine-tuned model (transformers)",
                 "llama.cpp": "GGUF (llama.cpp)"}


def chat_view(out: dict, gguf_label: str = "", streaming: bool = False) -> tuple[list[dict[str, str]], str]:
    """(answer cards, verdict) from `worker.chat_once`'s result (or, `streaming`, from the
    answers so far)."""
    cards = []
    for engine, a in (out.get("answers") or {}).items():
        label = ENGINE_LABELS.get(engine, engine)
        if engine == "llama.cpp" and gguf_label:
            label = f"GGUF {gguf_label} (llama.cpp)"
        cards.append({"engine": engine, "label": label, "text": a.get("text") or "(empty answer)",
                      "meta": "answering…" if streaming else
                      f"{len(a.get('tokens') or [])} tokens · {a.get('seconds', 0):.1f} s"})
    verdict = {True: "identical answers", False: "the answers differ", None: ""}[out.get("identical")]
    return cards, verdict
