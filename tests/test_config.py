from pathlib import Path

import pytest

from backpropagate_core.config import load_settings
from backpropagate_core.errors import BackpropError
from backpropagate_core.training.run_config import build_config


def test_env_overrides_nested_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("BACKPROPAGATE_LORA__R", "32")
    monkeypatch.setenv("BACKPROPAGATE_TRAINING__LEARNING_RATE", "0.0005")
    monkeypatch.setenv("BACKPROPAGATE_UI__PORT", "7999")
    s = load_settings()
    assert (s.lora.r, s.training.learning_rate, s.ui.port) == (32, 0.0005, 7999)
    assert s.home == tmp_path / "bp-home"


def test_dotenv_file_is_read(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("BACKPROPAGATE_LORA__ALPHA=64\n")
    assert load_settings().lora.alpha == 64


def test_a_hostile_dotenv_cannot_touch_security_settings(monkeypatch, tmp_path):
    """A cloned repository's .env must not turn the login off, pin a known cookie key,
    run a model repo's code or name a converter script to run; the same settings from the
    real environment still work."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "BACKPROPAGATE_SECURITY__REQUIRE_AUTH_FOR_SHARE=false\n"
        "BACKPROPAGATE_SECURITY__JWT_SECRET=" + "k" * 40 + "\n"
        "BACKPROPAGATE_SECURITY__ALLOWED_HOSTS=[\"evil.example\"]\n"
        "BACKPROPAGATE_TRAINING__TRUST_REMOTE_CODE=true\n"
        "BACKPROPAGATE_LLAMA_CPP_DIR=./evil-llama.cpp\n"
        "BACKPROPAGATE_TRAINING__SEED=7\n")
    s = load_settings()
    assert s.security.require_auth_for_share is True and s.security.jwt_secret is None
    assert s.security.allowed_hosts == [] and s.training.trust_remote_code is False
    assert s.llama_cpp_dir is None
    assert s.training.seed == 7  # ordinary settings still come from .env
    monkeypatch.setenv("BACKPROPAGATE_SECURITY__REQUIRE_AUTH_FOR_SHARE", "false")
    monkeypatch.setenv("BACKPROPAGATE_TRAINING__TRUST_REMOTE_CODE", "true")
    monkeypatch.setenv("BACKPROPAGATE_LLAMA_CPP_DIR", "~/llama.cpp")
    s = load_settings()
    assert s.security.require_auth_for_share is False and s.training.trust_remote_code is True
    assert s.llama_cpp_dir == Path("~/llama.cpp").expanduser()
    monkeypatch.setenv("BACKPROPAGATE_LLAMA_CPP_DIR", "")  # exported but empty: unset, not "."
    assert load_settings().llama_cpp_dir is None


def test_all_problems_reported_at_once(monkeypatch):
    monkeypatch.setenv("BACKPROPAGATE_LORA__R", "0")
    monkeypatch.setenv("BACKPROPAGATE_TRAINING__VAL_FRACTION", "0.9")
    with pytest.raises(BackpropError) as err:
        load_settings()
    assert err.value.code == "CONFIG_INVALID"
    assert "BACKPROPAGATE_LORA__R" in err.value.message
    assert "BACKPROPAGATE_TRAINING__VAL_FRACTION" in err.value.message


def test_build_config_flat_and_unknown_keys():
    cfg = build_config("smollm2-135m", "x.jsonl", steps=5, r=8)
    assert (cfg.training.steps, cfg.lora.r) == (5, 8)
    with pytest.raises(BackpropError) as err:
        build_config(None, "x.jsonl", stepz=5, learning_rate=-1)
    assert err.value.code == "CONFIG_INVALID" and "stepz" in err.value.message
