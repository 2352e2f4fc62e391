"""What every attack test shares: the tally of requests tried and succeeded per category,
how a refusal and a leak are recognised, and request headers for the real app."""

from __future__ import annotations

import base64
import uuid

from tests.security.conftest import PASSWORD, USER
from tests.security.rawws import http, upgrade

DATASET = "reflex___state____state.backpropagate_app___pages___dataset____dataset_state"
TRAIN = "reflex___state____state.backpropagate_app___pages___train___page____train_state"
UPLOAD_HANDLER = DATASET + ".handle_upload"
EVIL = [b"root:x:0:", b"TOPSECRET-7f3a"]
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

TALLY: dict[str, list[int]] = {}
"""category -> [tried, succeeded]"""
SUCCESSES: list[str] = []


def record(category: str, succeeded: bool, what: str) -> None:
    tally = TALLY.setdefault(category, [0, 0])
    tally[0] += 1
    if succeeded:
        tally[1] += 1
        SUCCESSES.append(f"{category}: {what}")


def assert_none_succeeded(category: str) -> None:
    assert TALLY[category][0] > 0
    found = [s for s in SUCCESSES if s.startswith(category + ":")]
    assert found == [], "\n".join(found[:20])


def refused(status: int, headers: dict) -> bool:
    """Refused: an error status, or a redirect to the login page."""
    return status >= 400 or status == 0 or (300 <= status < 400 and headers.get("location", "").startswith("/login"))


def leaked(body: bytes) -> bool:
    return any(marker in body for marker in EVIL)


def hdrs(secured, *extra: tuple[str, str], host: str | None = None, origin: str | None = "own"):
    out = [("Host", host if host is not None else f"127.0.0.1:{secured.port}")]
    if origin == "own":
        out.append(("Origin", secured.url))
    elif origin is not None:
        out.append(("Origin", origin))
    return out + list(extra)


def upload_headers(secured, *extra, **kwargs):
    return hdrs(secured, ("Reflex-Client-Token", str(uuid.uuid4())), ("Reflex-Event-Handler", UPLOAD_HANDLER),
                *extra, **kwargs)


def ws_path() -> str:
    return f"/_event/?token={uuid.uuid4()}&EIO=4&transport=websocket"


def login_cookie(secured, source: str) -> str:
    status, headers, _ = http(secured.port, "POST", "/login",
                              hdrs(secured, ("Content-Type", "application/x-www-form-urlencoded")),
                              f"user={USER}&password={PASSWORD}&next=/".encode(), source=source)
    assert status == 303, (status, headers)
    return headers["set-cookie"].split(";")[0]


def try_http(category, secured, method, target, headers, body=b"", source="127.0.0.1") -> tuple[int, dict, bytes]:
    status, out, content = http(secured.port, method, target, headers, body, source=source)
    record(category, not refused(status, out) or leaked(content), f"{method} {target} -> {status}")
    return status, out, content


def try_ws(category, secured, headers, source="127.0.0.1") -> int:
    status, ws = upgrade(secured.port, ws_path(), dict(headers), source=source)
    if ws:
        ws.close()
    record(category, status == 101, f"websocket upgrade -> {status}")
    return status
