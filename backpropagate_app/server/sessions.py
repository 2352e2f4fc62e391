"""Who is calling the gate: signed session cookies (JWT), HTTP Basic for scripts, logout
(revocation, which also closes the session's websockets) and the login rate limits.

Used by `gate.Gate`; it holds one `Sessions` per server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import jwt

from backpropagate_app.server.limits import RateLimiter
from backpropagate_core.serve.credentials import verify_password

if TYPE_CHECKING:
    from backpropagate_app.server.policy import Request

COOKIE = "bp_session"
AUDIENCE = "backpropagate-ui"
BASIC_REMEMBER_S = 600
"""How long good Basic credentials are remembered, so scripts do not pay scrypt per request."""
SLOWDOWN_AFTER = 20
"""Failed logins (all clients together, per minute) after which each further failure waits."""
SLOWDOWN_STEP_S, SLOWDOWN_MAX_S = 0.25, 10.0


class LoginSettings(Protocol):
    """What sessions need of the gate's settings (`gate.GateConfig`)."""

    user: str | None
    password_hash: str | None
    secret: str
    signing_key: str
    session_seconds: int
    logins_per_minute: int

    @property
    def auth(self) -> bool: ...


@dataclass
class Session:
    via: str
    """"cookie", "basic" or "open" (no login configured)."""
    key: str
    """Who to count for per-session rate limits (the cookie's session, all Basic clients
    together, or the client address without a login)."""
    jti: str | None = None
    expires: float | None = None


class Sessions:
    """Checks and issues sessions for one server; see the module docstring."""

    def __init__(self, config: LoginSettings) -> None:
        self.config = config
        self.login_limit = RateLimiter(config.logins_per_minute)
        # Failures against the one user from every client: they slow each further failure
        # down rather than lock everyone out, so nobody can keep the real user from logging in.
        self.failures = RateLimiter(10**9)
        self._revoked: dict[str, float] = {}
        self._sockets: dict[str, set[asyncio.Event]] = {}
        self._basic_ok: dict[bytes, float] = {}

    async def authenticate(self, req: "Request") -> tuple[Session | None, int]:
        """The caller's session, or (None, seconds to wait when login attempts are limited)."""
        if not self.config.auth:
            return Session("open", key=f"ip:{req.client}"), 0
        session = self.from_cookie(req.cookie(COOKIE))
        if session:
            return session, 0
        authorization = req.header("authorization") or ""
        if authorization[:6].lower() == "basic ":
            return await self._basic(req, authorization[6:].strip())
        return None, 0

    def from_cookie(self, token: str | None) -> Session | None:
        """The session a cookie's JWT names; None when missing, forged, expired or revoked."""
        if not token:
            return None
        try:
            claims = jwt.decode(token, self.config.signing_key, algorithms=["HS256"], audience=AUDIENCE,
                                options={"require": ["exp", "iat", "jti", "sub"]})
        except jwt.InvalidTokenError:
            return None
        if not hmac.compare_digest(str(claims["sub"]).encode(), self.config.user.encode()):
            return None
        if claims["jti"] in self._revoked:
            return None
        return Session("cookie", key=f"session:{claims['jti']}", jti=claims["jti"], expires=float(claims["exp"]))

    def login_wait(self, req: "Request") -> int:
        """Seconds this client must wait: after `logins_per_minute` failures from it (its
        address, or its IPv6 /64), every login attempt of it, right or wrong, gets 429
        until the minute has passed. A success never clears the count."""
        return self.login_limit.retry_after(req.client)

    async def check_login(self, req: "Request", user: str, password: str) -> bool:
        """Constant-time check of a login, scrypt off the event loop; a failure counts
        against the client's limit and, once failures pile up, waits a growing while."""
        user_ok = hmac.compare_digest(user.encode(), self.config.user.encode())
        password_ok = await asyncio.to_thread(verify_password, password, self.config.password_hash)
        if user_ok and password_ok:
            return True
        self.login_limit.record(req.client)
        self.failures.record("*")
        await asyncio.sleep(self.failure_delay())
        return False

    def failure_delay(self) -> float:
        """How long a failed login waits now: nothing until SLOWDOWN_AFTER failures in the
        last minute, then a quarter second more per failure, at most SLOWDOWN_MAX_S."""
        hits = self.failures._hits.get("*") or ()
        recent = sum(1 for t in hits if t > time.monotonic() - self.failures.window)
        return min(SLOWDOWN_MAX_S, SLOWDOWN_STEP_S * max(0, recent - SLOWDOWN_AFTER))

    async def _basic(self, req: "Request", encoded: str) -> tuple[Session | None, int]:
        # Scripts send Basic with every request; remember good credentials briefly so
        # each request does not pay for scrypt again. Remembered credentials are proven,
        # not guessed, so they pass even while the client is over its failure limit.
        fingerprint = hmac.new(self.config.secret.encode(), encoded.encode(), hashlib.sha256).digest()
        if self._basic_ok.get(fingerprint, 0) > time.monotonic():
            return Session("basic", key="basic"), 0
        wait = self.login_wait(req)
        if wait:
            return None, wait
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            user, password = "", ""
        if not await self.check_login(req, user, password):
            return None, 0
        if len(self._basic_ok) > 1000:
            self._basic_ok.clear()
        self._basic_ok[fingerprint] = time.monotonic() + BASIC_REMEMBER_S
        return Session("basic", key="basic"), 0

    def issue_token(self) -> tuple[str, str]:
        """A new session JWT and its id."""
        now = int(time.time())
        jti = secrets.token_urlsafe(16)
        claims = {"sub": self.config.user, "jti": jti, "iat": now, "aud": AUDIENCE,
                  "exp": now + self.config.session_seconds}
        return jwt.encode(claims, self.config.signing_key, algorithm="HS256"), jti

    def revoke(self, jti: str, expires: float) -> None:
        """End a session: its cookie stops working and its open websockets are closed."""
        now = time.time()
        self._revoked = {k: v for k, v in self._revoked.items() if v > now}
        self._revoked[jti] = expires
        for closed in self._sockets.pop(jti, set()):
            closed.set()

    def watch(self, jti: str, ended: asyncio.Event) -> None:
        """Set `ended` when session `jti` is revoked (an open websocket of that session)."""
        self._sockets.setdefault(jti, set()).add(ended)

    def unwatch(self, jti: str, ended: asyncio.Event) -> None:
        self._sockets.get(jti, set()).discard(ended)
