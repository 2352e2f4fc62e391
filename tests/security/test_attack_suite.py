"""Attacks on the real app started with a login (see conftest.py).

Every page, static asset, API route, upload and the websocket is tried without
credentials, with forged/expired/wrong-key tokens, with wrong Basic credentials, from
foreign origins and hosts; uploads and dataset paths try path traversal (`..`, absolute,
symlinks, URL-encoded); uploads come oversized and malformed; output-folder settings
point at system and credential folders. None may succeed, nothing may be written outside
the sandbox, and the server must stay up. The counts per category, these and those of
test_attack_protocol.py (which runs first), are printed at the end.

Requests come from different loopback addresses (127.0.0.11, ...) so each category meets
the per-client login limit on its own, and the browser test (127.0.0.1) is not limited.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import uuid
import warnings
from pathlib import Path

import jwt
import pytest

from tests.security.attack import (BASIC, DATASET, SUCCESSES, TALLY, TRAIN, assert_none_succeeded, hdrs,
                                   leaked, login_cookie, record, try_http, try_ws, upload_headers, ws_path)
from tests.security.conftest import JWT_SECRET, PASSWORD, USER
from tests.security.rawws import ReflexSocket, http, multipart, upgrade

pytestmark = pytest.mark.slow

PAGES = ["/", "/dataset", "/train", "/multi-run", "/export", "/runs", "/runs/0123abcd", "/no-such-page",
         "/dataset?path=%2Fetc%2Fpasswd", "/404.html"]
API_GETS = ["/ping", "/_health", "/_all_routes", "/_upload/x.jsonl", "/_event/?EIO=4&transport=polling",
            "/favicon.ico", "/login/../train"]


@pytest.fixture(scope="module")
def assets(secured) -> list[str]:
    """The static files the built frontend loads, read from the index page."""
    status, _, body = http(secured.port, "GET", "/", hdrs(secured, ("Authorization", BASIC)))
    assert status == 200
    found = sorted(set(re.findall(r'/assets/[^"\'\s>]+\.(?:js|css)', body.decode())))
    assert len(found) >= 5
    return found[:16]


def files_with(marker: bytes, places: list[tuple[Path, int]], skip: list[Path]) -> list[Path]:
    """Files under each (folder, depth) place, not under `skip`, whose name or content holds `marker`.
    Logs and Reflex's own state/build folders are left out: they may mention names legitimately."""
    hits = []
    for root, depth in places:
        if not root.is_dir():
            continue
        for folder, dirs, names in os.walk(root):
            here = Path(folder)
            if any(here == s or s in here.parents for s in skip) or len(here.parts) - len(root.parts) >= depth:
                dirs[:] = []
            dirs[:] = [d for d in dirs if d not in ("node_modules", ".git", ".venv", ".tools", ".web", "web",
                                                    "states", ".states", "__pycache__")]
            if any(here == s or s in here.parents for s in skip):
                continue
            for name in names:
                path = here / name
                if name.endswith(".log"):
                    continue
                try:
                    if marker.decode() in name or (path.is_file() and path.stat().st_size < 1 << 20
                                                   and marker in path.read_bytes()):
                        hits.append(path)
                except OSError:
                    continue
    return hits


def escape_places(secured) -> list[tuple[Path, int]]:
    """Where an escaping upload would land: anywhere in the test's folder, directly in any
    folder above the uploads folder (/tmp included), the working folder, the home folder."""
    above = [(folder, 0) for folder in secured.uploads.parents if folder not in (secured.root,)]
    return [(secured.root, 4), *above, (Path.cwd(), 0), (Path.home(), 0)]


# ---- the harness can see success ------------------------------------------------------------

def test_controls_right_credentials_work(secured):
    """Without these, a refused attack could just mean a broken harness."""
    status, headers, body = http(secured.port, "GET", "/train", hdrs(secured, ("Authorization", BASIC)))
    assert status in (200, 307, 308) and headers["x-frame-options"] == "DENY"
    cookie = login_cookie(secured, "127.0.0.10")
    status, headers, _ = http(secured.port, "GET", "/", hdrs(secured, ("Cookie", cookie)))
    assert status == 200 and "frame-ancestors 'none'" in headers["content-security-policy"]
    status, ws = upgrade(secured.port, ws_path(), dict(hdrs(secured, ("Cookie", cookie))))
    assert status == 101
    ws.close()
    ctype, body = multipart([("control.jsonl", b'{"text": "a fine example"}\n')])
    status, _, _ = http(secured.port, "POST", "/_upload",
                        upload_headers(secured, ("Cookie", cookie), ("Content-Type", ctype)), body)
    assert status == 200 and (secured.uploads / "control.jsonl").is_file()


# ---- no credentials, forged tokens, wrong Basic ---------------------------------------------

def every_target(category, secured, assets, extra, source):
    for page in PAGES:
        for method in ("GET", "HEAD"):
            try_http(category, secured, method, page, hdrs(secured, ("Accept", "text/html"), *extra), source=source)
    for asset in assets:
        try_http(category, secured, "GET", asset, hdrs(secured, *extra), source=source)
    for api in API_GETS:
        try_http(category, secured, "GET", api, hdrs(secured, *extra), source=source)
    ctype, body = multipart([("x.jsonl", b'{"text": "unauthenticated upload"}\n')])
    try_http(category, secured, "POST", "/_upload", upload_headers(secured, ("Content-Type", ctype), *extra),
             body, source=source)
    for method, target in [("POST", "/api/run"), ("PUT", "/train"), ("DELETE", "/runs/x"),
                           ("POST", "/_event/?EIO=4&transport=polling")]:
        try_http(category, secured, method, target, hdrs(secured, *extra), b"{}", source=source)
    try_ws(category, secured, hdrs(secured, *extra), source=source)


def test_no_credentials(secured, assets):
    every_target("no credentials", secured, assets, [], "127.0.0.11")
    assert_none_succeeded("no credentials")


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyjwt warns that the key is short for HS512: that is the point
        return fn(*args, **kwargs)


def forged_tokens(secured) -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": USER, "jti": uuid.uuid4().hex, "iat": now, "exp": now + 600, "aud": "backpropagate-ui"}
    real = login_cookie(secured, "127.0.0.12").split("=", 1)[1]
    head, payload, signature = real.split(".")
    evil_payload = base64.urlsafe_b64encode(json.dumps({**claims, "sub": "root"}).encode()).rstrip(b"=").decode()
    http(secured.port, "POST", "/logout", hdrs(secured, ("Cookie", f"bp_session={real}")), source="127.0.0.12")
    return {
        "wrong key": jwt.encode(claims, "guessed-key-" * 4, algorithm="HS256"),
        "expired": jwt.encode({**claims, "iat": now - 7200, "exp": now - 60}, JWT_SECRET, algorithm="HS256"),
        "alg none": jwt.encode(claims, None, algorithm="none"),
        "HS512 right key": _quiet(jwt.encode, claims, JWT_SECRET, algorithm="HS512"),
        "other user": jwt.encode({**claims, "sub": "root"}, JWT_SECRET, algorithm="HS256"),
        "other audience": jwt.encode({**claims, "aud": "grafana"}, JWT_SECRET, algorithm="HS256"),
        "no expiry": jwt.encode({k: v for k, v in claims.items() if k != "exp"}, JWT_SECRET, algorithm="HS256"),
        "tampered payload": f"{head}.{evil_payload}.{signature}",
        "revoked by logout": real,
        "empty": "",
        "garbage": "a.b.c",
    }


def test_forged_expired_wrong_key_tokens(secured, assets):
    for name, token in forged_tokens(secured).items():
        cookie = ("Cookie", f"bp_session={token}")
        for page in PAGES[:3]:
            try_http("forged JWT", secured, "GET", page, hdrs(secured, ("Accept", "text/html"), cookie),
                     source="127.0.0.12")
        for target in [*assets[:2], "/_health", "/_all_routes", "/_upload/control.jsonl"]:
            try_http("forged JWT", secured, "GET", target, hdrs(secured, cookie), source="127.0.0.12")
        ctype, body = multipart([("forged.jsonl", b'{"text": "forged"}\n')])
        try_http("forged JWT", secured, "POST", "/_upload", upload_headers(secured, cookie, ("Content-Type", ctype)),
                 body, source="127.0.0.12")
        try_ws("forged JWT", secured, hdrs(secured, cookie), source="127.0.0.12")
    assert_none_succeeded("forged JWT")


def test_wrong_basic_credentials(secured, assets):
    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    variants = [basic(USER, "wrong-password"), basic("root", PASSWORD), basic(USER, PASSWORD + "x"),
                basic(USER, PASSWORD.upper()), basic(USER.upper(), PASSWORD), basic("", ""),
                basic(USER, PASSWORD[:-1]), basic(USER, "p\u00e4ssw\u00f6rd-\u2603"), basic(USER, "x" * 4000),
                "Basic !!!not-base64!!!", "Basic " + base64.b64encode(b"no-colon").decode(),
                "Bearer " + jwt.encode({"sub": USER}, "k" * 32, algorithm="HS256")]
    limited = 0
    for value in variants:
        auth = ("Authorization", value)
        for target in ["/", "/_health", assets[0]]:
            status, headers, _ = try_http("wrong Basic", secured, "GET", target, hdrs(secured, auth),
                                          source="127.0.0.13")
            limited += status == 429 and int(headers.get("retry-after", "0")) > 0
        ctype, body = multipart([("basic.jsonl", b'{"text": "wrong basic"}\n')])
        try_http("wrong Basic", secured, "POST", "/_upload", upload_headers(secured, auth, ("Content-Type", ctype)),
                 body, source="127.0.0.13")
        try_ws("wrong Basic", secured, hdrs(secured, auth), source="127.0.0.13")
    assert_none_succeeded("wrong Basic")
    assert limited > 0, "failed Basic logins were never rate limited"


def test_login_brute_force_is_rate_limited(secured):
    statuses = []
    for attempt in range(8):
        status, headers, _ = try_http("login brute force", secured, "POST", "/login",
                                      hdrs(secured, ("Content-Type", "application/x-www-form-urlencoded")),
                                      f"user={USER}&password=guess-{attempt}".encode(), source="127.0.0.14")
        statuses.append(status)
    # Even the right password is refused while the client is limited.
    status, headers, _ = try_http("login brute force", secured, "POST", "/login",
                                  hdrs(secured, ("Content-Type", "application/x-www-form-urlencoded")),
                                  f"user={USER}&password={PASSWORD}".encode(), source="127.0.0.14")
    assert statuses == [401] * 5 + [429] * 3 and status == 429
    assert 1 <= int(headers["retry-after"]) <= 60
    assert_none_succeeded("login brute force")


# ---- origin, host, CSRF -----------------------------------------------------------------------

def test_foreign_origin_and_csrf(secured):
    origins = ["https://evil.example", "null", "http://127.0.0.1:1", f"http://localhost.evil.example:{secured.port}",
               f"http://127.0.0.1:{secured.port}.evil.example", "http://[::1]:1", "file://", "chrome-extension://abc"]
    auth = ("Authorization", BASIC)
    for origin in origins:
        try_http("foreign Origin", secured, "GET", "/", hdrs(secured, auth, origin=origin), source="127.0.0.15")
        ctype, body = multipart([("origin.jsonl", b'{"text": "cross-site upload"}\n')])
        try_http("foreign Origin", secured, "POST", "/_upload",
                 upload_headers(secured, auth, ("Content-Type", ctype), origin=origin), body, source="127.0.0.15")
        try_http("foreign Origin", secured, "POST", "/login",
                 hdrs(secured, ("Content-Type", "application/x-www-form-urlencoded"), origin=origin),
                 f"user={USER}&password={PASSWORD}".encode(), source="127.0.0.15")
        try_ws("foreign Origin", secured, hdrs(secured, auth, origin=origin), source="127.0.0.15")
    # "null" is only believed with the browser's own Sec-Fetch-Site: same-origin.
    try_http("foreign Origin", secured, "POST", "/_upload",
             upload_headers(secured, auth, ("Sec-Fetch-Site", "cross-site"), origin="null"), b"x", source="127.0.0.15")
    # CSRF: a cookie-authenticated state change without Origin is refused.
    cookie = ("Cookie", login_cookie(secured, "127.0.0.15"))
    ctype, body = multipart([("csrf.jsonl", b'{"text": "csrf"}\n')])
    try_http("foreign Origin", secured, "POST", "/_upload", upload_headers(secured, cookie, ("Content-Type", ctype),
                                                                             origin=None), body, source="127.0.0.15")
    try_http("foreign Origin", secured, "POST", "/_upload",
             upload_headers(secured, cookie, ("Content-Type", ctype), ("Sec-Fetch-Site", "cross-site"), origin=None),
             body, source="127.0.0.15")
    try_ws("foreign Origin", secured, hdrs(secured, cookie, origin=None), source="127.0.0.15")
    assert_none_succeeded("foreign Origin")


def test_foreign_host(secured, assets):
    port = secured.port
    hosts = ["evil.example", f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}",
             f"localhost:{port}.evil.example", "", f"10.0.0.1:{port}", f"127.0.0.1:{port}@evil.example",
             f"rebind.127.0.0.1.nip.io:{port}"]
    auth = ("Authorization", BASIC)
    for host in hosts:
        try_http("foreign Host", secured, "GET", "/", hdrs(secured, auth, host=host), source="127.0.0.16")
        try_http("foreign Host", secured, "GET", assets[0], hdrs(secured, auth, host=host), source="127.0.0.16")
        ctype, body = multipart([("host.jsonl", b'{"text": "rebinding"}\n')])
        try_http("foreign Host", secured, "POST", "/_upload",
                 upload_headers(secured, auth, ("Content-Type", ctype), host=host), body, source="127.0.0.16")
        try_ws("foreign Host", secured, hdrs(secured, auth, host=host), source="127.0.0.16")
    # Two Host headers, the second one foreign.
    try_http("foreign Host", secured, "GET", "/", hdrs(secured, auth, ("Host", "evil.example")), source="127.0.0.16")
    assert_none_succeeded("foreign Host")


# ---- path traversal -------------------------------------------------------------------------------

def test_url_path_traversal(secured):
    auth = ("Authorization", BASIC)
    targets = ["/assets/../../../../../../etc/passwd", "/assets/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
               "/_upload/../../../../../../etc/passwd", "/_upload/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
               "/..%2f..%2f..%2f..%2fetc/passwd", "//etc/passwd", "/assets/..%5c..%5c..%5cetc%5cpasswd",
               "/_upload/..%2f..%2foutside%2fsecret.jsonl", f"/_upload/{secured.outside}/secret.jsonl",
               "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/_upload/%252e%252e/%252e%252e/etc/passwd",
               "/static/../../../../etc/passwd"]
    for target in targets:
        try_http("path traversal in URLs", secured, "GET", target, hdrs(secured, auth), source="127.0.0.17")
    assert_none_succeeded("path traversal in URLs")


def test_upload_name_traversal(secured):
    cookie = ("Cookie", login_cookie(secured, "127.0.0.18"))
    secured.uploads.mkdir(parents=True, exist_ok=True)
    (secured.uploads / "link.jsonl").symlink_to(secured.outside / "written-through-link.jsonl")
    (secured.uploads / "dirlink").symlink_to(secured.outside, target_is_directory=True)
    names = ["../../../../../../tmp/{m}.jsonl", "/tmp/{m}.jsonl", "..%2f..%2f..%2f{m}.jsonl",
             "..\\..\\..\\{m}.jsonl", "....//....//{m}.jsonl", "%2e%2e%2f%2e%2e%2f{m}.jsonl",
             "..%252f..%252f{m}.jsonl", "link.jsonl", "dirlink/{m}.jsonl", "..\uff0f..\uff0f{m}.jsonl",
             str(secured.outside) + "/{m}.jsonl", "C:\\Windows\\{m}.jsonl", "../outside/{m}.jsonl"]
    markers = []
    for i, pattern in enumerate(names):
        marker = f"bpatk-{i}-{uuid.uuid4().hex[:8]}"
        markers.append(marker)
        ctype, body = multipart([(pattern.format(m=marker), json.dumps({"text": marker}).encode() + b"\n")])
        status, _, _ = http(secured.port, "POST", "/_upload",
                            upload_headers(secured, cookie, ("Content-Type", ctype)), body, source="127.0.0.18")
        assert status in (200, 400, 403, 413, 422, 429)
    time.sleep(2)
    found = files_with(b"bpatk-", escape_places(secured), skip=[secured.uploads.resolve()])
    found += [p for p in secured.outside.iterdir() if p.name != "secret.jsonl"]
    for i, marker in enumerate(markers):
        escaped = [p for p in found if marker in p.name or (p.is_file() and marker.encode() in p.read_bytes())]
        record("path traversal in upload names", bool(escaped), f"{names[i]!r} wrote {escaped}")
    assert not (secured.outside / "written-through-link.jsonl").exists()
    assert_none_succeeded("path traversal in upload names")


def test_dataset_path_traversal_over_the_websocket(secured):
    """The browser sends dataset paths in events; anything outside the workspace is refused."""
    (secured.uploads / "secret-link.jsonl").symlink_to(secured.outside / "secret.jsonl")
    uploads = secured.uploads
    paths = ["/etc/passwd", str(secured.outside / "secret.jsonl"), str(uploads / ".." / ".." / "outside" / "secret.jsonl"),
             "../../outside/secret.jsonl", str(uploads / "secret-link.jsonl"), "secret-link.jsonl",
             "%2e%2e%2f%2e%2e%2foutside%2fsecret.jsonl", str(uploads) + "/%2e%2e/%2e%2e/outside/secret.jsonl",
             "~/.ssh/id_rsa", "/proc/self/environ"]
    token = str(uuid.uuid4())
    status, ws = upgrade(secured.port, f"/_event/?token={token}&EIO=4&transport=websocket",
                         dict(hdrs(secured, ("Authorization", BASIC))), source="127.0.0.19")
    assert status == 101
    sio = ReflexSocket(ws, token)
    try:
        for path in paths:
            sio.frames.clear()
            sio.emit_event(DATASET + ".pick", {"value": path}, "/dataset")
            answer = sio.wait_for(lambda t: '"error_rx_state_":{"code"' in t or "TOPSECRET" in t or "root:x:" in t, 60)
            seen = "\n".join(sio.frames).encode()
            record("path traversal in dataset paths", answer is None or leaked(seen), f"pick {path!r}")
        for path in paths[:4]:
            sio.frames.clear()
            sio.emit_event(TRAIN + ".set_model_choice", {"value": "smollm2-135m"}, "/train")
            sio.emit_event(TRAIN + ".set_dataset", {"value": path}, "/train")
            sio.emit_event(TRAIN + ".start", {}, "/train")
            answer = sio.wait_for(lambda t: '"start_error_rx_state_":{"code"' in t, 60)
            record("path traversal in dataset paths", answer is None or "INPUT_PATH_FORBIDDEN" not in answer,
                   f"train on {path!r}")
    finally:
        ws.close()
    from backpropagate_core.runs.store import RunStore
    started = [r.dataset for r in RunStore(secured.home).list()]
    assert not any("outside" in (d or "") or "passwd" in (d or "") for d in started)
    assert_none_succeeded("path traversal in dataset paths")


def test_output_dir_settings(secured, monkeypatch, tmp_path):
    """The output folder comes from settings; system and credential folders are refused at start."""
    from backpropagate_core.cli import ui as ui_mod
    from backpropagate_core.cli.app import main

    served = []
    monkeypatch.setattr(ui_mod, "serve", lambda *a, **k: served.append(a) or 0)
    link = tmp_path / "innocent-looking"
    link.symlink_to("/etc")
    monkeypatch.setenv("BACKPROPAGATE_UI_PASSWORD", PASSWORD)
    for value in ["/etc/backprop", "/var/tmp/../../etc/bp", str(link / "bp"), "~/.ssh", "~/.aws/bp",
                  "~/.config/gcloud/bp", "/", "~", "/etc/%2e%2e/etc", "/etc/..%2f..%2ftmp", "/usr/local/bp",
                  "/proc/self/cwd", "C:\\Windows\\System32", "/tmp", "~/.kube/../.gnupg/x"]:
        monkeypatch.setenv("BACKPROPAGATE_UI__OUTPUT_DIR", value)
        before = len(served)
        code = main(["ui", "--port", "1"])
        record("path traversal in output-dir settings", code != 1 or len(served) != before, value)
    assert_none_succeeded("path traversal in output-dir settings")


# ---- oversized and malformed uploads --------------------------------------------------------------

def test_oversized_uploads(secured):
    cookie = ("Cookie", login_cookie(secured, "127.0.0.20"))
    big_line = json.dumps({"text": "y" * 1000}).encode() + b"\n"
    cases = {
        "declared 50 MB": (upload_headers(secured, cookie, ("Content-Type", "multipart/form-data; boundary=b"),
                                          ("Content-Length", str(50 << 20))), b"--b--\r\n"),
        "3.5 MB body": (None, big_line * 3600),
        "2.5 MB body (over the app's 2 MB limit)": (None, big_line * 2600),
    }
    for name, (headers, payload) in cases.items():
        if headers is None:
            ctype, payload = multipart([(f"big-{len(payload)}.jsonl", payload)])
            headers = upload_headers(secured, cookie, ("Content-Type", ctype))
        status, _, body = http(secured.port, "POST", "/_upload", headers, payload, source="127.0.0.20")
        saved = [p for p in secured.uploads.iterdir() if p.name.startswith("big-")]
        record("oversized uploads", bool(saved), f"{name} -> {status}, saved {saved}")
    # Chunked, no length: cut off while streaming.
    chunk = b"x" * 65536
    stream = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(60)) + b"0\r\n\r\n"
    status, _, _ = http(secured.port, "POST", "/_upload",
                        upload_headers(secured, cookie, ("Content-Type", "multipart/form-data; boundary=b"),
                                       ("Transfer-Encoding", "chunked")), stream, source="127.0.0.20")
    record("oversized uploads", status < 400, f"chunked 3.9 MB -> {status}")
    # Other routes take small bodies only; the login form even less.
    status, _, _ = http(secured.port, "POST", "/api/anything", hdrs(secured, cookie), b"z" * (2 << 20),
                        source="127.0.0.20")
    record("oversized uploads", status < 400, f"2 MB POST elsewhere -> {status}")
    status, headers, _ = http(secured.port, "POST", "/login",
                              hdrs(secured, ("Content-Type", "application/x-www-form-urlencoded")),
                              f"user={USER}&password={PASSWORD}&pad=".encode() + b"p" * (1 << 20),
                              source="127.0.0.20")
    record("oversized uploads", status == 303, f"1 MB login form -> {status}")
    assert_none_succeeded("oversized uploads")


def test_malformed_uploads(secured):
    cookie = ("Cookie", login_cookie(secured, "127.0.0.21"))
    contents = {
        "mal-zip.jsonl": b"PK\x03\x04" + os.urandom(64), "mal-pickle.json": b"\x80\x04\x95" + os.urandom(32),
        "mal-elf.csv": b"\x7fELF\x02\x01\x01" + os.urandom(32), "mal-html.jsonl": b"<script>alert(1)</script>\n",
        "mal-notjson.json": b"hello world", "mal-fake.parquet": b'{"a": 1}\n', "mal-nul.jsonl": b'{"a":1}\x00\x00\n',
        "mal-shell.sh": b"#!/bin/sh\nid\n", "mal-model.pkl": b"\x80\x04K\x01.", "mal-exe.exe": b"MZ\x90\x00",
        "mal-empty.jsonl": b"", "mal-latin1.csv": b"a,b\n\xe9\xe8\xff,1\n", "mal-array.jsonl": b"[1, 2, 3]\n",
    }
    for name, content in contents.items():
        ctype, body = multipart([(name, content)])
        http(secured.port, "POST", "/_upload", upload_headers(secured, cookie, ("Content-Type", ctype)), body,
             source="127.0.0.21")
        record("malformed uploads", (secured.uploads / name).exists(), f"{name} was stored")
    ctype, good = multipart([("mal-structure.jsonl", b'{"text": "ok"}\n')])
    structural = [
        ("bad boundary", upload_headers(secured, cookie, ("Content-Type", "multipart/form-data; boundary=nope")), good),
        ("no boundary", upload_headers(secured, cookie, ("Content-Type", "multipart/form-data")), good),
        ("json body", upload_headers(secured, cookie, ("Content-Type", "application/json")), b'{"files": "x"}'),
        ("truncated", upload_headers(secured, cookie, ("Content-Type", ctype)), good[: len(good) // 2]),
        ("no reflex headers", hdrs(secured, cookie, ("Content-Type", ctype)), good),
        ("unknown handler", hdrs(secured, cookie, ("Content-Type", ctype), ("Reflex-Client-Token", "t"),
                                 ("Reflex-Event-Handler", "evil.handler")), good),
        ("non-upload handler", hdrs(secured, cookie, ("Content-Type", ctype), ("Reflex-Client-Token", "t"),
                                    ("Reflex-Event-Handler", TRAIN + ".start")), good),
    ]
    for name, headers, body in structural:
        status, _, _ = http(secured.port, "POST", "/_upload", headers, body, source="127.0.0.21")
        stored = (secured.uploads / "mal-structure.jsonl").exists()
        record("malformed uploads", stored, f"{name} -> {status}, stored={stored}")
    assert_none_succeeded("malformed uploads")


def test_upload_flood_is_rate_limited(secured):
    cookie = ("Cookie", login_cookie(secured, "127.0.0.22"))
    statuses = []
    for i in range(24):
        ctype, body = multipart([(f"flood-{i}.jsonl", b"not json\n")])
        status, headers, _ = http(secured.port, "POST", "/_upload",
                                  upload_headers(secured, cookie, ("Content-Type", ctype)), body, source="127.0.0.22")
        statuses.append(status)
        record("upload flood", i >= 20 and status != 429, f"upload {i} -> {status}")
    assert statuses[20:] == [429] * 4
    assert_none_succeeded("upload flood")


# ---- afterwards -------------------------------------------------------------------------------------

def test_open_redirect_through_next(secured):
    """`/login?next=...` with every control character, backslashes and `//`, raw and
    percent-encoded once and twice: the login page and the post-login redirect stay on site."""
    cookie = login_cookie(secured, "127.0.0.20")
    hostile = [f"/{chr(c)}/evil.example" for c in [*range(0x20), 0x7f]]
    hostile += [f"/%{c:02X}/evil.example" for c in [*range(0x20), 0x7f]]
    hostile += [f"/%25{c:02X}/evil.example" for c in (0x09, 0x0a, 0x0d)]
    hostile += ["//evil.example", "/\\evil.example", "/%2F%2Fevil.example", "/%5Cevil.example", "https://evil.example",
                "/%252F%252Fevil.example", "\t//evil.example"]
    for target in hostile:
        query = "next=" + "".join(c if 0x20 < ord(c) < 0x7f else f"%{ord(c):02X}" for c in target)
        status, out, body = http(secured.port, "GET", f"/login?{query}",
                                 hdrs(secured, ("Cookie", cookie)), source="127.0.0.20")
        off_site = "evil.example" in out.get("location", "") or b"evil.example" in body
        record("open redirect after login", off_site, f"next={target!r} -> {status} {out.get('location')}")
    assert_none_succeeded("open redirect after login")


def test_logout_csrf(secured):
    """A cross-site GET (an <img src=/logout>) or a foreign-origin POST signs nobody out."""
    cookie = login_cookie(secured, "127.0.0.21")
    for method, origin in (("GET", "own"), ("GET", None), ("POST", "https://evil.example")):
        http(secured.port, method, "/logout", hdrs(secured, ("Cookie", cookie), origin=origin), source="127.0.0.21")
        status, _, _ = http(secured.port, "GET", "/_health", hdrs(secured, ("Cookie", cookie)), source="127.0.0.21")
        record("logout CSRF", status != 200, f"{method} /logout from {origin} -> session ended")
    assert_none_succeeded("logout CSRF")


def test_folder_dataset_tricks(secured):
    """The uploads folder itself, a folder in it, and `datasets` metadata naming private
    data: neither an upload nor a pick over the websocket may load them."""
    for name in ("dataset_dict.json", "state.json", "dataset_info.json"):
        payload = json.dumps({"splits": [str(secured.outside)]}).encode()
        ctype, body = multipart([(name, payload)])
        status, _, _ = http(secured.port, "POST", "/_upload", upload_headers(secured, ("Authorization", BASIC),
                                                                             ("Content-Type", ctype)), body)
        record("folder-dataset tricks", (secured.uploads / name).exists(), f"upload {name} -> {status}")
    (secured.uploads / "sub").mkdir(parents=True, exist_ok=True)
    (secured.uploads / "sub" / "dataset_dict.json").write_text(json.dumps({"splits": [str(secured.outside)]}))
    token = str(uuid.uuid4())
    status, ws = upgrade(secured.port, f"/_event/?token={token}&EIO=4&transport=websocket",
                         dict(hdrs(secured, ("Authorization", BASIC))), source="127.0.0.22")
    sio = ReflexSocket(ws, token)
    try:
        for path in (".", str(secured.uploads), "sub", "sub/", "./sub", "sub/dataset_dict.json", "./"):
            sio.frames.clear()
            sio.emit_event(DATASET + ".pick", {"value": path}, "/dataset")
            answer = sio.wait_for(lambda t: '"error_rx_state_":{"code"' in t or "TOPSECRET" in t, 60)
            seen = "\n".join(sio.frames).encode()
            record("folder-dataset tricks", answer is None or leaked(seen), f"pick {path!r}")
    finally:
        ws.close()
    assert_none_succeeded("folder-dataset tricks")


def test_server_stayed_up_and_nothing_escaped(secured, request):
    assert secured.proc.poll() is None
    status, _, body = http(secured.port, "GET", "/ping", hdrs(secured, ("Authorization", BASIC)))
    assert status == 200
    # Nothing any attack named or wrote lies outside the sandbox.
    assert sorted(p.name for p in secured.outside.iterdir()) == ["secret.jsonl"]
    assert files_with(b"bpatk-", escape_places(secured), skip=[secured.uploads.resolve()]) == []
    stored = {p.name for p in secured.uploads.iterdir()}
    assert all(not name.startswith(("..", "/")) for name in stored)
    # The pages still work with the planted links and rejected files around: the Train
    # page's load lists the uploads (never the links) and the examples.
    token = str(uuid.uuid4())
    status, ws = upgrade(secured.port, f"/_event/?token={token}&EIO=4&transport=websocket",
                         dict(hdrs(secured, ("Authorization", BASIC))))
    sio = ReflexSocket(ws, token)
    sio.emit_event(TRAIN + ".load", {}, "/train")
    listed = sio.wait_for(lambda t: '"datasets_rx_state_"' in t, 60)
    ws.close()
    assert listed and "quickstart.jsonl" in listed and "link.jsonl" not in listed

    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = ["", "attack suite: requests tried / succeeded per category"]
    lines += [f"  {name:<42} {tried:>4} / {won}" for name, (tried, won) in TALLY.items()]
    total = sum(t for t, _ in TALLY.values())
    lines.append(f"  {'total':<42} {total:>4} / {sum(w for _, w in TALLY.values())}")
    text = "\n".join(lines)
    if reporter:
        reporter.write_line(text)
    print(text)
    out = Path(__file__).resolve().parents[2] / "test-artifacts" / "security"
    out.mkdir(parents=True, exist_ok=True)
    (out / "attack-counts.json").write_text(json.dumps(TALLY, indent=2))
    assert total >= 200
    assert SUCCESSES == []
