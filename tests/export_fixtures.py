"""Trained-looking runs for export tests: a base model plus a LoRA adapter with non-zero B.

A fresh LoRA adapter is a no-op (B starts at zero), which would let a broken merge pass.
Random B weights stand in for training, so merged weights really differ from the base.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.tiny import build_model


def make_adapter(base: str | Path, out_dir: Path, seed: int = 1, scale: float = 0.05) -> Path:
    """Save a peft LoRA adapter on `base` (folder or preset) with random non-zero B weights."""
    import torch

    from backpropagate_core.model import loader as model_mod

    model = model_mod.load_model(str(base))
    tokenizer = model_mod.load_tokenizer(str(base))
    peft_model = model_mod.add_lora(model, r=8, alpha=16, dropout=0.0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "backpropagate.json").write_text(json.dumps({"model": str(base)}))
    return out_dir


def make_run(base: str | Path, name: str = "tiny-run", seed: int = 1, scale: float = 0.05):
    """A completed run in the current BACKPROPAGATE_HOME whose adapter is `make_adapter`'s."""
    from backpropagate_core.runs import events as ev
    from backpropagate_core.runs.store import RunStore

    store = RunStore()
    config = {"model": str(base), "data": "/somewhere/private/chat.jsonl", "name": name,
              "lora": {"r": 8, "alpha": 16}, "training": {"steps": 3, "learning_rate": 2e-4}}
    run = store.create_run(config=config, model=str(base), dataset=config["data"], name=name)
    adapter = make_adapter(base, run.run_dir / "adapter", seed=seed, scale=scale)
    store.record(ev.RunStarted(run.id, config=config, total_steps=3))
    store.record(ev.Finished(run.id, final_loss=1.234, steps=3, artifacts={"adapter": str(adapter)}))
    return store.get(run.id)


def tensor_types(path) -> dict[str, str]:
    """Tensor name → stored type of a GGUF file."""
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def failed_export(base: Path, quant: str = "q4_k_m") -> str:
    """Export a fresh run on `base` expecting EXPORT_VERIFY_FAILED and no export left behind;
    the error message."""
    import pytest

    from backpropagate_core.errors import BackpropError
    from backpropagate_core.export import export_model

    run = make_run(base)
    with pytest.raises(BackpropError) as err:
        export_model(run.id, format="gguf", quantization=quant)
    assert err.value.code == "EXPORT_VERIFY_FAILED"
    assert not (run.run_dir / "exports" / f"gguf-{quant}").exists()
    return err.value.message


def trained_run(base: Path, root: Path, steps: int = 2):
    """`base` LoRA-trained `steps` steps through the Trainer on eight tiny chats; the RunResult."""
    from backpropagate_core.api import Trainer

    data = root / "chat.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"Q{i}?"},
                                                       {"role": "assistant", "content": f"A{i}."}]})
                              for i in range(8)) + "\n")
    return Trainer(str(base), precision="fp32", report_to="none").train(
        data, steps=steps, val_fraction=0.0, save_steps=steps)


def tiny_base(root: Path, arch: str, **kwargs) -> Path:
    """A tiny random model wide enough (256) for llama.cpp's k-quants to really apply."""
    return build_model(root / f"base-{arch}", arch=arch, hidden=256, intermediate=512,
                       heads=4, kv_heads=2, **kwargs)


MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}")


def tiny_mistral_spm(root: Path) -> Path:
    """A tiny Mistral with a sentencepiece BPE tokenizer (byte fallback), like Mistral 7B's."""
    import io

    import sentencepiece as spm
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    from tests.tiny import _CORPUS

    folder = root / "base-mistral"
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 20), model_writer=buffer, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        minloglevel=2)
    (folder / "tokenizer.model").write_bytes(buffer.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = MISTRAL_TEMPLATE
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=400, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, sliding_window=None)
    MistralForCausalLM(config).save_pretrained(folder)
    return folder


GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")
"""Gemma 3's chat template for text (the published one also formats images)."""


def tiny_gemma_spm(root: Path, arch: str = "gemma3") -> Path:
    """A tiny Gemma with Gemma's kind of tokenizer: a sentencepiece BPE (byte fallback, no
    dummy space prefix, digits split, <bos> added) loaded as transformers' GemmaTokenizer,
    with the turn markers as control tokens and Gemma 3's chat template."""
    import io

    import sentencepiece as spm
    from transformers import AutoTokenizer

    from tests.tiny import _CORPUS, build_model

    folder = build_model(root / f"base-{arch}-spm", arch=arch, hidden=256, intermediate=512, heads=4, kv_heads=2)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (folder / name).unlink(missing_ok=True)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 20), model_writer=buffer, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>"], add_dummy_prefix=False,
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        normalization_rule_name="identity", minloglevel=2)
    (folder / "tokenizer.model").write_bytes(buffer.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
         "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True,
         "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = GEMMA3_TEMPLATE
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    # The model was built for the byte-level tokenizer (526 rows); these ids all fall inside it.
    config.update(bos_token_id=2, eos_token_id=1, pad_token_id=0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def tiny_gemma3_multimodal(root: Path) -> Path:
    """A tiny Gemma3ForConditionalGeneration (the 4B and larger Gemma 3s): `tiny_base`'s Gemma 3
    text model inside, with a one-layer SigLIP vision tower and projector beside it."""
    import shutil

    import torch
    from transformers import (AutoModelForCausalLM, Gemma3Config, Gemma3ForConditionalGeneration,
                              Gemma3TextConfig, SiglipVisionConfig)

    text = tiny_base(root, "gemma3")
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=56, patch_size=14)
    # Image token ids inside the tiny vocabulary, like the real ones inside Gemma's.
    config = Gemma3Config(text_config=Gemma3TextConfig.from_pretrained(text).to_dict(),
                          vision_config=vision.to_dict(), mm_tokens_per_image=4,
                          image_token_index=520, boi_token_index=521, eoi_token_index=522)
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config)
    weights = AutoModelForCausalLM.from_pretrained(text).state_dict()
    model.load_state_dict({k.replace("model.", "model.language_model.", 1): v for k, v in weights.items()},
                          strict=False)
    folder = root / "base-gemma3-multimodal"
    model.save_pretrained(folder)
    for f in text.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, folder / f.name)
    return folder
