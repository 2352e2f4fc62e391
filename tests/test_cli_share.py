"""`backprop ui --share/--auth`: refusals, the opt-out warning, and what the server is handed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backpropagate_core.cli import ui as ui_mod
from backpropagate_core.cli.app import main
from backpropagate_core.serve.credentials import GATE_FILE_ENV, PASSWORD_ENV, verify_password
from tests.test_tunnel import PRINTS_URL, fake_cloudflared


def run_cli(*args, **env):
    full = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV} | env
    return subprocess.run([sys.executable, "-m", "backpropagate_core.cli.run", *args], capture_output=True,
                          text=True, env=full, timeout=120)


def test_share_without_auth_exits_1_with_code():
    proc = run_cli("ui", "--share")
    assert proc.returncode == 1
    assert "[INPUT_AUTH_REQUIRED]" in proc.stderr and "--auth" in proc.stderr


def test_short_password_is_refused():
    proc = run_cli("ui", "--share", "--auth", "admin:short")
    assert proc.returncode == 1 and "[INPUT_AUTH_INVALID]" in proc.stderr
    assert "short" not in proc.stderr  # the password itself is never echoed


def test_forbidden_output_dir_is_refused_before_start():
    proc = run_cli("ui", "--auth", "admin:long-enough-pw", BACKPROPAGATE_UI__OUTPUT_DIR="/etc/backprop")
    assert proc.returncode == 1 and "[UI_OUTPUT_DIR_FORBIDDEN]" in proc.stderr


@pytest.fixture
def fake_serve(monkeypatch):
    """Replace the Reflex server: record the env and the gate file it would have been given."""
    seen = {}

    def serve(host, port, env=None):
        seen["host"], seen["port"], seen["env"] = host, port, env
        seen["gate"] = json.loads(Path(env[GATE_FILE_ENV]).read_text())
        seen["gate_mode"] = Path(env[GATE_FILE_ENV]).stat().st_mode & 0o777
        return 0

    monkeypatch.setattr(ui_mod, "serve", serve)
    monkeypatch.setattr(ui_mod, "check_can_start", lambda *a, **k: None)
    return seen


@pytest.fixture
def cloudflared(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    fake_cloudflared(bin_dir, PRINTS_URL)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_opt_out_warns_loudly_and_waits_before_binding(monkeypatch, capsys, fake_serve, cloudflared):
    monkeypatch.setenv("BACKPROPAGATE_SECURITY__REQUIRE_AUTH_FOR_SHARE", "false")
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    slept, real_sleep = [], ui_mod.time.sleep
    monkeypatch.setattr(ui_mod.time, "sleep", lambda s: slept.append(s) if s >= 1 else real_sleep(s))
    assert main(["ui", "--share", "--port", "7999"]) == 0
    out = capsys.readouterr().out
    assert "WARNING" in out and "anyone with the link" in out and "Ctrl-C" in out
    assert slept == [5]
    assert "https://brave-otter-fine-tune.trycloudflare.com" in out and "NO LOGIN" in out
    gate = fake_serve["gate"]
    assert gate["user"] is None and gate["proxy"] in ("cloudflared", "ngrok")
    assert "brave-otter-fine-tune.trycloudflare.com" in gate["hosts"] and "127.0.0.1:7999" in gate["hosts"]
    # The tunnel and the gate file are gone once the server stops.
    assert not Path(fake_serve["env"][GATE_FILE_ENV]).exists()
    assert (cloudflared / "args.txt").read_text().endswith("--url http://127.0.0.1:7999")


def test_share_with_auth_file_hands_server_only_a_hash(tmp_path, monkeypatch, fake_serve, cloudflared, capsys):
    secret_file = tmp_path / "login.txt"
    secret_file.write_text("alice:a long pass phrase\n")
    monkeypatch.setenv(PASSWORD_ENV, "not-this-one-please")
    assert main(["ui", "--share", "--auth-file", str(secret_file), "--port", "7998"]) == 0
    gate = fake_serve["gate"]
    assert gate["user"] == "alice" and verify_password("a long pass phrase", gate["password_hash"])
    assert fake_serve["gate_mode"] == 0o600 and len(gate["secret"]) >= 32
    env_text = json.dumps(fake_serve["env"])
    assert "a long pass phrase" not in env_text and PASSWORD_ENV not in fake_serve["env"]
    assert "(login required)" in capsys.readouterr().out


def test_share_wants_a_long_password_or_makes_one(monkeypatch, capsys, fake_serve, cloudflared):
    assert main(["ui", "--share", "--auth", "alice:only-10-ch", "--port", "7995"]) == 1
    err = capsys.readouterr()
    assert "[INPUT_AUTH_INVALID]" in err.err + err.out and "12 characters" in err.err + err.out
    assert main(["ui", "--share", "--auth", "alice", "--port", "7995"]) == 0
    out = capsys.readouterr().out
    generated = out.split("Generated password for alice:")[1].split()[0]
    assert len(generated) >= 16 and verify_password(generated, fake_serve["gate"]["password_hash"])
    assert out.count(generated) == 1 and generated not in json.dumps(fake_serve["env"])
    assert main(["ui", "--auth", "alice:only-10-ch", "--port", "7995"]) == 0  # loopback only: 8 is enough


def test_password_from_env(monkeypatch, fake_serve):
    monkeypatch.setenv(PASSWORD_ENV, "from-the-environment")
    monkeypatch.setenv("BACKPROPAGATE_UI_USER", "bob")
    assert main(["ui", "--port", "7997"]) == 0
    assert fake_serve["gate"]["user"] == "bob"
    assert verify_password("from-the-environment", fake_serve["gate"]["password_hash"])


def test_fixed_jwt_secret_is_passed_on(monkeypatch, fake_serve):
    monkeypatch.setenv("BACKPROPAGATE_SECURITY__JWT_SECRET", "x" * 40)
    assert main(["ui", "--auth", "alice:long-enough-pw", "--port", "7996"]) == 0
    assert fake_serve["gate"]["secret"] == "x" * 40


def test_lan_bind_without_auth_warns(monkeypatch, capsys, fake_serve):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    assert main(["ui", "--host", "0.0.0.0", "--port", "7995"]) == 0
    out = capsys.readouterr().out
    assert "reachable from other machines" in out and "--auth" in out
    assert fake_serve["gate"]["user"] is None and "localhost:7995" in fake_serve["gate"]["hosts"]


def test_loopback_without_auth_is_quiet(monkeypatch, capsys, fake_serve):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    assert main(["ui", "--port", "7994"]) == 0
    assert "Warning" not in capsys.readouterr().out


def test_share_without_any_provider_is_a_coded_error(monkeypatch, capsys, fake_serve):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("backpropagate_core.serve.tunnel.NgrokProvider.available", lambda self: False)
    assert main(["ui", "--share", "--auth", "alice:long-enough-pw"]) == 1
    assert "[SHARE_NO_PROVIDER]" in capsys.readouterr().err


def test_the_ui_uses_the_npm_registry_the_user_configured(tmp_path):
    """Reflex installs the frontend from NPM_CONFIG_REGISTRY: a mirror named in the
    user's npm config (or their environment) is kept, never replaced by a fixed URL."""
    from backpropagate_core.cli.ui import ui_env

    fake = tmp_path / "bin"
    fake.mkdir()
    npm = fake / "npm"
    npm.write_text("#!/bin/sh\necho https://npm.mirror.example/\n")
    npm.chmod(0o755)
    env = ui_env({"PATH": str(fake)}, tools=tmp_path / "tools")
    assert env["NPM_CONFIG_REGISTRY"] == "https://npm.mirror.example/"
    mine = ui_env({"PATH": str(fake), "NPM_CONFIG_REGISTRY": "https://mine.example/"}, tools=tmp_path / "tools")
    assert mine["NPM_CONFIG_REGISTRY"] == "https://mine.example/"
    assert "NPM_CONFIG_REGISTRY" not in (Path(__file__).parents[1] / "Makefile").read_text()
