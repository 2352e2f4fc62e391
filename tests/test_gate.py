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
        self.headers: list[dict[bytes, bytes]] = []
        self.ws_closed_by_gate = False

    async def __call__(self, scope, receive, send):
        self.reached.append(f"{scope['type']} {scope['path']}")
        self.headers.append(dict(scope["headers"]))
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
    gate, _ = make(proxy="cloudflared")
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
    gate, _ = make(proxy="cloudflared")
    for _ in range(5):
        request(gate, "/login", "POST", {"cf-connecting-ip": "1.1.1.1"}, b"user=a&password=b", client="127.0.0.1")
    assert request(gate, "/login", "POST", {"cf-connecting-ip": "1.1.1.1"}, b"user=a&password=b",
                   client="127.0.0.1")[0] == 429
    assert request(gate, "/login", "POST", {"cf-connecting-ip": "2.2.2.2"}, b"user=a&password=b",
                   client="127.0.0.1")[0] == 401


def test_forged_expired_and_foreign_tokens_are_refused():
    gate, app = make()
    key = gate.config.signing_key  # the claims are checked even when the signature is right
    now = int(time.time())
    good = {"sub": "alice", "jti": "j1", "iat": now, "exp": now + 600, "aud": "backpropagate-ui"}
    forged = [
        jwt.encode(good, "wrong-key-" * 4, algorithm="HS256"),
        jwt.encode(good, "s" * 40, algorithm="HS256"),  # the raw secret alone is not the key
        jwt.encode({**good, "exp": now - 10}, key, algorithm="HS256"),
        jwt.encode({**good, "sub": "mallory"}, key, algorithm="HS256"),
        jwt.encode({**good, "aud": "other"}, key, algorithm="HS256"),
        jwt.encode({k: v for k, v in good.items() if k != "jti"}, key, algorithm="HS256"),
        jwt.encode(good, None, algorithm="none"),
        jwt.encode(good, key, algorithm="HS256")[:-3] + "AAA",
        "not-a-jwt",
    ]
    for token in forged:
        assert request(gate, "/_health", headers={"cookie": f"{COOKIE}={token}"})[0] == 401
    assert app.reached == []
    assert request(gate, "/_health", headers={"cookie": f"{COOKIE}={jwt.encode(good, key, algorithm='HS256')}"})[0] == 200


def test_a_password_change_or_a_restart_ends_every_session():
    gate, _ = make()
    token = login(gate)
    assert request(gate, "/_health", headers={"cookie": f"{COOKIE}={token}"})[0] == 200
    new_password = Gate(TinyApp(), GateConfig(user="alice", password_hash=hash_password("another long password"),
                                              secret="s" * 40))
    assert request(new_password, "/_health", headers={"cookie": f"{COOKIE}={token}"})[0] == 401
    restarted = Gate(TinyApp(), GateConfig(user="alice", password_hash=gate.config.password_hash))
    assert request(restarted, "/_health", headers={"cookie": f"{COOKIE}={token}"})[0] == 401  # a new secret
    pinned = Gate(TinyApp(), GateConfig(user="alice", password_hash=gate.config.password_hash, secret="s" * 40))
    assert request(pinned, "/_health", headers={"cookie": f"{COOKIE}={token}"})[0] == 200  # pinned on purpose


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
    # A GET (an <img src=/logout> on another site) signs nobody out.
    assert request(gate, "/logout", headers={"cookie": f"{COOKIE}={token}"})[0] == 405
    assert request(gate, "/_health", headers={"cookie": f"{COOKIE}={token}"})[0] == 200
    status, headers, _ = request(gate, "/logout", "POST", headers={"cookie": f"{COOKIE}={token}"})
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


def test_the_app_runs_at_most_three_workers_at_once():
    limits.room_for_worker(limits.MAX_WORKERS - 1)
    with pytest.raises(BackpropError) as info:
        limits.room_for_worker(limits.MAX_WORKERS)
    assert info.value.code == "UI_RATE_LIMITED" and "at most 3" in info.value.message


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


def test_websocket_message_over_the_size_cap_closes_the_socket():
    gate, app = make(max_ws_message_bytes=1000)
    token = login(gate)
    out = run_async(_ws(gate, {"cookie": f"{COOKIE}={token}", "origin": ORIGIN}, messages=("a" * 1000, "b" * 1001)))
    assert [m["type"] for m in out] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert out[-1]["code"] == 1009 and out[-1]["reason"] == "message too big"


def test_websocket_flood_closes_the_socket_after_the_burst():
    gate, app = make(ws_message_burst=5, ws_messages_per_second=1)
    token = login(gate)
    out = run_async(_ws(gate, {"cookie": f"{COOKIE}={token}", "origin": ORIGIN}, messages=["x"] * 20))
    kinds = [m["type"] for m in out]
    assert kinds == ["websocket.accept"] + ["websocket.send"] * 5 + ["websocket.close"]
    assert out[-1]["code"] == 1008 and out[-1]["reason"] == "too many messages"


def test_open_websockets_are_capped_per_session_and_in_all():
    gate, app = make(max_websockets_per_session=2, max_websockets=3)
    tokens = [login(gate), login(gate)]

    async def run():
        inboxes, tasks, sent = [], [], []

        async def open_one(token):
            inbox: asyncio.Queue = asyncio.Queue()
            await inbox.put({"type": "websocket.connect"})
            out: list = []
            scope = scope_for("/_event", headers={"cookie": f"{COOKIE}={token}", "origin": ORIGIN}, kind="websocket")
            tasks.append(asyncio.create_task(gate(scope, inbox.get, lambda m: _append(out, m))))
            inboxes.append(inbox)
            sent.append(out)
            await asyncio.sleep(0.05)
            return out[0]["type"] if out else None

        kinds = [await open_one(tokens[0]) for _ in range(3)]  # the third is over the session's cap
        kinds += [await open_one(tokens[1]) for _ in range(2)]  # the second is over the cap in all
        for inbox in inboxes:
            await inbox.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(asyncio.gather(*tasks), 2)
        kinds.append(await open_one(tokens[1]))  # closed ones no longer count
        await inboxes[-1].put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(tasks[-1], 2)
        return kinds

    assert run_async(run()) == ["websocket.accept", "websocket.accept", "websocket.close",
                                "websocket.accept", "websocket.close", "websocket.accept"]
    assert gate.open_sockets == {}


async def _append(out: list, message: dict) -> None:
    out.append(message)


def test_the_app_never_sees_credentials():
    gate, app = make()
    token = login(gate)
    request(gate, "/_health", headers={"cookie": f"theme=dark; {COOKIE}={token}; other=1"})
    request(gate, "/_health", headers={"authorization": basic("alice", PASSWORD), "cookie": f"{COOKIE}={token}"})
    run_async(_ws(gate, {"cookie": f"{COOKIE}={token}", "origin": ORIGIN, "authorization": "Basic eA=="}))
    assert app.headers[0][b"cookie"] == b"theme=dark; other=1"
    assert all(b"authorization" not in h and token.encode() not in h.get(b"cookie", b"") for h in app.headers)
    assert len(app.headers) == 3


def test_gate_config_from_gate_file(tmp_path, monkeypatch):
    from backpropagate_core.serve.credentials import Login, write_gate_file
    path = write_gate_file(Login("alice", PASSWORD), hosts=["abc.trycloudflare.com"], proxy="cloudflared",
                           folder=tmp_path / "g")
    monkeypatch.setenv("BACKPROPAGATE_UI_GATE_FILE", str(path))
    config = GateConfig.from_env()
    assert config.auth and config.user == "alice" and config.proxy == "cloudflared"
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


# ---- behind a tunnel, and the limiter's rules ---------------------------------------------

def _fail(gate, client, headers=None):
    return request(gate, "/login", "POST", headers or {}, b"user=alice&password=nope", client=client)[0]


def test_only_the_started_tunnels_own_client_header_is_believed():
    # ngrok forwards a client-sent CF-Connecting-IP untouched: it must not name a new client.
    gate, _ = make(proxy="ngrok")
    for i in range(5):
        assert _fail(gate, "127.0.0.1", {"cf-connecting-ip": f"9.9.9.{i}", "x-forwarded-for": "6.6.6.6"}) == 401
    assert _fail(gate, "127.0.0.1", {"cf-connecting-ip": "9.9.9.99", "x-forwarded-for": "6.6.6.6"}) == 429
    # ngrok appends the real client last; a client-sent first hop changes nothing.
    assert _fail(gate, "127.0.0.1", {"x-forwarded-for": "1.2.3.4, 6.6.6.6"}) == 429
    assert _fail(gate, "127.0.0.1", {"x-forwarded-for": "6.6.6.6, 7.7.7.7"}) == 401
    # Without --share no forwarding header counts: every guess comes from the peer.
    gate, _ = make()
    for i in range(5):
        _fail(gate, "127.0.0.1", {"cf-connecting-ip": f"8.8.8.{i}", "x-forwarded-for": f"5.5.5.{i}"})
    assert _fail(gate, "127.0.0.1", {"cf-connecting-ip": "8.8.8.200"}) == 429


def test_ipv6_clients_are_counted_by_their_64():
    gate, _ = make()
    for i in range(5):
        _fail(gate, f"2001:db8:1:2::{i + 1:x}")
    assert _fail(gate, "2001:db8:1:2:ffff::9") == 429
    assert _fail(gate, "2001:db8:1:3::1") == 401


def test_a_flood_of_failures_slows_them_down_but_never_locks_the_real_user_out(monkeypatch):
    from backpropagate_app.server import sessions

    monkeypatch.setattr(sessions, "SLOWDOWN_STEP_S", 0.001)
    gate, _ = make()
    for i in range(60):  # 60 clients, one guess each: more than the old global limit of 50
        assert _fail(gate, f"10.9.{i // 250}.{i % 250}") == 401
    assert gate.sessions.failure_delay() == pytest.approx(0.001 * (60 - sessions.SLOWDOWN_AFTER))
    assert login(gate, client="10.8.0.1")  # the right password from a fresh client still works


def test_a_client_over_its_limit_is_refused_even_with_the_right_password():
    """The rule: after 5 failures from one client, its every attempt is 429 for the rest of
    the minute, right or wrong; a success elsewhere resets nothing. Credentials this server
    already verified (a script's Basic header, remembered 10 minutes) are not guesses and pass."""
    gate, _ = make()
    assert request(gate, "/x", headers={"authorization": basic("alice", PASSWORD)}, client="10.0.0.7")[0] == 200
    for client in ("10.0.0.7", "10.0.0.8"):
        for _ in range(5):
            _fail(gate, client)
    assert login(gate, client="10.0.0.9")  # someone else logs in: the two counts stay
    assert request(gate, "/login", "POST", {}, f"user=alice&password={PASSWORD}".encode(), client="10.0.0.8")[0] == 429
    assert request(gate, "/x", headers={"authorization": basic("alice", PASSWORD)}, client="10.0.0.8")[0] == 200
    assert request(gate, "/x", headers={"authorization": basic("alice", "guess")}, client="10.0.0.7")[0] == 429


@pytest.mark.parametrize("code", [*range(0x20), 0x7f])
def test_next_with_any_control_character_stays_on_site(code):
    gate, _ = make()
    for raw in (f"/{chr(code)}/evil.example", f"/%{code:02X}/evil.example", f"/%25{code:02X}/evil.example"):
        status, headers, body = request(gate, "/login", query=f"next={raw}".encode("latin-1"))
        assert b"evil.example" not in body, (code, raw)
    token = login(gate)
    status, headers, _ = request(gate, "/login", query=b"next=/%09/evil.example",
                                 headers={"cookie": f"{COOKIE}={token}"})
    assert status == 303 and headers["location"] == "/"


def test_hsts_on_https_only():
    gate, _ = make(proxy="cloudflared")
    _, plain, _ = request(gate, "/login")
    _, tunnel, _ = request(gate, "/login", headers={"x-forwarded-proto": "https"}, client="127.0.0.1")
    assert "strict-transport-security" not in plain
    assert tunnel["strict-transport-security"].startswith("max-age=")
