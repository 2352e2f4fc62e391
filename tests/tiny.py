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


def build_tokenizer(out_dir: Path, vocab_size: int = 600, chat_template: str | None = CHATML_TEMPLATE,
                    pre_tokenizer=None, corpus: tuple[str, ...] = ()):
    """Train a byte-level BPE tokenizer and save it as a transformers fast tokenizer.

    `pre_tokenizer`: a `tokenizers` pre-tokenizer in place of plain ByteLevel (GPT-2's split);
    `corpus`: more texts to train on, so merges exist inside the words a test tokenizes.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((_CORPUS + list(corpus)) * 20, trainer=trainer)
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
                chat_template: str | None = CHATML_TEMPLATE, seed: int = 0, tokenizer: dict | None = None) -> Path:
    """Save a random `arch` model ("llama", "qwen2", "qwen3", "gemma2", "gemma3" or one of
    PHI3_VARIANTS) with the tiny tokenizer in out_dir (`tokenizer`: build_tokenizer's options)."""
    import torch
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                              Qwen3ForCausalLM)

    tokenizer = build_tokenizer(out_dir, chat_template=chat_template, **(tokenizer or {}))
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
    elif arch in ("gemma2", "gemma3"):
        model = _gemma(arch, {**common, "tie_word_embeddings": True}, hidden, heads)
    elif arch in PHI3_VARIANTS:
        model = _phi3(arch, common, hidden // heads)
    else:
        raise ValueError(arch)
    model.save_pretrained(out_dir)
    return out_dir


GEMMA_SLIDING_WINDOW = 32
"""Short enough that the export tests' 512-token prompt crosses it."""


def _gemma(arch: str, common: dict, hidden: int, heads: int):
    """A random Gemma 2 or Gemma 3 (text) in the published models' shape family.

    As in the real ones: head_dim wider than hidden / heads, tied embeddings, sliding-window
    layers alternating with global ones, Gemma 3's two rope bases with linear scaling on the
    global layers (the 4B's). Gemma 2 uses query_pre_attn_scalar = head_dim (2B, 9B), Gemma 3
    hidden / heads (the 27B rule), so both of llama.cpp's attention scales are exercised.
    What a tiny random model would otherwise hide is made to act: the window is 32 tokens,
    Gemma 2's soft caps sit inside the range of its scores and logits, q/k weights are
    scaled up so attention is not near-uniform, and norm weights (Gemma initialises them at
    0 and multiplies by 1 + w) get random values.
    """
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

    head_dim = 2 * hidden // heads
    shape = dict(common, head_dim=head_dim, sliding_window=GEMMA_SLIDING_WINDOW,
                 layer_types=["sliding_attention", "full_attention"] * (common["num_hidden_layers"] // 2)
                 + ["sliding_attention"] * (common["num_hidden_layers"] % 2))
    if arch == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(**shape, query_pre_attn_scalar=head_dim,
                                               attn_logit_softcapping=4.0, final_logit_softcapping=1.0))
    else:
        rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}}
        model = Gemma3ForCausalLM(Gemma3TextConfig(**shape, query_pre_attn_scalar=hidden // heads,
                                                   rope_parameters=rope))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.2)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                param.mul_(4.0)
    return model


PHI3_VARIANTS = ("phi3", "phi3.5", "phi4-mini")
"""Phi3ForCausalLM as Phi-3-mini-4k (plain rope), Phi-3.5-mini (LongRoPE) and Phi-4-mini
(LongRoPE on 3/4 of each head, tied embeddings) configure it."""
PHI3_ORIGINAL_CONTEXT = 512
"""The LongRoPE variants' pre-training context (4,096 in the real models): shorter than the
export tests' 1,100-token prompt, which therefore runs on the long factors, and longer than
their chat prompts, which run on the short ones."""


def _phi3(variant: str, common: dict, head_dim: int):
    """A random Phi3ForCausalLM in the real models' shape family (fused qkv and gate_up)."""
    from transformers import Phi3Config, Phi3ForCausalLM

    # No window shorter than the test prompts: llama.cpp ignores Phi's sliding window (docs/export.md).
    config = dict(common, tie_word_embeddings=variant == "phi4-mini", sliding_window=None)
    if variant != "phi3":
        partial = 0.75 if variant == "phi4-mini" else 1.0
        n = int(head_dim * partial) // 2
        # Shaped like the published factors: near 1 for the fast dimensions, growing for the slow ones.
        config.update(
            max_position_embeddings=8 * PHI3_ORIGINAL_CONTEXT, original_max_position_embeddings=PHI3_ORIGINAL_CONTEXT,
            sliding_window=262144,
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": partial,
                             "short_factor": [1.0 + 0.5 * i / (n - 1) for i in range(n)],
                             "long_factor": [1.0 + 15.0 * (i / (n - 1)) ** 2 for i in range(n)]})
    return Phi3ForCausalLM(Phi3Config(**config))


def qa_jsonl(path: Path, n: int) -> Path:
    """`n` short ShareGPT question/answer chats, one per line, written to `path`."""
    import json

    rows = [{"conversations": [{"from": "human", "value": f"Question {i}?"},
                               {"from": "gpt", "value": f"Answer number {i}."}]} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path
