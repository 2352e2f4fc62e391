"""The ASGI gate against a tiny ASGI app: no Reflex, no server, fast."""

import asyncio
import concurrent.futures
import base64
import time

import jwt
import pytest

from backpropagate_app.server import limits
from backpropagate_app.server.gate import COOKIE, Gate, GateConfig
from backpropagate_core.serve.credentials import hash_password
from backpropagate_core.errors import BackpropError

HOST = "127.0.0.1:7862"
ORIGIN = "http://127.0.0.1:7862"
PASSWORD = "correct horse battery"


def run_async(coro):
    """asyncio.run in a fresh thread: browser tests earlier in the session keep
    Playwright's event loop running in the main thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()



class TinyApp:
    """Answers 200 to any request, echoes websocket text, and records what reached it."""

    def __init__(self):
        self.reached: list[str] = []
        self.ws_closed_by_gate = False

    async def __call__(self, scope, receive, send):
        self.reached.append(f"{scope['type']} {scope['path']}")
        if scope["type"] == "http":
            body = b""
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/html"), (b"x-frame-options", b"SAMEORIGIN")]})
            await send({"type": "http.response.body", "body": b"app:" + body[:20]})
        else:
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    self.ws_closed_by_gate = message.get("code") == 1008
                    return
                await send({"type": "websocket.send", "text": "echo:" + message.get("text", "")})


def make(auth=True, **kwargs) -> tuple[Gate, TinyApp]:
    app = TinyApp()
    config = GateConfig(user="alice" if auth else None,
                        password_hash=hash_password(PASSWORD) if auth else None,
                        secret="s" * 40, **kwargs)
    return Gate(app, config), app


def scope_for(path="/", method="GET", headers=None, kind="http", client="10.0.0.5", query=b""):
    hdrs = {"host": HOST, **(headers or {})}
    return {"type": kind, "method": method, "path": path, "query_string": query, "scheme": "http",
            "server": ("127.0.0.1", 7862), "client": (client, 50000),
            "headers": [(k.lower().encode(), v.encode()) for k, v in hdrs.items() if v is not None]}


def request(gate, path="/", method="GET", headers=None, body=b"", client="10.0.0.5", query=b""):
    """Drive one HTTP request; returns (status, headers dict, body)."""
    sent = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    run_async(gate(scope_for(path, method, headers, client=client, query=query), receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers_out = {}
    for k, v in start["headers"]:
        headers_out.setdefault(k.decode(), v.decode())
    cookies = [v.decode() for k, v in start["headers"] if k == b"set-cookie"]
    headers_out["set-cookie"] = cookies[0] if cookies else None
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], headers_out, body_out


def login(gate, client="10.0.0.5") -> str:
    status, headers, _ = request(gate, "/login", "POST",
                                 {"content-type": "application/x-www-form-urlencoded", "origin": ORIGIN},
                                 f"user=alice&password={PASSWORD.replace(' ', '+')}&next=/train".encode(),
                                 client=client)
    assert status == 303 and headers["location"] == "/train"
    return headers["set-cookie"].split(";")[0].split("=", 1)[1]


def basic(user, password) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---- login and sessions -------------------------------------------------------------------

def test_pages_redirect_to_login_and_api_gets_401():
    gate, app = make()
    status, headers, _ = request(gate, "/train", headers={"accept": "text/html"}, query=b"x=1")
    assert status == 303 and headers["location"] == "/login?next=%2Ftrain%3Fx%3D1"
    status, headers, _ = request(gate, "/_health")
    assert status == 401 and headers["www-authenticate"].startswith("Basic")
    status, headers, _ = request(gate, "/assets/app.js", headers={"sec-fetch-mode": "no-cors"})
    assert status == 401 and "www-authenticate" not in headers
    assert app.reached == []


def test_login_page_is_served_with_security_headers():
    gate, _ = make()
    status, headers, body = request(gate, "/login", query=b"next=/runs")
    assert status == 200 and b'name="password"' in body and b'value="/runs"' in body
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer" and headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


def test_right_login_sets_strict_httponly_cookie_and_reaches_app():
    gate, app = make()
    status, headers, _ = request(gate, "/login", "POST", {"origin": ORIGIN},
                                 f"user=alice&password={PASSWORD}&next=/train".encode())
    cookie = headers["set-cookie"]
    assert status == 303 and "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=43200" in cookie
    assert "Secure" not in cookie  # plain http on loopback
    token = cookie.split(";")[0].split("=", 1)[1]
    status, headers, body = request(gate, "/train", headers={"cookie": f"{COOKIE}={token}"})
    assert status == 200 and body == b"app:" and app.reached == ["http /train"]
    # The app's own weaker header is replaced, not duplicated.
    assert headers["x-frame-options"] == "DENY"


def test_cookie_is_secure_behind_https_tunnel():
    gate, _ = make(trust_proxy=True)
    _, headers, _ = request(gate, "/login", "POST", {"x-forwarded-proto": "https"},
                            f"user=alice&password={PASSWORD}".encode(), client="127.0.0.1")
    assert "; Secure" in headers["set-cookie"]


@pytest.mark.parametrize("user, password", [("alice", "wrong password"), ("bob", PASSWORD), ("", ""),
                                            ("alice", PASSWORD[:-1])])
def test_wrong_login_is_refused(user, password):
    gate, app = make()
    status, headers, body = request(gate, "/login", "POST", {}, f"user={user}&password={password}".encode())
    assert status == 401 and b"Wrong user name or password" in body and headers["set-cookie"] is None
    assert app.reached == []


def test_login_rate_limit_per_client_then_429():
    gate, _ = make()
    for _ in range(5):
        assert request(gate, "/login", "POST", {}, b"user=alice&password=nope", client="10.0.0.9")[0] == 401
    status, headers, _ = request(gate, "/login", "POST", {}, f"user=alice&password={PASSWORD}".encode(),
                                 client="10.0.0.9")
    assert status == 429 and 1 <= int(headers["retry-after"]) <= 60
    # Basic attempts from that client are limited too; other clients are not.
    assert request(gate, "/x", headers={"authorization": basic("alice", PASSWORD)}, client="10.0.0.9")[0] == 429
    assert request(gate, "/login", "POST", {}, f"user=alice&password={PASSWORD}".encode(),
                   client="10.0.0.10")[0] == 303


def test_tunnel_clients_are_told_apart_by_forwarded_ip():
    gate, _ = make(trust_proxy=True)
    for _ in range(5):
        request(gate, "/login", "POST", {"cf-connecting-ip": "1.1.1.1"}, b"user=a&password=b", client="127.0.0.1")
    assert request(gate, "/login", "POST", {"cf-connecting-ip": "1.1.1.1"}, b"user=a&password=b",
                   client="127.0.0.1")[0] == 429
    assert request(gate, "/login", "POST", {"cf-connecting-ip": "2.2.2.2"}, b"user=a&password=b",
                   client="127.0.0.1")[0] == 401


def test_forged_expired_and_foreign_tokens_are_refused():
    gate, app = make()
    now = int(time.time())
    good = {"sub": "alice", "jti": "j1", "iat": now, "exp": now + 600, "aud": "backpropagate-ui"}
    forged = [
        jwt.encode(good, "wrong-key-" * 4, algorithm="HS256"),
        jwt.encode({**good, "exp": now - 10}, "s" * 40, algorithm="HS256"),
        jwt.encode({**good, "sub": "mallory"}, "s" * 40, algorithm="HS256"),
        jwt.encode({**good, "aud": "other"}, "s" * 40, algorithm="HS256"),
        jwt.encode({k: v for k, v in good.items() if k != "jti"}, "s" * 40, algorithm="HS256"),
        jwt.encode(good, None, algorithm="none"),
        jwt.encode(good, "s" * 40, algorithm="HS256")[:-3] + "AAA",
        "not-a-jwt",
    ]
    for token in forged:
        assert request(gate, "/_health", headers={"cookie": f"{COOKIE}={token}"})[0] == 401
    assert app.reached == []


def test_basic_auth_for_scripts():
    gate, app = make()
    assert request(gate, "/_health", headers={"authorization": basic("alice", PASSWORD)})[0] == 200
    assert request(gate, "/_health", headers={"authorization": basic("alice", "nope-nope")})[0] == 401
    assert request(gate, "/_health", headers={"authorization": "Basic !!!notbase64"})[0] == 401
    # Scripts send no Origin; a POST with Basic is fine.
    assert request(gate, "/api", "POST", {"authorization": basic("alice", PASSWORD)}, b"{}")[0] == 200
    assert app.reached == ["http /_health", "http /api"]


def test_logout_clears_cookie_and_revokes_session():
    gate, _ = make()
    token = login(gate)
    status, headers, _ = request(gate, "/logout", headers={"cookie": f"{COOKIE}={token}"})
    assert status == 303 and headers["location"] == "/login" and "Max-Age=0" in headers["set-cookie"]
    # The old cookie no longer works even if a browser (or attacker) kept it.
    assert request(gate, "/_health", headers={"cookie": f"{COOKIE}={token}"})[0] == 401


def test_next_parameter_cannot_redirect_off_site():
    gate, _ = make()
    for evil in ["https://evil.example/", "//evil.example", "/\\evil.example", "javascript:alert(1)"]:
        status, headers, _ = request(gate, "/login", "POST", {},
                                     f"user=alice&password={PASSWORD}&next={evil}".encode())
        assert status == 303 and headers["location"] == "/"


# ---- host, origin, CSRF ---------------------------------------------------------------------

@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1:9999", "localhost", "", "127.0.0.1:7862.evil.example"])
def test_unknown_host_is_refused_even_with_valid_login(host):
    gate, app = make()
    token = login(gate)
    status, _, _ = request(gate, "/", headers={"host": host, "cookie": f"{COOKIE}={token}"})
    assert status == 400 and app.reached == []


def test_configured_and_loopback_hosts_are_accepted():
    gate, _ = make(auth=False, hosts=frozenset({"abc.trycloudflare.com"}))
    for host in ["localhost:7862", "127.0.0.1:7862", "[::1]:7862", "abc.trycloudflare.com", "LOCALHOST:7862"]:
        assert request(gate, "/", headers={"host": host})[0] == 200


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:7863",
                                    "http://127.0.0.1:7862.evil.example", "file://", "chrome-extension://x"])
def test_foreign_origin_is_refused(origin):
    gate, app = make()
    token = login(gate)
    status, _, _ = request(gate, "/_upload", "POST", {"origin": origin, "cookie": f"{COOKIE}={token}"}, b"x")
    assert status == 403
    assert request(gate, "/", headers={"origin": origin, "cookie": f"{COOKIE}={token}"})[0] == 403
    assert request(gate, "/login", "POST", {"origin": origin}, f"user=alice&password={PASSWORD}".encode())[0] == 403
    assert app.reached == []


def test_cookie_post_without_origin_is_refused_as_csrf():
    gate, app = make()
    token = login(gate)
    assert request(gate, "/_upload", "POST", {"cookie": f"{COOKIE}={token}"}, b"x")[0] == 403
    assert request(gate, "/_upload", "POST", {"cookie": f"{COOKIE}={token}", "origin": ORIGIN}, b"x")[0] == 200


def test_without_login_host_and_origin_checks_stay_on():
    gate, app = make(auth=False)
    assert request(gate, "/")[0] == 200
    assert request(gate, "/", headers={"host": "rebind.evil.example"})[0] == 400
    assert request(gate, "/_upload", "POST", {"origin": "https://evil.example"}, b"x")[0] == 403
    assert request(gate, "/login")[1]["location"] == "/"


# ---- bodies and uploads -----------------------------------------------------------------------

def test_oversized_bodies_get_413_and_never_reach_the_app():
    gate, app = make(auth=False, max_upload_bytes=1000, max_body_bytes=100)
    status, _, body = request(gate, "/api", "POST", {"content-length": "5000"}, b"x" * 5000)
    assert status == 413 and app.reached == []
    # A body longer than it claims is cut off while streaming.
    status, _, body = request(gate, "/api", "POST", {}, b"x" * 500)
    assert status == 413 and body.startswith(b'{"error"')
    status, _, _ = request(gate, "/_upload", "POST", {}, b"x" * 900)
    assert status == 200
    status, _, _ = request(gate, "/_upload", "POST", {"content-length": str(3 << 20)}, b"")
    assert status == 413


def test_upload_rate_limit_per_session():
    gate, _ = make(auth=False, uploads_per_minute=3)
    statuses = [request(gate, "/_upload", "POST", {}, b"x")[0] for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


def test_allow_limits_run_starts():
    for _ in range(6):
        limits.allow("start", key="test-key")
    with pytest.raises(BackpropError) as info:
        limits.allow("start", key="test-key")
    assert info.value.code == "UI_RATE_LIMITED"


# ---- websockets --------------------------------------------------------------------------------

async def _ws(gate, headers, messages=("hi",), revoke=None):
    """Open a websocket through the gate; returns the messages the client received."""
    inbox: asyncio.Queue = asyncio.Queue()
    outbox = []
    await inbox.put({"type": "websocket.connect"})
    for text in messages:
        await inbox.put({"type": "websocket.receive", "text": text})

    async def receive():
        return await inbox.get()

    async def send(message):
        outbox.append(message)

    task = asyncio.create_task(gate(scope_for("/_event", headers=headers, kind="websocket"), receive, send))
    await asyncio.sleep(0.05)
    if revoke:
        revoke()
        await asyncio.sleep(0.05)
    if not task.done():
        await inbox.put({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait_for(task, 2)
    return outbox


def test_websocket_without_login_is_refused_before_accept():
    gate, app = make()
    for headers in [{"origin": ORIGIN}, {"origin": ORIGIN, "cookie": f"{COOKIE}=forged"},
                    {"origin": ORIGIN, "authorization": basic("alice", "wrong-wrong")}]:
        out = run_async(_ws(gate, headers))
        assert [m["type"] for m in out] == ["websocket.close"]
    assert app.reached == []


def test_websocket_with_foreign_or_missing_origin_is_refused():
    gate, app = make()
    token = login(gate)
    for origin in ["https://evil.example", None]:
        out = run_async(_ws(gate, {"cookie": f"{COOKIE}={token}", "origin": origin}))
        assert [m["type"] for m in out] == ["websocket.close"]
    assert app.reached == []


def test_logout_closes_the_open_websocket():
    gate, app = make()
    token = login(gate)
    headers = {"cookie": f"{COOKIE}={token}", "origin": ORIGIN}
    out = run_async(_ws(gate, headers, revoke=lambda: request_in_thread(gate, token)))
    kinds = [m["type"] for m in out]
    assert kinds[:2] == ["websocket.accept", "websocket.send"] and kinds[-1] == "websocket.close"
    assert app.ws_closed_by_gate
    # A new upgrade with the revoked cookie is refused.
    assert [m["type"] for m in run_async(_ws(gate, headers))] == ["websocket.close"]


def request_in_thread(gate, token):
    # asyncio.run cannot nest; logout the way a second tab would, on the same loop.
    session = gate.sessions.from_cookie(token)
    gate.revoke(session.jti, session.expires)


def test_websocket_closes_when_session_expires():
    gate, app = make(session_seconds=1)
    token = login(gate)

    async def run():
        inbox: asyncio.Queue = asyncio.Queue()
        outbox = []
        await inbox.put({"type": "websocket.connect"})

        async def send(message):
            outbox.append(message)

        task = asyncio.create_task(gate(scope_for("/_event", headers={"cookie": f"{COOKIE}={token}", "origin": ORIGIN},
                                                  kind="websocket"), inbox.get, send))
        await asyncio.wait_for(task, 3)
        return outbox

    out = run_async(run())
    assert [m["type"] for m in out] == ["websocket.accept", "websocket.close"]


def test_open_mode_websocket_passes_with_own_origin():
    gate, app = make(auth=False)
    out = run_async(_ws(gate, {"origin": ORIGIN}))
    assert [m["type"] for m in out] == ["websocket.accept", "websocket.send"]
    out = run_async(_ws(gate, {"origin": "http://evil.example"}))
    assert [m["type"] for m in out] == ["websocket.close"]


def test_gate_config_from_gate_file(tmp_path, monkeypatch):
    from backpropagate_core.serve.credentials import Login, write_gate_file
    path = write_gate_file(Login("alice", PASSWORD), hosts=["abc.trycloudflare.com"], trust_proxy=True,
                           folder=tmp_path / "g")
    monkeypatch.setenv("BACKPROPAGATE_UI_GATE_FILE", str(path))
    config = GateConfig.from_env()
    assert config.auth and config.user == "alice" and config.trust_proxy
    assert "abc.trycloudflare.com" in config.hosts and PASSWORD not in path.read_text()
    monkeypatch.setenv("BACKPROPAGATE_SECURITY__JWT_SECRET", "fixed-secret-so-logins-survive-restarts")
    assert GateConfig.from_env().secret == "fixed-secret-so-logins-survive-restarts"
    monkeypatch.setenv("BACKPROPAGATE_SECURITY__JWT_SECRET", "short-guessable")
    with pytest.raises(BackpropError) as info:
        GateConfig.from_env()
    assert info.value.code == "CONFIG_INVALID" and "short-guessable" not in info.value.message
    monkeypatch.setenv("BACKPROPAGATE_SECURITY__JWT_SECRET", "fixed-secret-so-logins-survive-restarts")
    path.chmod(0o644)
    with pytest.raises(BackpropError):
        GateConfig.from_env()
    monkeypatch.setenv("BACKPROPAGATE_UI_GATE_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(OSError):
        GateConfig.from_env()
