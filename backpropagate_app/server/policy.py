"""What the gate reads from a request and what it allows: the Host and Origin rules
(against DNS rebinding and cross-site requests), the security headers it adds to every
response, and which redirect targets are safe.

Pure functions of the request; `gate.Gate` applies them.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import unquote, urlsplit

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
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
_OWN_HEADER_NAMES = {b"content-security-policy", b"strict-transport-security"} | {
    name for name, _ in _FIXED_HEADERS}


CLIENT_HEADER = {"cloudflared": "cf-connecting-ip", "ngrok": "x-forwarded-for"}
"""The one header each tunnel client sets to the real client's address. cloudflared
overwrites CF-Connecting-IP; ngrok appends the client to X-Forwarded-For, so only its
last hop is ngrok's own. Any other header is whatever the caller chose to send."""


def client_key(address: str) -> str:
    """Who to count for rate limits: the address, or its /64 for IPv6 (one machine or home
    gets a whole /64, and would otherwise have 2^64 fresh identities)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


class Request:
    """What the gate reads from an ASGI scope."""

    def __init__(self, scope: dict, proxy: str | None) -> None:
        self.scope = scope
        self.websocket = scope["type"] == "websocket"
        self.method = scope.get("method", "GET").upper()
        self.path = scope.get("path", "/")
        self.headers: dict[str, list[str]] = {}
        for name, value in scope.get("headers", []):
            self.headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        peer = (scope.get("client") or ("", 0))[0] or ""
        # Only the tunnel client that `--share` started talks to us from loopback with the
        # real address; believe exactly its header, and nothing when not sharing.
        proxied = proxy in CLIENT_HEADER and peer in ("127.0.0.1", "::1")
        forwarded = (self.header(CLIENT_HEADER[proxy]) or "").split(",")[-1].strip() if proxied else ""
        self.client = client_key(forwarded if forwarded else peer)
        self.https = scope.get("scheme") in ("https", "wss") or (
            proxied and (self.header("x-forwarded-proto") or "").lower() == "https")

    def header(self, name: str) -> str | None:
        """The header's value; None when absent or sent more than once (ambiguous)."""
        values = self.headers.get(name)
        return values[0] if values and len(values) == 1 else None

    @property
    def host(self) -> str:
        return (self.header("host") or "").strip().lower()

    @property
    def query(self) -> str:
        return self.scope.get("query_string", b"").decode("latin-1")

    def cookie(self, name: str) -> str | None:
        for part in ";".join(self.headers.get("cookie", [])).split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None

    def passed_on(self, session_cookie: str) -> dict:
        """The scope the app gets once the gate has let the request in: without the
        Authorization header and the session cookie. Nothing behind the gate needs them, and
        Reflex logs a failing event together with its connection's headers."""
        name = session_cookie.encode("latin-1")
        headers = []
        for key, value in self.scope.get("headers", []):
            lowered = key.lower()
            if lowered == b"authorization":
                continue
            if lowered == b"cookie":
                kept = [part for part in value.split(b";") if part.strip().partition(b"=")[0] != name]
                value = b";".join(kept).strip()
                if not value:
                    continue
            headers.append((key, value))
        return {**self.scope, "headers": headers}

    def wants_page(self) -> bool:
        accept = self.header("accept") or ""
        return self.method in ("GET", "HEAD") and (
            "text/html" in accept or self.header("sec-fetch-dest") == "document")


def allowed_hosts(configured: frozenset[str], scope: dict) -> set[str]:
    """Host header values this server answers: the configured ones, loopback:port and the
    address:port it listens on."""
    hosts = set(configured)
    address, port = (scope.get("server") or (None, None))[:2]
    if port:
        hosts |= {f"{name}:{port}" for name in LOOPBACK}
        if address and address not in ("0.0.0.0", "::"):
            hosts.add(f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
    return hosts


def host_origin_problem(req: Request, allowed: set[str]) -> tuple[int, str] | None:
    """(status, reason) when the Host is not this server or the Origin is foreign."""
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


HSTS = (b"strict-transport-security", b"max-age=31536000")
"""Sent on https only (the `--share` tunnel): browsers then never try the link over plain http."""


def secure_headers(host: str, headers, https: bool = False) -> list[tuple[bytes, bytes]]:
    """`headers` with the gate's security headers in place of any the app set itself."""
    kept = [(k, v) for k, v in headers if k.lower() not in _OWN_HEADER_NAMES]
    ws = f"ws://{host} wss://{host}" if host else ""
    return kept + _FIXED_HEADERS + [(b"content-security-policy", CSP.format(ws=ws).encode())] + \
        ([HSTS] if https else [])


def safe_next(target: str) -> str:
    """Only same-site paths: no scheme, no host, no `//`, backslash or control-character
    tricks (browsers drop a TAB or newline inside a URL, so `/<TAB>/evil.example` would
    become `//evil.example`), also once or twice percent-decoded."""
    text = target
    for _ in range(3):
        if not _plain_path(text):
            return "/"
        text = unquote(text)
    return target


def _plain_path(text: str) -> bool:
    if not text.startswith("/") or text.startswith(("//", "/\\")):
        return False
    return not any(ord(c) < 0x20 or ord(c) == 0x7f or c == "\\" for c in text)
