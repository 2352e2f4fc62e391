"""The gate in front of the whole web server: every page, asset, API route, upload and websocket.

A pure ASGI wrapper around the whole server Reflex builds, its CORS layer included
(`backpropagate_app.backpropagate_app.GatedApp`), so nothing reaches Reflex without
passing here, not even a CORS preflight. It always checks the Host header (against DNS
rebinding), the Origin of requests and websocket upgrades (against cross-site requests),
caps request bodies and websocket messages (size, rate, open sockets), and adds security
headers (`policy`); what it passes on carries no credentials. With a login configured
(`backprop ui --auth`) it also serves the login page, issues a signed session cookie (a
JWT), accepts HTTP Basic for scripts, refuses unauthenticated websocket upgrades before
accepting them, closes open websockets when their session logs out (`sessions`), and
rate-limits logins and uploads.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import time
from contextlib import suppress
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote

from backpropagate_app.server.limits import RateLimiter
from backpropagate_app.server.login import login_page
from backpropagate_app.server.policy import Request, allowed_hosts, host_origin_problem, safe_next, secure_headers
from backpropagate_app.server.sessions import COOKIE, Session, Sessions
from backpropagate_core.serve.credentials import GATE_FILE_ENV, read_gate_file

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
UPLOAD_PATH = "/_upload"
HTML = "text/html; charset=utf-8"


@dataclass
class GateConfig:
    user: str | None = None
    """Login user; None runs without a login (host, origin, body and header checks stay on)."""
    password_hash: str | None = field(default=None, repr=False)
    """`credentials.hash_password` output; the plain password never reaches the server."""
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(48), repr=False)
    """Key that signs session JWTs (HS256)."""
    hosts: frozenset[str] = frozenset()
    """Host header values answered besides loopback:port and the server's own address:port."""
    proxy: str | None = None
    """The tunnel client `--share` started ("cloudflared" or "ngrok"): only its client-address
    header, and X-Forwarded-Proto, are believed, and only from loopback peers."""
    session_seconds: int = 12 * 3600
    max_upload_bytes: int = 200 << 20
    max_body_bytes: int = 1 << 20
    logins_per_minute: int = 5
    """Failed logins per client (address, or IPv6 /64) per minute before 429."""
    uploads_per_minute: int = 20
    max_ws_message_bytes: int = 1 << 20
    """Largest websocket message from a client; Reflex's events are a few kB, uploads use HTTP."""
    ws_messages_per_second: float = 50.0
    """Sustained websocket messages per connection (typing sends one event per keystroke)."""
    ws_message_burst: int = 200
    """Messages a connection may send at once before the sustained rate applies."""
    max_websockets: int = 32
    """Open websockets in all; the server below the gate buffers up to 64 MiB of an unfinished
    message per socket before the size cap can see it, so their number bounds that memory."""
    max_websockets_per_session: int = 16
    """Open websockets per session: one per browser tab (all Basic clients are one session;
    without a login, each client address is)."""

    @property
    def auth(self) -> bool:
        return bool(self.user and self.password_hash)

    @property
    def signing_key(self) -> str:
        """What signs session cookies: the secret bound to the password hash. A password
        change ends every session; so does a restart, since each `backprop ui` start makes a
        new secret, unless SECURITY__JWT_SECRET pins one on purpose."""
        return hmac.new(self.secret.encode(), (self.password_hash or "").encode(), hashlib.sha256).hexdigest()

    @classmethod
    def from_env(cls) -> "GateConfig":
        """Settings for the server process: `BACKPROPAGATE_*` settings plus the gate file
        `backprop ui` writes (BACKPROPAGATE_UI_GATE_FILE). A named but unreadable gate file
        is an error: the server must not start without the login it was asked for."""
        from backpropagate_core.config import load_settings

        settings = load_settings()
        config = cls(hosts=frozenset(h.lower() for h in settings.security.allowed_hosts),
                     session_seconds=int(settings.security.session_hours * 3600),
                     max_upload_bytes=settings.ui.max_upload_mb << 20)
        if settings.security.jwt_secret:
            config.secret = settings.security.jwt_secret
        if os.environ.get(GATE_FILE_ENV):
            data = read_gate_file(os.environ[GATE_FILE_ENV])
            config.user, config.password_hash = data.get("user"), data.get("password_hash")
            config.secret = settings.security.jwt_secret or data["secret"]
            config.hosts |= {h.lower() for h in data.get("hosts", [])}
            config.proxy = data.get("proxy")
            config.session_seconds = int(float(data.get("session_hours", 12)) * 3600)
        return config


class Gate:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app, config: GateConfig | None = None) -> None:
        self.app = app
        self.config = config or GateConfig.from_env()
        self.sessions = Sessions(self.config)
        self.upload_limit = RateLimiter(self.config.uploads_per_minute)
        self.open_sockets: dict[str, int] = {}
        """Session key -> its open websockets."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        req = Request(scope, self.config.proxy)
        problem = host_origin_problem(req, allowed_hosts(self.config.hosts, scope))
        if problem:
            return await self._refuse(req, receive, send, *problem)
        if not req.websocket and req.path in ("/login", "/logout"):
            return await self._own_route(req, receive, send)
        session, wait = await self.sessions.authenticate(req)
        if session is None:
            return await self._unauthenticated(req, receive, send, wait)
        state_changing = req.websocket or req.method not in SAFE_METHODS
        if state_changing and session.via == "cookie" and not req.header("origin"):
            return await self._refuse(req, receive, send, 403, "a cookie-authenticated request must carry Origin")
        if req.websocket:
            return await self._websocket(req, session, receive, send)
        return await self._http(req, session, receive, send)

    def issue_token(self) -> tuple[str, str]:
        """A new session JWT and its id."""
        return self.sessions.issue_token()

    def revoke(self, jti: str, expires: float) -> None:
        """End a session: its cookie stops working and its open websockets are closed."""
        self.sessions.revoke(jti, expires)

    # ---- the gate's own pages ----------------------------------------------------------

    async def _own_route(self, req: Request, receive, send) -> None:
        if not self.config.auth:
            return await self._redirect(req, send, "/")
        if req.path == "/logout":
            if req.method != "POST":  # a cross-site <img src=/logout> must not sign anyone out
                return await self._respond(req, send, 405, b'{"error": "sign out with POST /logout"}\n',
                                           "application/json", extra=[(b"allow", b"POST")])
            session = self.sessions.from_cookie(req.cookie(COOKIE))
            if session:
                self.revoke(session.jti, session.expires or time.time())
            return await self._redirect(req, send, "/login", cookie=f"{COOKIE}=; Max-Age=0")
        if req.method == "POST":
            return await self._login_post(req, receive, send)
        if req.method not in ("GET", "HEAD"):  # a CORS preflight or a stray method: no login page
            return await self._respond(req, send, 405, b'{"error": "use GET or POST /login"}\n',
                                       "application/json", extra=[(b"allow", b"GET, HEAD, POST")])
        next_path = safe_next(parse_qs(req.query).get("next", ["/"])[0])
        if self.sessions.from_cookie(req.cookie(COOKIE)):
            return await self._redirect(req, send, next_path)
        await self._respond(req, send, 200, login_page(next_path), HTML)

    async def _login_post(self, req: Request, receive, send) -> None:
        body = await _read_body(receive, 8192)
        form = parse_qs((body or b"").decode("utf-8", "replace"))
        next_path = safe_next(form.get("next", ["/"])[0])
        wait = self.sessions.login_wait(req)
        if wait:
            return await self._respond(req, send, 429, login_page(next_path, f"Too many attempts; wait {wait} s."),
                                       HTML, extra=[(b"retry-after", str(wait).encode())])
        user, password = form.get("user", [""])[0], form.get("password", [""])[0]
        if body is None or not await self.sessions.check_login(req, user, password):
            return await self._respond(req, send, 401, login_page(next_path, "Wrong user name or password."), HTML)
        token, _ = self.issue_token()
        await self._redirect(req, send, next_path,
                             cookie=f"{COOKIE}={token}; Max-Age={self.config.session_seconds}")

    async def _unauthenticated(self, req: Request, receive, send, wait: int) -> None:
        if req.websocket:
            return await self._refuse(req, receive, send, 401, "login required")
        if wait:
            return await self._respond(req, send, 429, b'{"error": "too many login attempts"}\n',
                                       "application/json", extra=[(b"retry-after", str(wait).encode())])
        if req.wants_page():
            target = req.path + (f"?{req.query}" if req.query else "")
            return await self._redirect(req, send, f"/login?next={quote(safe_next(target), safe='')}")
        extra = []
        if not req.header("sec-fetch-mode"):
            # Only non-browser clients get the Basic challenge: a browser would pop up a dialog.
            extra.append((b"www-authenticate", b'Basic realm="backpropagate", charset="UTF-8"'))
        await self._respond(req, send, 401, b'{"error": "login required; sign in at /login"}\n',
                            "application/json", extra=extra)

    # ---- passing requests on -----------------------------------------------------------

    async def _http(self, req: Request, session: Session, receive, send) -> None:
        limit = self.config.max_body_bytes
        if req.path.rstrip("/") == UPLOAD_PATH and req.method == "POST":
            wait = self.upload_limit.hit(session.key)
            if wait:
                return await self._respond(req, send, 429, b'{"error": "too many uploads"}\n', "application/json",
                                           extra=[(b"retry-after", str(wait).encode())])
            limit = self.config.max_upload_bytes + (1 << 20)  # room for the multipart framing
        declared = req.header("content-length")
        if declared and (not declared.isdigit() or int(declared) > limit):
            return await self._respond(req, send, 413, b'{"error": "request body too large"}\n', "application/json")

        received, too_big, started = 0, False, False

        async def counted_receive():
            nonlocal received, too_big
            if too_big:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_big = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if too_big and not started:
                return
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": secure_headers(req.host, message.get("headers", []), req.https)}
            await send(message)

        await self.app(req.passed_on(COOKIE), counted_receive, guarded_send)
        if too_big and not started:
            await self._respond(req, send, 413, b'{"error": "request body too large"}\n', "application/json")

    async def _websocket(self, req: Request, session: Session, receive, send) -> None:
        """Pass the socket on, closing it when its session is revoked or expires, or when the
        client sends a message over the size cap or faster than the message rate allows."""
        if (sum(self.open_sockets.values()) >= self.config.max_websockets
                or self.open_sockets.get(session.key, 0) >= self.config.max_websockets_per_session):
            return await self._refuse(req, receive, send, 429, "too many open websockets")
        ended = asyncio.Event()
        if session.jti:
            self.sessions.watch(session.jti, ended)
        pending: asyncio.Future | None = None
        shut = False
        limits = _MessageLimits(self.config)

        async def close(code: int, reason: str) -> dict:
            nonlocal shut
            shut = True
            with suppress(Exception):
                await send({"type": "websocket.close", "code": code, "reason": reason})
            return {"type": "websocket.disconnect", "code": code}

        async def guarded_receive():
            nonlocal pending
            if shut:
                return {"type": "websocket.disconnect", "code": 1008}
            if pending is None:
                pending = asyncio.ensure_future(receive())
            waiter = asyncio.ensure_future(ended.wait())
            timeout = None if session.expires is None else max(0.0, session.expires - time.time())
            done, _ = await asyncio.wait({pending, waiter}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if pending not in done:
                return await close(1008, "session ended")
            message, pending = pending.result(), None
            problem = limits.problem(message)
            return await close(*problem) if problem else message

        async def guarded_send(message):
            if not shut:
                await send(message)

        self.open_sockets[session.key] = self.open_sockets.get(session.key, 0) + 1
        try:
            await self.app(req.passed_on(COOKIE), guarded_receive, guarded_send)
        finally:
            self.open_sockets[session.key] -= 1
            if not self.open_sockets[session.key]:
                del self.open_sockets[session.key]
            if session.jti:
                self.sessions.unwatch(session.jti, ended)
            if pending is not None and not pending.done():
                pending.cancel()

    # ---- responses ---------------------------------------------------------------------

    async def _respond(self, req: Request, send, status: int, body: bytes, content_type: str,
                       extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store"), *(extra or [])]
        await send({"type": "http.response.start", "status": status,
                    "headers": secure_headers(req.host, headers, req.https)})
        await send({"type": "http.response.body", "body": b"" if req.method == "HEAD" else body})

    async def _redirect(self, req: Request, send, location: str, cookie: str | None = None) -> None:
        extra = [(b"location", location.encode("latin-1", "replace"))]
        if cookie is not None:
            flags = "; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if req.https else "")
            extra.append((b"set-cookie", (cookie + flags).encode("latin-1")))
        await self._respond(req, send, 303, b"", "text/plain", extra=extra)

    async def _refuse(self, req: Request, receive, send, status: int, why: str) -> None:
        if req.websocket:
            # Refused before accept: the server answers the upgrade with 403.
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": 1008, "reason": why[:100]})
            return
        body = json.dumps({"error": why}).encode() + b"\n"
        await self._respond(req, send, status, body, "application/json")


class _MessageLimits:
    """What one websocket may send: messages up to the size cap, at the sustained rate after
    a burst (a token bucket)."""

    def __init__(self, config: GateConfig) -> None:
        self.config = config
        self.allowance, self.last = float(config.ws_message_burst), time.monotonic()

    def problem(self, message: dict) -> tuple[int, str] | None:
        """(close code, reason) when `message` breaks a limit; None when it may pass."""
        if message["type"] != "websocket.receive":
            return None
        if len(message.get("bytes") or b"") + len(message.get("text") or "") > self.config.max_ws_message_bytes:
            return 1009, "message too big"
        now = time.monotonic()
        self.allowance = min(float(self.config.ws_message_burst),
                             self.allowance + (now - self.last) * self.config.ws_messages_per_second) - 1
        self.last = now
        return (1008, "too many messages") if self.allowance < 0 else None


async def _read_body(receive, limit: int) -> bytes | None:
    """The request body, or None when it is larger than `limit` or the client left."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        size += len(message.get("body", b""))
        if size > limit:
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def login_enabled() -> bool:
    """Whether this server was started with a login (`backprop ui --auth`)."""
    path = os.environ.get(GATE_FILE_ENV)
    return bool(path and read_gate_file(path).get("user"))


def wrap(app):
    """The gate around `app` (the whole server), configured from env."""
    return Gate(app, GateConfig.from_env())
