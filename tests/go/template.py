"""Go's own text/template, for checking the Ollama TEMPLATEs we write: Ollama renders them
with Go's engine, so the tests do too (the engine compiled to WebAssembly, in the npm
package `@evertdespiegeleer/go-template` that `make install` puts under .tools, run by Node)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / ".tools" / "node_modules" / "@evertdespiegeleer" / "go-template"
SCRIPT = Path(__file__).with_name("render.mjs")


class GoTemplates:
    """One Node process rendering templates on request (starting Node costs ~0.4 s)."""

    def __init__(self) -> None:
        node = shutil.which("node")
        if node is None or not (PACKAGE / "dist" / "main.wasm").is_file():
            raise RuntimeError(f"Go's template engine is not installed ({PACKAGE}); run `make install`")
        self.proc = subprocess.Popen([node, str(SCRIPT), str(PACKAGE)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def render(self, template: str, data: dict) -> str:
        self.proc.stdin.write(json.dumps({"template": template, "data": data}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        if "error" in reply:
            raise ValueError(f"Go's text/template refused it: {reply['error']}")
        return reply["text"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def messages_data(messages: list[dict]) -> dict:
    """The fields Ollama gives a TEMPLATE for a chat (`.Messages` with `.Role`, `.Content`)."""
    return {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
