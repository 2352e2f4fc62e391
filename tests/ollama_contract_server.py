"""A local stand-in for the Ollama server's model-registration API, for tests.

No Ollama server can be installed on these machines, so the client is tested against
this implementation of the documented contract (Ollama's docs/api.md, client 0.6.3):

- `HEAD /api/blobs/sha256:<hex>`: 200 if the blob exists, else 404.
- `POST /api/blobs/sha256:<hex>` with the raw bytes: 201, or 400 when the bytes do not
  hash to the digest in the path.
- `POST /api/create` with `{"model", "files": {name: digest}, "template", "system",
  "parameters", "stream"}`: 400 for an invalid name or unknown blob; else streamed JSON
  lines (`application/x-ndjson`) ending in `{"status": "success"}`, or an
  `{"error": ...}` line when the GGUF cannot be parsed.
- `GET /` answers "Ollama is running"; `GET /api/tags` lists created models.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_NAME = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*(?::[A-Za-z0-9_][A-Za-z0-9._-]*)?$")


class OllamaContractServer:
    """Start with `with OllamaContractServer() as server:`; `server.url` is the host."""

    def __init__(self, port: int = 0) -> None:
        """`port` 0 picks a free one; Ollama's own 11434 lets a client with default settings in."""
        self.blobs: dict[str, bytes] = {}
        self.models: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_HEAD(self) -> None:
                state.requests.append(("HEAD", self.path))
                digest = self._digest()
                self.send_response(200 if digest in state.blobs else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                state.requests.append(("GET", self.path))
                if self.path == "/":
                    self._reply(200, "Ollama is running", "text/plain")
                elif self.path == "/api/tags":
                    self._json(200, {"models": [{"name": n} for n in state.models]})
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self) -> None:
                state.requests.append(("POST", self.path))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.startswith("/api/blobs/"):
                    self._upload(body)
                elif self.path == "/api/create":
                    self._create(json.loads(body or b"{}"))
                else:
                    self._json(404, {"error": "not found"})

            def _digest(self) -> str:
                return self.path.rsplit("/", 1)[-1]

            def _upload(self, body: bytes) -> None:
                digest = self._digest()
                actual = "sha256:" + hashlib.sha256(body).hexdigest()
                if actual != digest:
                    self._json(400, {"error": f"digest mismatch, expected {digest}, got {actual}"})
                    return
                state.blobs[digest] = body
                self._reply(201, "", "text/plain")

            def _create(self, req: dict) -> None:
                name = req.get("model") or ""
                if not _NAME.match(name):
                    self._json(400, {"error": "invalid model name"})
                    return
                files = req.get("files") or {}
                missing = [d for d in files.values() if d not in state.blobs]
                if not files or missing:
                    self._json(400, {"error": f"blob not found: {missing or 'no files'}"})
                    return
                lines = [{"status": "parsing GGUF"}]
                blob = state.blobs[next(iter(files.values()))]
                if not blob.startswith(b"GGUF"):
                    lines.append({"error": "invalid file magic"})
                else:
                    lines += [{"status": f"using existing layer {d}"} for d in files.values()]
                    lines += [{"status": "creating new layer sha256:" + "0" * 64}] * 3
                    lines += [{"status": "writing manifest"}, {"status": "success"}]
                    state.models[name if ":" in name else name + ":latest"] = req
                if req.get("stream") is False:
                    last = lines[-1]
                    self._json(400 if "error" in last else 200, last)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()
                for line in lines:
                    self.wfile.write(json.dumps(line).encode() + b"\n")
                    self.wfile.flush()

            def _json(self, code: int, obj: dict) -> None:
                self._reply(code, json.dumps(obj), "application/json")

            def _reply(self, code: int, text: str, ctype: str) -> None:
                data = text.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "OllamaContractServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
