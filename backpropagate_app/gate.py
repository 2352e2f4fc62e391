"""The gate in front of the whole web server: every page, asset, API route, upload and websocket.

A pure ASGI wrapper (installed through `rx.App(api_transformer=...)`), so nothing reaches
Reflex without passing here. It always checks the Host header (against DNS rebinding),
the Origin of requests and websocket upgrades (against cross-site requests), caps request
bodies and adds security headers. With a login configured (`backprop ui --auth`) it also
serves the login page, issues a signed session cookie (a JWT), accepts HTTP Basic for
scripts, refuses unauthenticated websocket upgrades before accepting them, closes open
websockets when their session logs out, and rate-limits logins and uploads.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from contextlib import suppress
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, urlsplit

import jwt

from backpropagate_app.limits import RateLimiter
from backpropagate_app.login import login_page
from backpropagate_core.credentials import GATE_FILE_ENV, read_gate_file, verify_password

COOKIE = "bp_session"
AUDIENCE = "backpropagate-ui"
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
UPLOAD_PATH = "/_upload"
CSP = ("default-src 'self'; "
       # Reflex's runtime evaluates code it receives from its own server and React Router
       # inlines its hydration data, so scripts need 'unsafe-inline' and 'unsafe-eval';
       # they may still only come from this origin.
       "script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self' {ws}; "
       "worker-src 'self' blob:; object-src 'none'; base-uri 'self'; form-action 'self'; "
       "frame-ancestors 'none'")
_FIXED_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
]
_OWN_HEADER_NAMES = {b"content-security-policy"} | {name for name, _ in _FIXED_HEADERS}


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
    trust_proxy: bool = False
    """Believe X-Forwarded-Proto / CF-Connecting-IP from loopback peers (the tunnel client)."""
    session_seconds: int = 12 * 3600
    max_upload_bytes: int = 200 << 20
    max_body_bytes: int = 1 << 20
    logins_per_minute: int = 5
    """Failed logins per client per minute before 429."""
    logins_per_minute_total: int = 50
    """Failed logins from all clients together per minute before 429."""
    uploads_per_minute: int = 20

    @property
    def auth(self) -> bool:
        return bool(self.user and self.password_hash)

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
            config.trust_proxy = bool(data.get("trust_proxy"))
            config.session_seconds = int(float(data.get("session_hours", 12)) * 3600)
        return config


@dataclass
class Session:
    via: str
    """"cookie", "basic" or "open" (no login configured)."""
    key: str
    """Who to count for per-session rate limits (the cookie's session, all Basic clients
    together, or the client address without a login)."""
    jti: str | None = None
    expires: float | None = None


class Request:
    """What the gate reads from an ASGI scope."""

    def __init__(self, scope: dict, trust_proxy: bool) -> None:
        self.scope = scope
        self.websocket = scope["type"] == "websocket"
        self.method = scope.get("method", "GET").upper()
        self.path = scope.get("path", "/")
        self.headers: dict[str, list[str]] = {}
        for name, value in scope.get("headers", []):
            self.headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        peer = (scope.get("client") or ("", 0))[0] or ""
        proxied = trust_proxy and peer in ("127.0.0.1", "::1")
        forwarded = self.header("cf-connecting-ip") or (self.header("x-forwarded-for") or "").split(",")[-1].strip()
        self.client = forwarded if proxied and forwarded else peer
        self.https = scope.get("scheme") in ("https", "wss") or (
            proxied and (self.header("x-forwarded-proto") or "").lower() == "https")

    def header(self, name: str) -> str | None:
        """The header's value; None when absent or sent more than once (ambiguous)."""
        values = self.headers.get(name)
        return values[0] if values and len(values) == 1 else None

    @property
    def host(self) -> str:
        return (self.header("host") or "").strip().lower()

    def cookie(self, name: str) -> str | None:
        for part in ";".join(self.headers.get("cookie", [])).split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None

    def wants_page(self) -> bool:
        accept = self.header("accept") or ""
        return self.method in ("GET", "HEAD") and (
            "text/html" in accept or self.header("sec-fetch-dest") == "document")


class Gate:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app, config: GateConfig | None = None) -> None:
        self.app = app
        self.config = config or GateConfig.from_env()
        self.login_limit = RateLimiter(self.config.logins_per_minute)
        self.login_limit_total = RateLimiter(self.config.logins_per_minute_total)
        self.upload_limit = RateLimiter(self.config.uploads_per_minute)
        self._revoked: dict[str, float] = {}
        self._sockets: dict[str, set[asyncio.Event]] = {}
        self._basic_ok: dict[bytes, float] = {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        req = Request(scope, self.config.trust_proxy)
        problem = self._host_origin_problem(req)
        if problem:
            return await self._refuse(req, receive, send, *problem)
        if not req.websocket and req.path in ("/login", "/logout"):
            return await self._own_route(req, receive, send)
        session, wait = self._authenticate(req)
        if session is None:
            return await self._unauthenticated(req, receive, send, wait)
        state_changing = req.websocket or req.method not in SAFE_METHODS
        if state_changing and session.via == "cookie" and not req.header("origin"):
            return await self._refuse(req, receive, send, 403, "a cookie-authenticated request must carry Origin")
        if req.websocket:
            return await self._websocket(req, session, receive, send)
        return await self._http(req, session, receive, send)

    # ---- host and origin ---------------------------------------------------------------

    def _allowed_hosts(self, scope: dict) -> set[str]:
        hosts = set(self.config.hosts)
        address, port = (scope.get("server") or (None, None))[:2]
        if port:
            hosts |= {f"{name}:{port}" for name in LOOPBACK}
            if address and address not in ("0.0.0.0", "::"):
                hosts.add(f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
        return hosts

    def _host_origin_problem(self, req: Request) -> tuple[int, str] | None:
        """(status, reason) when the Host is not this server or the Origin is foreign."""
        allowed = self._allowed_hosts(req.scope)
        if req.host not in allowed:
            return 400, f"unknown Host {req.host!r}"
        origin = req.header("origin")
        if origin is None:
            return (403, "duplicate Origin") if req.headers.get("origin") else None
        if origin == "null" and req.header("sec-fetch-site") == "same-origin":
            # With Referrer-Policy: no-referrer, browsers send `Origin: null` on their own
            # same-origin form posts and fetches; Sec-Fetch-Site (which pages cannot set) vouches.
            return None
        parts = urlsplit(origin)
        netloc = (parts.netloc or "").lower()
        default = {"http": ":80", "https": ":443"}.get(parts.scheme)
        if default and netloc.endswith(default):
            netloc = netloc[: -len(default)]
        if parts.scheme not in ("http", "https") or netloc not in allowed:
            return 403, f"foreign origin {origin!r}"
        return None

    # ---- authentication ----------------------------------------------------------------

    def _authenticate(self, req: Request) -> tuple[Session | None, int]:
        """The caller's session, or (None, seconds to wait when login attempts are limited)."""
        if not self.config.auth:
            return Session("open", key=f"ip:{req.client}"), 0
        session = self._cookie_session(req.cookie(COOKIE))
        if session:
            return session, 0
        authorization = req.header("authorization") or ""
        if authorization[:6].lower() == "basic ":
            return self._basic_session(req, authorization[6:].strip())
        return None, 0

    def _cookie_session(self, token: str | None) -> Session | None:
        if not token:
            return None
        try:
            claims = jwt.decode(token, self.config.secret, algorithms=["HS256"], audience=AUDIENCE,
                                options={"require": ["exp", "iat", "jti", "sub"]})
        except jwt.InvalidTokenError:
            return None
        if not hmac.compare_digest(str(claims["sub"]).encode(), self.config.user.encode()):
            return None
        if claims["jti"] in self._revoked:
            return None
        return Session("cookie", key=f"session:{claims['jti']}", jti=claims["jti"], expires=float(claims["exp"]))

    def _login_wait(self, req: Request) -> int:
        return max(self.login_limit.retry_after(req.client), self.login_limit_total.retry_after("*"))

    def _check_login(self, req: Request, user: str, password: str) -> bool:
        """Constant-time check of a login; a failure counts against the client's limit."""
        user_ok = hmac.compare_digest(user.encode(), self.config.user.encode())
        password_ok = verify_password(password, self.config.password_hash)
        if user_ok and password_ok:
            return True
        self.login_limit.record(req.client)
        self.login_limit_total.record("*")
        return False

    def _basic_session(self, req: Request, encoded: str) -> tuple[Session | None, int]:
        # Scripts send Basic with every request; remember good credentials briefly so
        # each request does not pay for scrypt again.
        fingerprint = hmac.new(self.config.secret.encode(), encoded.encode(), hashlib.sha256).digest()
        if self._basic_ok.get(fingerprint, 0) > time.monotonic():
            return Session("basic", key="basic"), 0
        wait = self._login_wait(req)
        if wait:
            return None, wait
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            user, password = "", ""
        if not self._check_login(req, user, password):
            return None, 0
        if len(self._basic_ok) > 1000:
            self._basic_ok.clear()
        self._basic_ok[fingerprint] = time.monotonic() + 600
        return Session("basic", key="basic"), 0

    def issue_token(self) -> tuple[str, str]:
        """A new session JWT and its id."""
        now = int(time.time())
        jti = secrets.token_urlsafe(16)
        claims = {"sub": self.config.user, "jti": jti, "iat": now, "aud": AUDIENCE,
                  "exp": now + self.config.session_seconds}
        return jwt.encode(claims, self.config.secret, algorithm="HS256"), jti

    def revoke(self, jti: str, expires: float) -> None:
        """End a session: its cookie stops working and its open websockets are closed."""
        now = time.time()
        self._revoked = {k: v for k, v in self._revoked.items() if v > now}
        self._revoked[jti] = expires
        for closed in self._sockets.pop(jti, set()):
            closed.set()

    # ---- the gate's own pages ----------------------------------------------------------

    async def _own_route(self, req: Request, receive, send) -> None:
        if not self.config.auth:
            return await self._redirect(req, send, "/")
        if req.path == "/logout":
            session = self._cookie_session(req.cookie(COOKIE))
            if session:
                self.revoke(session.jti, session.expires or time.time())
            return await self._redirect(req, send, "/login", cookie=f"{COOKIE}=; Max-Age=0")
        if req.method == "POST":
            return await self._login_post(req, receive, send)
        next_path = _safe_next(parse_qs(req.scope.get("query_string", b"").decode("latin-1")).get("next", ["/"])[0])
        if self._cookie_session(req.cookie(COOKIE)):
            return await self._redirect(req, send, next_path)
        await self._respond(req, send, 200, login_page(next_path), "text/html; charset=utf-8")

    async def _login_post(self, req: Request, receive, send) -> None:
        body = await _read_body(receive, 8192)
        form = parse_qs((body or b"").decode("utf-8", "replace"))
        next_path = _safe_next(form.get("next", ["/"])[0])
        wait = self._login_wait(req)
        if wait:
            return await self._respond(req, send, 429, login_page(next_path, f"Too many attempts; wait {wait} s."),
                                       "text/html; charset=utf-8", extra=[(b"retry-after", str(wait).encode())])
        user, password = form.get("user", [""])[0], form.get("password", [""])[0]
        if body is None or not self._check_login(req, user, password):
            return await self._respond(req, send, 401, login_page(next_path, "Wrong user name or password."),
                                       "text/html; charset=utf-8")
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
            query = req.scope.get("query_string", b"").decode("latin-1")
            target = req.path + (f"?{query}" if query else "")
            return await self._redirect(req, send, f"/login?next={quote(_safe_next(target), safe='')}")
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
                message = {**message, "headers": self._secure_headers(req, message.get("headers", []))}
            await send(message)

        await self.app(req.scope, counted_receive, guarded_send)
        if too_big and not started:
            await self._respond(req, send, 413, b'{"error": "request body too large"}\n', "application/json")

    async def _websocket(self, req: Request, session: Session, receive, send) -> None:
        """Pass the socket on, closing it when its session is revoked or expires."""
        ended = asyncio.Event()
        if session.jti:
            self._sockets.setdefault(session.jti, set()).add(ended)
        pending: asyncio.Future | None = None
        shut = False

        async def guarded_receive():
            nonlocal pending, shut
            if shut:
                return {"type": "websocket.disconnect", "code": 1008}
            if pending is None:
                pending = asyncio.ensure_future(receive())
            waiter = asyncio.ensure_future(ended.wait())
            timeout = None if session.expires is None else max(0.0, session.expires - time.time())
            done, _ = await asyncio.wait({pending, waiter}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if pending in done:
                message, pending = pending.result(), None
                return message
            shut = True
            with suppress(Exception):
                await send({"type": "websocket.close", "code": 1008, "reason": "session ended"})
            return {"type": "websocket.disconnect", "code": 1008}

        async def guarded_send(message):
            if not shut:
                await send(message)

        try:
            await self.app(req.scope, guarded_receive, guarded_send)
        finally:
            if session.jti:
                self._sockets.get(session.jti, set()).discard(ended)
            if pending is not None and not pending.done():
                pending.cancel()

    # ---- responses ---------------------------------------------------------------------

    def _secure_headers(self, req: Request, headers) -> list[tuple[bytes, bytes]]:
        kept = [(k, v) for k, v in headers if k.lower() not in _OWN_HEADER_NAMES]
        ws = f"ws://{req.host} wss://{req.host}" if req.host else ""
        return kept + _FIXED_HEADERS + [(b"content-security-policy", CSP.format(ws=ws).encode())]

    async def _respond(self, req: Request, send, status: int, body: bytes, content_type: str,
                       extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store"), *(extra or [])]
        await send({"type": "http.response.start", "status": status,
                    "headers": self._secure_headers(req, headers)})
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


def _safe_next(target: str) -> str:
    """Only same-site paths: no scheme, no host, no `//` or backslash tricks."""
    if not target.startswith("/") or target.startswith(("//", "/\\")) or any(c in target for c in "\r\n\\"):
        return "/"
    return target


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
    """`rx.App(api_transformer=wrap)`: the gate around the whole server, configured from env."""
    return Gate(app, GateConfig.from_env())
