"""The engine helper: one long-lived process that answers the app's small questions.

`python -m backpropagate_core.runs.service` reads one JSON request per line on stdin and
writes one JSON reply per line on stdout (see `runs.protocol`). It loads torch once, keeps
tokenizers (and chat models) between requests, and so answers a plan or a dataset report
for a model it has seen in a fraction of a second, where a fresh process per question
spent seconds importing torch and loading the tokenizer. The client side is
`runs.client`; it starts this process on first use.

The helper ends when its stdin closes, which the OS does when the process that started
it exits, however it exits: a UI server that is killed leaves no helper behind.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TextIO

from pydantic import BaseModel, ValidationError

from backpropagate_core import memory_limit
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.protocol import (
    REQUESTS,
    ChatAnswer,
    ChatRequest,
    DatasetReport,
    EngineAnswer,
    ErrorReply,
    Ping,
    Plan,
    PlanRequest,
    Pong,
    ReportRequest,
)

SETTINGS_PREFIX = "BACKPROPAGATE_"
CHAT_MODELS_KEPT = 2
"""Chat models stay loaded for the last few sources; each is a whole model in memory."""
_chats: OrderedDict[tuple, Any] = OrderedDict()
_chat_loads = 0


def report(req: ReportRequest) -> DatasetReport:
    """The dataset report, as `backprop data report --json` computes it."""
    from backpropagate_core.config import load_settings
    from backpropagate_core.data import report as data_report
    from backpropagate_core.model.loader import load_tokenizer

    tokenizer = None
    if req.model:
        tokenizer = load_tokenizer(req.model, trust_remote_code=load_settings().training.trust_remote_code)
    result = data_report.report(req.path, tokenizer, req.max_seq_len, skip_bad_lines=req.skip_bad_lines)
    return DatasetReport.model_validate(result.to_dict())


def plan(req: PlanRequest) -> Plan:
    """Resolved settings with reasons, as `backprop plan --json`; trains nothing."""
    from backpropagate_core.training.pipeline import plan_run
    from backpropagate_core.training.run_config import build_config

    return Plan.model_validate(plan_run(build_config(req.model, req.data, None, **req.overrides)))


def chat(req: ChatRequest) -> ChatAnswer:
    """Greedy answers from the trained model (and its GGUF), as `backprop chat --json`."""
    from backpropagate_core.export.chat import check_messages

    messages = check_messages([m.model_dump() for m in req.messages])
    session = _chat_session(req.source, req.gguf, req.compare)
    session.max_new_tokens = req.max_new_tokens
    answers = session.ask(messages, base=req.base, on_text=_streamer() if req.stream else None)
    both = "llama.cpp" in answers
    return ChatAnswer(
        answers={name: EngineAnswer(text=a.text, tokens=a.tokens, seconds=round(a.seconds, 3))
                 for name, a in answers.items()},
        gguf=str(session.gguf_path) if session.gguf_path else None,
        identical=answers["transformers"].tokens == answers["llama.cpp"].tokens if both else None)


STREAM_EVERY_S = 0.1
"""Partial answers go out at most this often: the browser needs no more."""
_partial: Callable[[dict], None] | None = None
"""Sends a partial reply for the request being answered (set by `serve`)."""


def _streamer() -> Callable[[str, str], None]:
    last = {"at": 0.0, "engine": None}

    def on_text(engine: str, text: str) -> None:
        now = time.monotonic()
        if _partial is not None and (engine != last["engine"] or now - last["at"] >= STREAM_EVERY_S):
            last.update(at=now, engine=engine)
            _partial({"engine": engine, "text": text})

    return on_text


def _chat_session(source: str, gguf: str | None, compare: bool):
    from backpropagate_core.export.chat import ChatSession, latest_gguf
    from backpropagate_core.export.merged import resolve_source

    # Keyed by what would be loaded now: a resumed run rewrites its adapter, and a new
    # export becomes the run's newest GGUF; either must load afresh.
    resolved = resolve_source(source)
    if compare and not gguf:
        gguf = str(latest_gguf(resolved) or "") or None
    key = (str(resolved.path), _mtime(resolved.path), gguf, compare)
    if key in _chats:
        _chats.move_to_end(key)
        return _chats[key]
    global _chat_loads
    while len(_chats) >= CHAT_MODELS_KEPT:
        _chats.popitem(last=False)  # free the oldest model before loading the next
    _chats[key] = ChatSession(source, gguf=gguf, compare_gguf=compare)
    _chat_loads += 1
    return _chats[key]


def _mtime(path) -> int:
    """Newest modification time of a folder's files (adapters are rewritten file by file)."""
    try:
        return max((p.stat().st_mtime_ns for p in path.iterdir()), default=path.stat().st_mtime_ns)
    except OSError:
        return 0


def ping(_req: Ping) -> Pong:
    return Pong(pid=os.getpid(), chat_loads=_chat_loads)


HANDLERS: dict[str, Callable[[Any], BaseModel]] = {"report": report, "plan": plan, "chat": chat, "ping": ping}


def handle(line: str) -> dict:
    """The reply to one request line; every line gets one, errors included."""
    request_id = None
    try:
        message = json.loads(line)
        request_id, kind = message.get("id"), message["kind"]
        request = REQUESTS[kind].model_validate(message.get("body") or {})
        _use_settings_env(message.get("env") or {})
    except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as err:
        return _error(request_id, ErrorReply(code="RUNTIME_UNEXPECTED", message=f"malformed engine request: {err}"))
    try:
        return {"id": request_id, "ok": True, "body": HANDLERS[kind](request).model_dump(mode="json")}
    except BackpropError as err:
        return _error(request_id, ErrorReply.of(memory_limit.coded(err.__cause__) or err))
    except Exception as exc:  # noqa: BLE001 - the helper's outer edge: the caller gets a coded error
        hit = memory_limit.coded(exc)
        if hit is not None:  # the allocation failed and was freed: the helper can go on serving
            return _error(request_id, ErrorReply.of(hit))
        traceback.print_exc(file=sys.stderr)
        return _error(request_id, ErrorReply(code="RUNTIME_UNEXPECTED", message=f"{type(exc).__name__}: {exc}"))


def _use_settings_env(env: dict[str, str]) -> None:
    """The caller's BACKPROPAGATE_* variables, in place of ours: settings are read per call,
    so one helper serves a caller whose home or defaults changed since it started."""
    for name in [k for k in os.environ if k.startswith(SETTINGS_PREFIX) and k not in env]:
        del os.environ[name]
    os.environ.update({str(k): str(v) for k, v in env.items() if str(k).startswith(SETTINGS_PREFIX)})


def _error(request_id: Any, reply: ErrorReply) -> dict:
    return {"id": request_id, "ok": False, "body": reply.model_dump(mode="json")}


def serve(requests: TextIO, replies: TextIO) -> None:
    """Answer request lines until the input closes (partial replies first, where asked)."""
    global _partial

    def send(reply: dict) -> None:
        replies.write(json.dumps(reply, ensure_ascii=False) + "\n")
        replies.flush()

    while line := requests.readline():
        if line.strip():
            try:
                request_id = json.loads(line).get("id")
            except (ValueError, AttributeError):
                request_id = None
            _partial = lambda body: send({"id": request_id, "partial": body})  # noqa: E731
            try:
                send(handle(line))
            finally:
                _partial = None


def main() -> int:
    from backpropagate_core.model import loader

    # Replies get a private copy of stdout, and fd 1 becomes stderr: a library that prints
    # (transformers, llama.cpp) can then never corrupt the reply stream.
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Before torch loads: started by the UI, the helper answers under the address-space
    # limit, so a forged model or dataset that asks for too much fails that one request.
    limit = memory_limit.apply_under_ui()
    if limit:
        print(f"memory limit: {limit} bytes", file=sys.stderr)
    loader.keep_tokenizers()
    try:
        serve(sys.stdin, replies)
    except KeyboardInterrupt:  # Ctrl+C on the UI reaches its whole process group
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
