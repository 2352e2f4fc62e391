"""Ask the engine helper (`runs.service`) for plans, dataset reports and chat answers.

Import-light (pydantic, no torch): the UI server calls these from threads. The first call
starts the helper; later calls reuse it, so a plan or report for a model the helper has
seen answers in well under a second. A helper that died is started again and the request
sent once more (unless it died of a failed allocation under the UI's memory limit); an
error it replies with is raised here as the same coded BackpropError.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from backpropagate_core import memory_limit
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.protocol import (
    KINDS,
    RESPONSES,
    ChatAnswer,
    ChatRequest,
    DatasetReport,
    ErrorReply,
    Ping,
    Plan,
    PlanRequest,
    Pong,
    ReportRequest,
)

QUICK_TIMEOUT_S = 300.0
"""Plans and reports: a cold start loads torch and a tokenizer, and a big dataset is tokenized."""
CHAT_TIMEOUT_S = 600.0
"""Chat: the first question loads a whole model (and its GGUF)."""
SETTINGS_PREFIX = "BACKPROPAGATE_"
"""Settings variables travel with each request (they are read per call); a change in any
other variable (hub, CUDA, PYTHONPATH) or in the working folder starts a fresh helper."""
_IGNORED_ENV = ("PYTEST_CURRENT_TEST",)
"""Variables that change all the time and mean nothing to the engine."""
_LOG_TAIL = 800


class _HelperGone(Exception):
    """The helper closed its output (crashed, killed) before replying."""


class EngineClient:
    """One helper process and the pipe to it; thread-safe (requests take turns)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._replies: queue.Queue = queue.Queue()
        self._started_with: tuple = ()
        self._log: Path | None = None
        self._ids = itertools.count(1)

    @property
    def pid(self) -> int | None:
        """The helper's process id, or None before the first request."""
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def request(self, body: BaseModel, timeout: float = QUICK_TIMEOUT_S,
                on_partial: Callable[[dict], None] | None = None) -> BaseModel:
        """Send one request and return the typed response; BackpropError on an error reply,
        on a timeout (the helper is then stopped) or when a restarted helper dies too.
        `on_partial` receives partial replies (streamed answers) as they arrive."""
        kind = KINDS[type(body)]
        with self._lock:
            try:
                reply = self._exchange(kind, body, timeout, on_partial)
            except _HelperGone as gone:
                self._stop()
                if memory_limit.exhausted(str(gone)):
                    # A native library aborted on a failed allocation: asking again would
                    # only run the same bomb in a fresh helper.
                    raise memory_limit.exceeded(f"the engine helper ended while answering a {kind} request: "
                                                f"{str(gone)[-300:]}") from None
                try:
                    reply = self._exchange(kind, body, timeout, on_partial)
                except _HelperGone as gone:
                    self._stop()
                    raise BackpropError("RUNTIME_UNEXPECTED", f"the engine helper ended while answering a {kind} "
                                        f"request: {gone}", hint="Its log is " + str(self._log)) from None
        if not reply.get("ok"):
            raise ErrorReply.model_validate(reply.get("body") or {}).error()
        return RESPONSES[kind].model_validate(reply["body"])

    def close(self) -> None:
        """Stop the helper (it ends by itself when its input closes)."""
        with self._lock:
            self._stop()

    # ---- the pipe --------------------------------------------------------------------

    def _exchange(self, kind: str, body: BaseModel, timeout: float,
                  on_partial: Callable[[dict], None] | None = None) -> dict:
        self._ensure_started()
        request_id = next(self._ids)
        settings_env = {k: v for k, v in os.environ.items() if k.startswith(SETTINGS_PREFIX)}
        line = json.dumps({"id": request_id, "kind": kind, "env": settings_env, "body": body.model_dump(mode="json")})
        try:
            self._proc.stdin.write(line.encode() + b"\n")
            self._proc.stdin.flush()
        except OSError as err:  # BrokenPipeError: it died since the last request
            raise _HelperGone(str(err)) from None
        while True:
            try:
                reply = self._replies.get(timeout=timeout)
            except queue.Empty:
                self._stop()  # still busy with this request; a new helper serves the next
                raise BackpropError("RUNTIME_UNEXPECTED", f"the engine took more than {timeout:.0f} s to answer "
                                    f"a {kind} request", hint="Try again; a first request for a large model "
                                    "loads it, which can take minutes.") from None
            if reply is None:
                raise _HelperGone(self._log_tail())
            if reply.get("id") == request_id and "partial" in reply:
                if on_partial is not None:
                    on_partial(reply["partial"])
                continue
            if reply.get("id") == request_id:
                return reply

    def _ensure_started(self) -> None:
        wanted = _environment()
        if self._proc is not None and (self._proc.poll() is not None or self._started_with != wanted):
            self._stop()
        if self._proc is None:
            self._start(wanted)

    def _start(self, wanted: tuple) -> None:
        from backpropagate_core.config import load_settings

        self._log = load_settings().home / "logs" / "engine-helper.log"
        self._log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "BACKPROPAGATE_LOG_JSON": "false"}
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen([sys.executable, "-m", "backpropagate_core.runs.service"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                          env=env, cwd=os.getcwd())
        self._started_with = wanted
        self._replies = queue.Queue()
        threading.Thread(target=_read_replies, args=(self._proc.stdout, self._replies),
                         name="engine-helper-replies", daemon=True).start()

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()  # busy with a long request; nothing it would still say is wanted
            proc.wait()

    def _log_tail(self) -> str:
        try:
            text = self._log.read_text(errors="replace").strip() if self._log else ""
        except OSError:
            text = ""
        return text[-_LOG_TAIL:] or "no output"


def _read_replies(stream, replies: queue.Queue) -> None:
    """Reader thread: each reply line onto the queue, then None when the helper is gone."""
    for raw in stream:
        try:
            replies.put(json.loads(raw))
        except ValueError:
            continue  # not a reply; the helper keeps its stdout for replies only
    replies.put(None)


def _environment() -> tuple:
    return os.getcwd(), sorted((k, v) for k, v in os.environ.items()
                               if not k.startswith(SETTINGS_PREFIX) and k not in _IGNORED_ENV)


# ---- the process-wide client ------------------------------------------------------------

_client: EngineClient | None = None
_client_lock = threading.Lock()


def client() -> EngineClient:
    """The client this process shares; its helper is stopped when the process exits."""
    global _client
    with _client_lock:
        if _client is None:
            _client = EngineClient()
            atexit.register(_client.close)
        return _client


def shutdown() -> None:
    """Stop this process's helper now (a later request starts a new one)."""
    if _client is not None:
        _client.close()


def dataset_report(path: str, model: str | None = None, max_seq_len: int | None = None,
                   timeout: float = QUICK_TIMEOUT_S) -> DatasetReport:
    """The dataset report; `model` None (or "none") skips token statistics."""
    model = None if (model or "").lower() in ("", "none") else model
    request = ReportRequest(path=_absolute(path), model=model, max_seq_len=max_seq_len)
    return client().request(request, timeout)


def plan(model: str | None, data: str, overrides: dict | None = None,
         timeout: float = QUICK_TIMEOUT_S) -> Plan:
    """Resolved defaults with reasons for this model and dataset, without training."""
    return client().request(PlanRequest(model=model, data=_absolute(data), overrides=overrides or {}), timeout)


def chat(source: str, messages: list[dict[str, Any]], gguf: str | None = None, max_new_tokens: int = 128,
         compare: bool = True, base: bool = False, timeout: float = CHAT_TIMEOUT_S,
         on_partial: Callable[[dict], None] | None = None) -> ChatAnswer:
    """Greedy answers to the last turn of `messages` from the trained model and, unless
    `compare` is False, from its GGUF (`gguf`, or the run's newest GGUF export)."""
    try:
        request = ChatRequest(source=str(source), messages=messages, gguf=str(gguf) if gguf else None,
                              max_new_tokens=max_new_tokens, compare=compare, base=base,
                              stream=on_partial is not None)
    except ValidationError as err:
        raise BackpropError("INPUT_EXPORT_OPTION_INVALID", "messages must be a list of {role, content}: "
                            f"{err.error_count()} problem(s)") from None
    return client().request(request, timeout, on_partial)


def ping(timeout: float = QUICK_TIMEOUT_S) -> Pong:
    """Start the helper if needed; its pid and how many chat models it has loaded."""
    return client().request(Ping(), timeout)


def _absolute(path: str) -> str:
    # The helper runs in the caller's folder, but an absolute path also reads clearly in
    # the plan it returns.
    return str(Path(path).expanduser().resolve())
