"""Logging: one `backpropagate` logger, redacted, with the run id on every record.

Settings (env or `.env`):
- `BACKPROPAGATE_LOG_LEVEL`: DEBUG, INFO, WARNING or ERROR for the console and the mirror.
- `BACKPROPAGATE_LOG_JSON`: `auto` (JSON lines when stderr is not a terminal, readable
  lines when it is), `true` or `false`.
- `BACKPROPAGATE_LOG_FILE`: also write JSON lines to this file, rotated at 10 MB.

While a run executes, `bind_run` puts its id on every record made in that context (and,
as a fallback, on records from threads that never saw the context, such as the hardware
sampler) and writes `<run_dir>/run.log`. That file always records from DEBUG up, plus
the warnings of transformers, peft and accelerate, so a post-mortem has the whole story
whatever the console showed. Every handler redacts secrets before anything is written.

    logger = logs.get_logger(__name__)
    with logs.bind_run(run_id, run_dir / logs.RUN_LOG):
        logger.info("loading model")      # carries run_id, lands in run.log
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.handlers
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TextIO

from backpropagate_core.runs import events as ev
from backpropagate_core.redact import redact, redact_obj

ROOT = "backpropagate"
RUN_LOG = "run.log"
_MIRROR_BYTES = 10 * 2**20
_MIRROR_BACKUPS = 3

_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("backpropagate_run_id",
                                                                    default=None)
# Runs bound in this process, innermost last; the fallback for threads without the context.
_process_runs: list[str] = []
_state: dict[str, Any] = {"configured": False, "echo_events": True}
# Their warnings (at their own levels) also land in run.log, next to ours.
_LIBRARY_LOGGERS = ("transformers", "peft", "accelerate")


def get_logger(name: str = ROOT) -> logging.Logger:
    """A logger under the `backpropagate` tree, so our handlers and filters apply."""
    if name != ROOT and not name.startswith(ROOT + "."):
        name = f"{ROOT}.{name.removeprefix('backpropagate_core.')}"
    return logging.getLogger(name)


def current_run_id() -> str | None:
    """The run this code works for: the bound context first, else the process's latest run."""
    return _run_id.get() or (_process_runs[-1] if _process_runs else None)


# ---- filters and formatters ---------------------------------------------------------------

class RunIdFilter(logging.Filter):
    """Stamps `record.run_id` (None outside a run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "run_id", None) is None:
            record.run_id = current_run_id()
        return True


class RedactFilter(logging.Filter):
    """Masks secrets in the message, its arguments, extra fields and any traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_redacted", False):
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # bad %-args: keep the template rather than lose the line
            message = f"{record.msg} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if getattr(record, "fields", None):
            record.fields = redact_obj(record.fields)
        record._redacted = True
        return True


class _OnlyRun(logging.Filter):
    """Lets through only the records of one run (several runs may share a process)."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "run_id", None) == self.run_id


class _NoEventEcho(logging.Filter):
    """Drops records made from events when another sink (the CLI's progress bar) shows them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _state["echo_events"] or getattr(record, "event", None) is None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, run_id, message, then event fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name,
            "run_id": getattr(record, "run_id", None), "message": record.getMessage()}
        if getattr(record, "event", None):
            out["event"] = record.event
        if getattr(record, "fields", None):
            out["fields"] = record.fields
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """`2026-11-28 14:05:09 INFO  run_id=<id> message`; `short` keeps 8 characters of the id."""

    def __init__(self, short_run_id: bool = False) -> None:
        super().__init__()
        self.short = short_run_id

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        run_id = getattr(record, "run_id", None)
        run = f"run_id={run_id[:8] if self.short else run_id} " if run_id else ""
        line = f"{when} {record.levelname:<7} {run}{record.getMessage()}"
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record arrives (tools and tests swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _decorate(handler: logging.Handler, level: int | str) -> logging.Handler:
    handler.setLevel(level)
    handler.addFilter(RunIdFilter())
    handler.addFilter(RedactFilter())
    handler._backpropagate = True  # type: ignore[attr-defined]
    return handler


# ---- setup ---------------------------------------------------------------------------------

def wants_json(setting: bool | str, stream: TextIO) -> bool:
    """`auto` means JSON for machines (pipes, files, the worker) and text for a person."""
    if isinstance(setting, bool):
        return setting
    if "ipykernel" in sys.modules:  # a notebook: a person reads it, though it is not a TTY
        return False
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def setup_logging(level: str | None = None, json_mode: bool | str | None = None,
                  log_file: str | Path | None = None, *, stream: TextIO | None = None,
                  echo_events: bool = True) -> logging.Logger:
    """(Re)configure the `backpropagate` logger from settings; explicit arguments win.

    Safe to call more than once: the handlers it added before are replaced, and per-run
    files opened by `bind_run` stay. `echo_events=False` keeps records made from events
    off the console (the CLI shows those with its own progress bar); files still get them.
    """
    from backpropagate_core.errors import BackpropError

    try:
        from backpropagate_core.config import load_settings
        settings = load_settings()
        level = level or settings.log_level
        json_mode = settings.log_json if json_mode is None else json_mode
        log_file = settings.log_file if log_file is None else log_file
    except BackpropError:
        # Invalid settings are reported by the command that reads them; log with defaults.
        level, json_mode = level or "INFO", "auto" if json_mode is None else json_mode
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if getattr(h, "_backpropagate", False)
                    and not getattr(h, "_run_file", False)]:
        logger.removeHandler(handler)
        handler.close()

    console = _decorate(logging.StreamHandler(stream) if stream else _StderrHandler(), level)
    console.setFormatter(JsonFormatter() if wants_json(json_mode, stream or sys.stderr)
                         else TextFormatter(short_run_id=True))
    console.addFilter(_NoEventEcho())
    logger.addHandler(console)
    if log_file:
        path = Path(log_file).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        mirror = logging.handlers.RotatingFileHandler(path, maxBytes=_MIRROR_BYTES,
                                                      backupCount=_MIRROR_BACKUPS, encoding="utf-8")
        logger.addHandler(_decorate(mirror, level))
        mirror.setFormatter(JsonFormatter())
    # The logger passes DEBUG so run.log is complete; each handler applies its own level.
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    _state.update(configured=True, echo_events=echo_events)
    return logger


def ensure_logging() -> None:
    """Configure from settings unless something already did (the Python API path)."""
    if not _state["configured"]:
        setup_logging()


@contextmanager
def bind_run(run_id: str, log_path: Path | None = None) -> Iterator[logging.Logger]:
    """Put `run_id` on every record in this context and, given a path, mirror them there."""
    ensure_logging()
    logger = logging.getLogger(ROOT)
    token = _run_id.set(run_id)
    _process_runs.append(run_id)
    handler = None
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handler = _decorate(logging.FileHandler(log_path, encoding="utf-8"), logging.DEBUG)
        handler._run_file = True  # type: ignore[attr-defined]
        handler.addFilter(_OnlyRun(run_id))
        handler.setFormatter(TextFormatter())
        for name in (ROOT, *_LIBRARY_LOGGERS):
            logging.getLogger(name).addHandler(handler)
    try:
        yield logger
    finally:
        if handler is not None:
            for name in (ROOT, *_LIBRARY_LOGGERS):
                logging.getLogger(name).removeHandler(handler)
            handler.close()
        _process_runs.remove(run_id)
        _run_id.reset(token)


# ---- events as log records -------------------------------------------------------------------

_events_log = logging.getLogger(ROOT + ".events")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _describe(event: ev.Event) -> tuple[int, str]:
    if isinstance(event, ev.LogLine):
        return logging.getLevelNamesMapping().get(event.level.upper(), logging.INFO), event.message
    if isinstance(event, ev.Step):
        return logging.INFO, (f"step {event.step}/{event.total} loss={event.loss:.4f} "
                              f"lr={event.lr:.3g} tokens/s={_fmt(event.tokens_per_s, '.0f')}")
    if isinstance(event, ev.Eval):
        score = "" if event.answer_score is None else f" answer_score={event.answer_score:.2f}"
        return logging.INFO, (f"eval step {event.step} {event.split} loss={event.loss:.4f}{score}"
                               + (" (best)" if event.best else ""))
    if isinstance(event, ev.Samples):
        return logging.DEBUG, f"samples at step {event.step}: {len(event.samples)} held-out answers"
    if isinstance(event, ev.RunStarted):
        return logging.INFO, (f"training started: {event.total_steps} steps, resumed from step "
                              f"{event.resumed_from_step}, device {event.config.get('device', '?')}")
    if isinstance(event, ev.CheckpointSaved):
        return logging.INFO, f"checkpoint saved at step {event.step}: {event.path}"
    if isinstance(event, ev.Finished):
        return logging.INFO, (f"finished: {event.steps} steps, final loss "
                              f"{_fmt(event.final_loss, '.4f')}, artifacts {event.artifacts}")
    if isinstance(event, ev.Failed):
        return logging.ERROR, f"failed [{event.code}] {event.message}"
    if isinstance(event, ev.Cancelled):
        return logging.INFO, f"stopped at step {event.step}; checkpoint {event.checkpoint or '-'}"
    if isinstance(event, ev.HardwareSample):
        gpu = (f" {event.gpu_name} {_fmt(event.gpu_temp_c, '.0f')}C {_fmt(event.gpu_util_pct, '.0f')}%"
               f" vram {_fmt(event.vram_used_mb, '.0f')}/{_fmt(event.vram_total_mb, '.0f')} MB"
               if event.gpu_name else "")
        return logging.DEBUG, (f"hardware {event.device}:{gpu} cpu {_fmt(event.cpu_pct, '.0f')}%"
                               f" ram {_fmt(event.ram_used_mb, '.0f')}/{_fmt(event.ram_total_mb, '.0f')} MB")
    return logging.DEBUG, event.type


def log_event(event: ev.Event) -> None:
    """An event sink that turns events into log records (hardware samples at DEBUG)."""
    level, message = _describe(event)
    if not _events_log.isEnabledFor(level):
        return
    fields = {} if isinstance(event, ev.LogLine) else {
        k: v for k, v in event.to_dict().items() if k not in ("type", "run_id", "ts")}
    _events_log.log(level, "%s", message,
                    extra={"run_id": event.run_id, "event": event.type, "fields": fields})
