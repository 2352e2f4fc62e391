"""A minimal websocket and Socket.IO client on a raw socket, so tests control every header
(Host, Origin, Cookie) and the source address, and see refused upgrades as HTTP statuses."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time


class WebSocket:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode())

    def send_frame(self, opcode: int, data: bytes, fin: bool = True, declared: int | None = None) -> None:
        """One masked client frame; `declared` claims another payload length than sent."""
        length = len(data) if declared is None else declared
        first = (0x80 if fin else 0) | opcode
        if length < 126:
            head = struct.pack("!BB", first, 0x80 | length)
        elif length < 1 << 16:
            head = struct.pack("!BBH", first, 0x80 | 126, length)
        else:
            head = struct.pack("!BBQ", first, 0x80 | 127, length)
        mask = os.urandom(4)
        # XOR as one big integer: byte by byte takes seconds for a multi-megabyte frame.
        key = (mask * (len(data) // 4 + 1))[: len(data)]
        masked = (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(len(data), "big")
        self.sock.sendall(head + mask + masked)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("socket closed")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def recv(self, timeout: float = 10.0) -> tuple[int, bytes]:
        """(opcode, payload); opcode 8 is a close frame."""
        self.sock.settimeout(timeout)
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read(8))[0]
        return first & 0x0F, self._read(length)

    def close(self) -> None:
        self.sock.close()


def upgrade(port: int, path: str, headers: dict[str, str], source: str = "127.0.0.1",
            timeout: float = 10.0) -> tuple[int, WebSocket | None]:
    """Send a websocket upgrade; returns (HTTP status, the socket when it was accepted)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout, source_address=(source, 0))
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{name}: {value}" for name, value in headers.items() if value is not None]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            break
        response += chunk
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0
    if status != 101:
        sock.close()
        return status, None
    ws = WebSocket(sock)
    ws.buffer = response.split(b"\r\n\r\n", 1)[1]
    return status, ws


class ReflexSocket:
    """Socket.IO over the websocket, speaking to Reflex's `/_event` namespace."""

    NAMESPACE = "/_event"

    def __init__(self, ws: WebSocket, token: str) -> None:
        self.ws, self.token = ws, token
        opcode, payload = ws.recv()
        assert payload.startswith(b"0"), payload  # Engine.IO open
        ws.send_text(f"40{self.NAMESPACE},")
        self.frames: list[str] = []
        self.wait_for(lambda text: text.startswith(f"40{self.NAMESPACE}"), 10)

    def emit_event(self, handler: str, payload: dict, pathname: str = "/") -> None:
        event = {"name": handler, "payload": payload, "router_data": {"pathname": pathname, "query": {}}}
        self.ws.send_text(f"42{self.NAMESPACE}," + json.dumps(["event", event]))

    def wait_for(self, predicate, timeout: float) -> str | None:
        """The first text frame matching `predicate` within `timeout` s (pings answered)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                opcode, payload = self.ws.recv(max(0.1, deadline - time.monotonic()))
            except (socket.timeout, TimeoutError):
                return None
            if opcode == 8:
                raise ConnectionError("closed by server")
            text = payload.decode("utf-8", "replace")
            if text == "2":
                self.ws.send_text("3")
                continue
            self.frames.append(text)
            if predicate(text):
                return text
        return None


def http(port: int, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"",
         source: str = "127.0.0.1", timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request sent exactly as given (no path normalising, duplicate headers
    allowed); returns (status, lower-cased headers, body)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout, source_address=(source, 0))
    try:
        lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers), "Connection: close"]
        if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
            lines.append(f"Content-Length: {len(body)}")
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (e.g. 413) and closed before the whole body was sent
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ")[1]) if status_line.startswith("HTTP/") else 0
    out: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        out.setdefault(name.strip().lower(), value.strip())
    if out.get("transfer-encoding") == "chunked":
        rest = _dechunk(rest)
    return status, out, rest


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


def multipart(files: list[tuple[str, bytes]], boundary: str = "bpattackboundary") -> tuple[str, bytes]:
    """(content type, body) of a multipart form with one `files` part per (filename, bytes)."""
    body = b""
    for name, content in files:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode("utf-8") + content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body
