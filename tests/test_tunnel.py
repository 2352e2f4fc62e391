"""Tunnel providers up to the process launch: a fake `cloudflared` on PATH prints a URL."""

import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from backpropagate_core.serve import tunnel
from backpropagate_core.errors import BackpropError


def fake_cloudflared(folder: Path, body: str) -> Path:
    """A `cloudflared` script that records its arguments and then runs `body`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "cloudflared"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys, time
        open({str(folder / "args.txt")!r}, "w").write(" ".join(sys.argv[1:]))
        """) + textwrap.dedent(body))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


PRINTS_URL = """\
print("2026-11-02T10:00:00Z INF Requesting new quick Tunnel on trycloudflare.com...", flush=True)
print("2026-11-02T10:00:01Z INF |  https://brave-otter-fine-tune.trycloudflare.com  |", flush=True)
for _ in range(20000):
    print("INF keep-alive " + "x" * 200, flush=True)
time.sleep(60)
"""


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"

    def install(body: str) -> Path:
        fake_cloudflared(bin_dir, body)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        return bin_dir

    return install


def test_cloudflared_start_parses_url_and_keeps_draining_output(on_path):
    bin_dir = on_path(PRINTS_URL)
    provider = tunnel.pick_provider([tunnel.CloudflaredProvider(), tunnel.NgrokProvider()])
    assert provider.name == "cloudflared"
    t = provider.start("http://127.0.0.1:7862", timeout=20)
    try:
        assert t.public_url == "https://brave-otter-fine-tune.trycloudflare.com"
        assert t.host == "brave-otter-fine-tune.trycloudflare.com"
        assert (bin_dir / "args.txt").read_text() == "tunnel --no-autoupdate --url http://127.0.0.1:7862"
        # ~4 MB of logs later the process is still alive, not blocked on a full pipe.
        import time
        time.sleep(1.5)
        assert t.process.poll() is None
    finally:
        t.close()
    assert t.process.poll() is not None


def test_cloudflared_that_exits_without_url_is_a_coded_error(on_path):
    on_path('print("ERR failed to request quick Tunnel: no network", flush=True)\nsys.exit(1)\n')
    with pytest.raises(BackpropError) as info:
        tunnel.CloudflaredProvider().start("http://127.0.0.1:1", timeout=20)
    assert info.value.code == "SHARE_TUNNEL_FAILED" and "no network" in info.value.message


def test_cloudflared_silent_past_timeout_is_killed(on_path):
    on_path("time.sleep(60)\n")
    with pytest.raises(BackpropError) as info:
        tunnel.CloudflaredProvider().start("http://127.0.0.1:1", timeout=1)
    assert info.value.code == "SHARE_TUNNEL_FAILED"


def test_no_provider_is_a_coded_error(monkeypatch):
    class Missing:
        name = "nothing"

        def available(self):
            return False

    with pytest.raises(BackpropError) as info:
        tunnel.pick_provider([Missing(), tunnel.CloudflaredProvider(binary="no-such-cloudflared-binary")])
    assert info.value.code == "SHARE_NO_PROVIDER" and info.value.exit_code == 1
    assert "cloudflared" in info.value.hint


def test_ngrok_without_token_says_what_to_set(monkeypatch):
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    with pytest.raises(BackpropError) as info:
        tunnel.NgrokProvider().start("http://127.0.0.1:1")
    assert info.value.code == "SHARE_TUNNEL_FAILED" and "NGROK_AUTHTOKEN" in info.value.message


def test_ngrok_provider_uses_the_package(monkeypatch):
    import types
    calls = []
    fake = types.SimpleNamespace(
        forward=lambda addr, authtoken_from_env: calls.append(("forward", addr)) or types.SimpleNamespace(
            url=lambda: "https://abc.ngrok-free.app"),
        disconnect=lambda url: calls.append(("disconnect", url)))
    monkeypatch.setitem(sys.modules, "ngrok", fake)
    monkeypatch.setenv("NGROK_AUTHTOKEN", "tok")
    t = tunnel.NgrokProvider().start("http://127.0.0.1:7862")
    assert t.host == "abc.ngrok-free.app"
    t.close()
    assert calls == [("forward", "http://127.0.0.1:7862"), ("disconnect", "https://abc.ngrok-free.app")]
