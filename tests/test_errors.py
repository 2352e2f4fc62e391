import pytest

from backpropagate_core.errors import CATALOG, BackpropError
from backpropagate_core.redact import redact, redact_obj


@pytest.mark.parametrize("secret", [
    "hf_AbCdEfGhIjKlMnOpQrStUv", "sk-proj-abcdefghijklmnop1234", "Bearer eyJhbGciOiJIUzI1NiJ9.abc.def",
    "password=hunter2hunter2", "https://user:s3cretpass@example.com/x",
])
def test_redaction_masks_common_secrets(secret):
    out = redact(f"before {secret} after")
    core = secret.split("=")[-1].split(":")[-1].split()[-1].split("@")[0]
    assert core not in out
    assert out.startswith("before") and out.endswith("after")


def test_redact_obj_masks_secret_keys_and_values():
    out = redact_obj({"api_key": "abc", "nested": ["token is hf_1234567890abcdef"], "n": 3})
    assert out == {"api_key": "***", "nested": ["token is hf_***"], "n": 3}


def test_error_carries_code_hint_and_exit_code():
    err = BackpropError("INPUT_DATASET_INVALID", "line 3: bad json")
    assert err.exit_code == 1 and err.hint == CATALOG["INPUT_DATASET_INVALID"].hint
    assert BackpropError("RUNTIME_TRAINING_FAILED", "x").exit_code == 3
    assert BackpropError("RUNTIME_WORKER_DIED", "x").retryable is True
    with pytest.raises(ValueError):
        BackpropError("NOT_A_CODE", "x")


def test_error_messages_are_redacted():
    err = BackpropError("CONFIG_INVALID", "bad token hf_abcdefghijklmnopq")
    assert "hf_abcdefghijklmnopq" not in str(err)
