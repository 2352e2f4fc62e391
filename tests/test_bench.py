"""The benchmarks still run: a quick throughput pass with a lever ablation, a memory
comparison and a random-weight copy of a model, all on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_throughput_reports_d_and_its_ablations(tiny_llama, tmp_path):
    out = tmp_path / "tp.json"
    proc = _bench("bench/throughput.py", "--quick", "--variants", "ad", "--ablate", "packing,casts",
                  "--model", str(tiny_llama), "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"a", "d", "d-packing", "d-casts"}
    for variant, results in runs.items():
        assert results[0]["tok_s"] > 0 and results[0]["eval_loss"] > 0, (variant, results)
    assert "d/a = " in proc.stdout and "padded batches" in proc.stdout


def test_memory_bench_compares_estimate_and_peak(tiny_llama, tmp_path):
    out = tmp_path / "mem.json"
    proc = _bench("bench/memory.py", "--config", f"{tiny_llama}:64:2:fp32", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    [row] = json.loads(out.read_text())
    assert row["device"] == "cpu" and row["estimate_gb"] > 0 and row["measured_gb"] > 0


def test_random_model_keeps_the_shape_and_tokenizer(tiny_llama, tmp_path):
    proc = _bench("bench/random_model.py", "--like", str(tiny_llama), "--out", str(tmp_path / "copy"),
                  "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    original = json.loads((tiny_llama / "config.json").read_text())
    copy = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert copy["hidden_size"] == original["hidden_size"] and copy["vocab_size"] == original["vocab_size"]
    assert (tmp_path / "copy" / "tokenizer.json").is_file() and (tmp_path / "copy" / "model.safetensors").is_file()


def test_step_profile_splits_the_time(tiny_llama):
    proc = _bench("bench/profile_step.py", "--model", str(tiny_llama), "--steps", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "matrix products" in proc.stdout and "s per step" in proc.stdout and "aten::" in proc.stdout


def test_matmul_bound_prints_a_ceiling_for_the_models_shapes(tiny_llama):
    proc = _bench("bench/matmul_bound.py", "--model", str(tiny_llama), "--tokens", "64", "--labelled", "32",
                  "--repeat", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((Path(tiny_llama) / "config.json").read_text())
    assert f"[64 x {config['hidden_size']}] @ [{config['hidden_size']} x {config['intermediate_size']}]" in proc.stdout
    assert "ceiling" in proc.stdout and "tokens/s" in proc.stdout


def test_long_chat_rows_are_many_turns_and_deterministic():
    sys.path.insert(0, str(ROOT / "bench"))
    import make_data

    rows = make_data.long_chat(20)
    assert rows == make_data.long_chat(20)
    for row in rows:
        roles = [turn["from"] for turn in row["conversations"]]
        assert 20 <= len(roles) <= 28 and roles[::2] == ["human"] * (len(roles) // 2)
