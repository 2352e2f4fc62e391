"""Ollama: a Modelfile whose TEMPLATE matches the training chat template, and registration.

Ollama formats chats with a Go template, not the Jinja template the run trained with.
Instead of keeping a list of known templates, we render the Jinja template on marker
messages and cut the output into each role's prefix and suffix; the Go template then
repeats those literally. A default system prompt the Jinja template inserts becomes the
Modelfile's SYSTEM.

Registration speaks Ollama's HTTP API: `HEAD/POST /api/blobs/sha256:<hex>` to upload the
GGUF once, then `POST /api/create` whose streamed JSON lines end in {"status":"success"}.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from backpropagate_core.errors import BackpropError

DEFAULT_HOST = "http://127.0.0.1:11434"
_NAME = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,79}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,79}"
                   r"(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$")
_MARK = {"system": "\x02SYSTEM\x03", "user": "\x02USER\x03", "assistant": "\x02ASSISTANT\x03",
         "user2": "\x02SECOND\x03"}


@dataclass
class OllamaTemplate:
    template: str
    """Go template for Ollama's TEMPLATE."""
    system: str | None = None
    """Default system prompt the training template inserts, if any."""
    stop: list[str] = field(default_factory=list)
    faithful: bool | None = None
    """Whether Ollama's prompt equals training's for the checked conversations (`check`)."""
    mismatch: str | None = None
    """The first checked conversation whose prompt differs, and how."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Registration:
    name: str
    host: str
    digest: str
    uploaded: bool
    """False when Ollama already had the blob."""
    statuses: list[str]
    run_command: str


NO_SYSTEM_YET = '{{ if ne (index .Messages 0).Role "system" }}'
"""Opens what the TEMPLATE writes before the turns when the chat starts without a system turn."""
CHECK_CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in one sentence."}, {"role": "user", "content": "Why knead dough?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "A fact, please."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
]
"""No system turn, a system turn, several turns: each with the generation prompt."""


def template_from_tokenizer(tokenizer: Any) -> OllamaTemplate:
    """Derive the Ollama template from an HF tokenizer's chat template, checked on
    CHECK_CONVERSATIONS (`faithful`, `mismatch`)."""
    from backpropagate_core.data.templates import ensure_chat_template

    ensure_chat_template(tokenizer)

    def render(messages, add_generation_prompt=False):
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    specials = [t for t in tokenizer.all_special_tokens if t]
    specials += [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
                 if getattr(t, "special", False)]
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]
    bos = tokenizer.bos_token if adds_bos else None
    tmpl = derive_template(render, bos, tokenizer.eos_token, sorted(set(specials)))
    return check(tmpl, render, bos or "")


def check(tmpl: OllamaTemplate, render: Callable[..., str], bos: str = "") -> OllamaTemplate:
    """Render CHECK_CONVERSATIONS as Ollama would and as training did; record whether they
    agree. `bos`: what llama.cpp puts in front of Ollama's prompt by itself."""
    from jinja2 import TemplateError

    tmpl.faithful, tmpl.mismatch = True, None
    for n, messages in enumerate(CHECK_CONVERSATIONS, 1):
        try:
            want = render(messages, add_generation_prompt=True)
        except (TemplateError, ValueError, TypeError):
            continue  # training's template refuses this conversation (Mistral: no system turn)
        shown = messages
        if tmpl.system and not any(m["role"] == "system" for m in messages):
            shown = [{"role": "system", "content": tmpl.system}] + messages
        got = bos + render_messages(tmpl.template, shown)
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            tmpl.faithful = False
            tmpl.mismatch = (f"conversation {n}: Ollama's prompt {got[max(0, at - 20):at + 40]!r} "
                             f"differs from training's {want[max(0, at - 20):at + 40]!r}")
            break
    return tmpl


def render_messages(template: str, messages: list[dict]) -> str:
    """What Go's text/template makes of the TEMPLATEs `derive_template` writes: literal
    text, a range over .Messages with role branches and .Content, literal text. The tests
    hold it to Go's own engine."""
    parts = [p for p in re.split(r"({{.*?}})", template) if p]
    start = parts.index("{{ range .Messages }}")
    end = _matching_end(parts, start + 1)
    out = []
    if parts[:1] == [NO_SYSTEM_YET]:
        if messages and messages[0]["role"] != "system":
            out.extend(_literal(p) for p in parts[1:start - 1])
    else:
        out.extend(_literal(p) for p in parts[:start])
    for message in messages:
        _branches(parts[start + 1:end], message, out)
    out.extend(_literal(p) for p in parts[end + 1:])
    return "".join(out)


def _matching_end(parts: list[str], start: int) -> int:
    depth = 1
    for k in range(start, len(parts)):
        action = parts[k][2:-2].strip() if parts[k].startswith("{{") and parts[k] != '{{ "{{" }}' else None
        if action is None:
            continue
        if action.startswith(("if ", "range ")):
            depth += 1
        elif action == "end":
            depth -= 1
            if depth == 0:
                return k
    raise ValueError("unbalanced template")


def _branches(parts: list[str], message: dict, out: list[str]) -> None:
    """One `{{ if eq .Role "x" }}...{{ else if eq .Role "y" }}...{{ end }}` for one message."""
    taking = False
    taken = False
    for part in parts:
        action = part[2:-2].strip() if part.startswith("{{") and part != '{{ "{{" }}' else None
        if action is not None and (action.startswith("if eq .Role") or action.startswith("else if eq .Role")):
            role = re.search(r'"(\w+)"', action).group(1)
            taking = not taken and message["role"] == role
            taken = taken or taking
        elif action == "end":
            taking = False
        elif action == ".Content":
            if taking:
                out.append(message["content"])
        elif taking:
            out.append(_literal(part))


def _literal(part: str) -> str:
    return "{{" if part == '{{ "{{" }}' else part


def derive_template(render: Callable[..., str], bos: str | None, eos: str | None,
                    specials: list[str]) -> OllamaTemplate:
    """Cut rendered marker conversations into role prefixes/suffixes; build the Go template.

    `bos`: the BOS text when the tokenizer adds BOS by itself (llama.cpp then does too),
    so a BOS the template writes at the very start must not be repeated in the template.
    """
    from jinja2 import TemplateError

    m = _MARK
    one = render([{"role": "user", "content": m["user"]}])
    prompt = render([{"role": "user", "content": m["user"]}], add_generation_prompt=True)
    turn = render([{"role": "user", "content": m["user"]}, {"role": "assistant", "content": m["assistant"]}])
    two = render([{"role": "user", "content": m["user"]}, {"role": "assistant", "content": m["assistant"]},
                  {"role": "user", "content": m["user2"]}])
    if eos and all(text.endswith(eos) for text in (one, turn, two)) and not prompt.endswith(eos):
        # The template ends a chat without a generation prompt with EOS (Phi-3.5): that is
        # no part of any turn, and Ollama always asks with a generation prompt.
        one, turn, two = (text[: len(text) - len(eos)] for text in (one, turn, two))
    head, user_suffix = one.split(m["user"])
    gen = prompt[len(one):] if prompt.startswith(one) else ""
    assistant_prefix, assistant_suffix = turn[len(one):].split(m["assistant"])
    user_prefix = two[len(turn):].split(m["user2"])[0]
    if not two.startswith(turn):
        # The chat's last assistant turn is written differently from an earlier one (Qwen3
        # gives only the last an empty think block). Ollama's .Messages are earlier turns
        # (the generation prompt follows them), so take the turn as `two` writes it.
        assistant_prefix, rest = two.split(m["user"], 1)[1][len(user_suffix):].split(m["assistant"])
        between = rest.split(m["user2"])[0]
        if between.startswith(assistant_suffix):
            user_prefix = between[len(assistant_suffix):]
    if head.endswith(user_prefix):
        head = head[: len(head) - len(user_prefix)]
    if bos and user_prefix.startswith(bos):
        bos = None  # the "BOS" starts every turn (ChatML's <|im_start|>): it is turn markup
    if bos and head.startswith(bos):
        head = head[len(bos):]
    system_prefix = system_suffix = default_system = None
    try:
        sys_text = render([{"role": "system", "content": m["system"]}, {"role": "user", "content": m["user"]}])
    except (TemplateError, ValueError, TypeError):
        sys_text = ""  # the template refuses system turns (Mistral's does)
    if m["system"] in sys_text:
        before, after = sys_text.split(m["system"])
        system_prefix = before[len(bos):] if bos and before.startswith(bos) else before
        middle = after.split(m["user"])[0]
        system_suffix = middle[: len(middle) - len(user_prefix)] if middle.endswith(user_prefix) else middle
        if head and head.startswith(system_prefix) and head.endswith(system_suffix):
            default_system = head[len(system_prefix): len(head) - len(system_suffix)] or None
    parts = []
    if head and system_prefix is not None and head == system_prefix + system_suffix:
        # The template writes an empty system turn when the chat has none (Llama 3.x, with
        # its date lines): so does the TEMPLATE. The date is the export's day.
        parts.append(NO_SYSTEM_YET + _lit(head) + "{{ end }}")
    parts.append("{{ range .Messages }}")
    if system_prefix is not None:
        parts.append('{{ if eq .Role "system" }}' + _lit(system_prefix) + "{{ .Content }}"
                     + _lit(system_suffix) + "{{ else if eq .Role \"user\" }}")
    else:
        parts.append('{{ if eq .Role "user" }}')
    parts.append(_lit(user_prefix) + "{{ .Content }}" + _lit(user_suffix)
                 + '{{ else if eq .Role "assistant" }}' + _lit(assistant_prefix) + "{{ .Content }}"
                 + _lit(assistant_suffix) + "{{ end }}{{ end }}" + _lit(gen or assistant_prefix))
    # Stop at the end of the answer, or where the model would start writing the next turn.
    stop = [s for s in specials if s in assistant_suffix or user_prefix.startswith(s) or s == eos]
    return OllamaTemplate("".join(parts), default_system, sorted(set(stop)))


def _lit(text: str) -> str:
    """Literal text inside a Go template (only `{{` would be read as an action)."""
    return text.replace("{{", '{{ "{{" }}')


def modelfile(gguf_name: str, template: OllamaTemplate, system: str | None = None,
              parameters: dict | None = None) -> str:
    """A Modelfile for `ollama create NAME -f Modelfile` next to the GGUF."""
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template.template}"""']
    sys_prompt = system if system is not None else template.system
    if sys_prompt:
        lines.append(f'SYSTEM """{sys_prompt}"""')
    for stop in template.stop:
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    for key, value in (parameters or {}).items():
        lines.append(f"PARAMETER {key} {value}")
    return "\n".join(lines) + "\n"


def check_name(name: str) -> str:
    if not name or not _NAME.match(name):
        raise BackpropError("INPUT_OLLAMA_NAME_INVALID", f"{name!r} is not a valid Ollama model name")
    return name


def register_with_ollama(gguf_path: str | Path, name: str, host: str | None = None,
                         system: str | None = None, template: str | None = None,
                         parameters: dict | None = None,
                         on_status: Callable[[str], None] | None = None) -> Registration:
    """Upload a GGUF to an Ollama server and create model `name` from it.

    TEMPLATE, SYSTEM and stop tokens come from the export's export.json when the file
    is one of our exports; `template`/`system` override them.
    """
    check_name(name)
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise BackpropError("INPUT_EXPORT_SOURCE_INVALID", f"{path} is not a file")
    host = (host or _default_host()).rstrip("/")
    saved = _saved_template(path) if template is None else OllamaTemplate(template)
    digest = "sha256:" + sha256_file(path)
    client = _Client(host)
    uploaded = False
    if client.status("HEAD", f"/api/blobs/{digest}") != 200:
        client.upload(f"/api/blobs/{digest}", path)
        uploaded = True
    params = {"stop": saved.stop} if saved.stop else {}
    params.update(parameters or {})
    body = {"model": name, "files": {path.name: digest}, "stream": True,
            "template": template or saved.template, "parameters": params}
    if system or saved.system:
        body["system"] = system or saved.system
    statuses = client.create(body, on_status)
    return Registration(name, host, digest, uploaded, statuses, f"ollama run {name}")


def _default_host() -> str:
    from backpropagate_core.config import load_settings

    return load_settings().ollama_host or DEFAULT_HOST


def _saved_template(path: Path) -> OllamaTemplate:
    manifest = path.parent / "export.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text()).get("ollama") or {}
        if data.get("template"):
            return OllamaTemplate(data["template"], data.get("system"), list(data.get("stop") or []))
    raise BackpropError("INPUT_EXPORT_SOURCE_INVALID",
                        f"{path} has no export.json next to it to take the chat template from",
                        hint="Export with `backprop export ... --format gguf`, or pass template=... explicitly.")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class _Client:
    """The few Ollama endpoints registration needs, over urllib."""

    def __init__(self, host: str, timeout: float = 600.0) -> None:
        self.host, self.timeout = host, timeout

    def _open(self, req: urllib.request.Request):
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            reason = getattr(err, "reason", err)
            raise BackpropError("DEP_OLLAMA_REGISTRATION_FAILED",
                                f"Ollama is not reachable at {self.host} ({reason})") from None

    def status(self, method: str, route: str) -> int:
        try:
            with self._open(urllib.request.Request(self.host + route, method=method)) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    def upload(self, route: str, path: Path) -> None:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            req = urllib.request.Request(self.host + route, data=fh, method="POST",
                                         headers={"Content-Length": str(size),
                                                  "Content-Type": "application/octet-stream"})
            try:
                with self._open(req) as resp:
                    if resp.status not in (200, 201):
                        raise self._failed(f"blob upload answered {resp.status}")
            except urllib.error.HTTPError as err:
                raise self._failed(f"blob upload answered {err.code}: {_body(err)}", retryable=False) from None

    def create(self, body: dict, on_status: Callable[[str], None] | None) -> list[str]:
        req = urllib.request.Request(self.host + "/api/create", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        statuses: list[str] = []
        try:
            with self._open(req) as resp:
                for line in resp:
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if "error" in msg:
                        raise self._failed(f"create failed: {msg['error']}", retryable=False)
                    statuses.append(str(msg.get("status", "")))
                    if on_status:
                        on_status(statuses[-1])
        except urllib.error.HTTPError as err:
            raise self._failed(f"create answered {err.code}: {_body(err)}", retryable=False) from None
        if not statuses or statuses[-1] != "success":
            raise self._failed(f"create ended without success (last status: {statuses[-1:] or 'none'})")
        return statuses

    def _failed(self, message: str, retryable: bool = True) -> BackpropError:
        return BackpropError("DEP_OLLAMA_REGISTRATION_FAILED", f"{self.host}: {message}",
                             retryable=retryable)


def _body(err: urllib.error.HTTPError) -> str:
    try:
        text = err.read().decode("utf-8", "replace")
        return json.loads(text).get("error", text)[:300]
    except (ValueError, AttributeError, OSError):
        return ""
