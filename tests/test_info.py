"""`backprop info`: one command gives everything a bug report needs."""

import json


from backpropagate_core.cli.app import main as cli_main
from backpropagate_core.errors import CATALOG


def info_json(capsys) -> dict:
    assert cli_main(["info", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_report_has_every_section_a_bug_report_needs(capsys):
    import peft
    import torch
    import transformers

    data = info_json(capsys)
    assert data["backpropagate"]
    system = data["system"]
    assert system["os"] and system["python"].count(".") == 2 and system["ram_total_gb"] > 0
    assert data["torch"]["version"] == torch.__version__
    assert "cuda_available" in data["torch"] and "cuda_version" in data["torch"]
    assert data["gpu"]  # a GPU's name and driver, or why none is visible
    packages = data["packages"]
    assert packages["transformers"] == transformers.__version__
    assert packages["peft"] == peft.__version__
    for name in ("trl", "reflex", "llama-cpp-python"):
        assert name in packages
    assert set(data["extras"]) >= {"ui", "export", "monitoring"}
    assert all(isinstance(v, bool) for v in data["extras"].values())
    assert data["paths"]["disk_free_gb"] > 0 and data["paths"]["home"].endswith("bp-home")
    assert data["logging"]["level"] == "INFO"
    assert data["runtime"]["dataloader_workers"] == 0
    assert data["telemetry_off"]["HF_HUB_DISABLE_TELEMETRY"] == "1"


def test_text_report_is_readable(capsys):
    assert cli_main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("system", "python", "torch", "transformers", "disk_free_gb", "extras"):
        assert word in out


def test_report_survives_an_invalid_setting(capsys, monkeypatch):
    monkeypatch.setenv("BACKPROPAGATE_LORA__R", "0")
    data = info_json(capsys)
    assert "CONFIG_INVALID" in data["paths"]["settings_error"]
    assert data["system"]["python"]


def test_error_codes_listed(capsys):
    assert cli_main(["info", "--error-codes", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(CATALOG)


def test_a_broken_section_does_not_sink_the_report(capsys, monkeypatch):
    from backpropagate_core.hardware import sysinfo

    def broken():
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(sysinfo, "_gpu", broken)
    assert "driver exploded" in info_json(capsys)["gpu"]["error"]
