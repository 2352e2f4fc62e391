"""Tiny random models and a small tokenizer, built offline for tests.

A byte-level BPE tokenizer is trained on a few paragraphs of text with ChatML special
tokens, then saved next to a randomly initialised Llama or Qwen2 model of a few hundred
thousand parameters. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Fine-tuning adapts a pretrained language model to a new task with a small dataset.",
    "LoRA trains two small matrices per layer instead of the full weight matrix.",
    "What is the capital of France? The capital of France is Paris.",
    "user assistant system hello world question answer explain why how what",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 and punctuation , . ! ? : ; ' \" ( ) [ ] { }",
    "Bread is made from flour, water, salt and yeast. Knead the dough and let it rise.",
    "Sourdough uses a starter of wild yeast and lactic acid bacteria instead of baker's yeast.",
]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(out_dir: Path, vocab_size: int = 600, chat_template: str | None = CHATML_TEMPLATE):
    """Train a byte-level BPE tokenizer and save it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    if chat_template:
        fast.chat_template = chat_template
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def build_model(out_dir: Path, arch: str = "llama", hidden: int = 64, layers: int = 2,
                heads: int = 4, kv_heads: int = 2, intermediate: int | None = None,
                chat_template: str | None = CHATML_TEMPLATE, seed: int = 0) -> Path:
    """Save a random `arch` model ("llama", "qwen2" or "qwen3") with the tiny tokenizer in out_dir."""
    import torch
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                              Qwen3ForCausalLM)

    tokenizer = build_tokenizer(out_dir, chat_template=chat_template)
    common = dict(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=(arch == "llama"),
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "qwen3":
        # Like the real Qwen3 models: head_dim wider than hidden / heads, q/k norms, tied embeddings.
        model = Qwen3ForCausalLM(Qwen3Config(**{**common, "tie_word_embeddings": True},
                                             head_dim=2 * hidden // heads))
    else:
        raise ValueError(arch)
    model.save_pretrained(out_dir)
    return out_dir
