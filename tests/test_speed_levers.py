"""Speed levers change how fast a step runs, never what it computes."""

import pytest

torch = pytest.importorskip("torch")

from backpropagate_core.training import speed  # noqa: E402
from backpropagate_core.training.trainer import Collator  # noqa: E402


def _model(path, attn="sdpa"):
    from transformers import AutoModelForCausalLM

    from backpropagate_core.model.loader import add_lora

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
    model = add_lora(base, 8, 16, 0.0)
    # LoRA B starts at zero; give it weights so the adapter takes part in the comparison.
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return model.eval()


def _rows(lengths, seed=0, vocab=500):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        ids = torch.randint(5, vocab, (n,), generator=g).tolist()
        # Prompt tokens unlabelled, reply labelled, like chat SFT data.
        labels = [-100] * (n // 2) + ids[n // 2:]
        rows.append({"input_ids": ids, "labels": labels, "n_tokens": n})
    return rows


def _padded_loss(model, rows, pad_id):
    batch = Collator(pad_id, pack=False)(rows)
    with torch.no_grad():
        return model(**batch).loss


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_loss_equals_padded_batch_loss(tiny_llama, attn):
    model = _model(tiny_llama, attn)
    rows = _rows([7, 19, 3, 12])
    padded = _padded_loss(model, rows, pad_id=0)
    packed_batch = Collator(0, pack=True)(rows)
    assert packed_batch["input_ids"].shape == (1, 41)
    with torch.no_grad():
        packed = model(**packed_batch).loss
    assert torch.allclose(packed, padded, atol=1e-5), (packed, padded)


def test_packed_examples_do_not_see_each_other(tiny_qwen2):
    """Per-token logits of the second example are the same alone and packed after another."""
    model = _model(tiny_qwen2)
    first, second = _rows([9, 6], seed=1)
    alone = Collator(0, pack=True)([second])
    both = Collator(0, pack=True)([first, second])
    with torch.no_grad():
        logits_alone = model(**alone).logits[0]
        logits_packed = model(**both).logits[0, 9:]
    assert torch.allclose(logits_alone, logits_packed, atol=1e-5)


def test_packing_needs_the_cache_off():
    """With a KV cache transformers skips the packed-sequence mask; the collator turns it off."""
    batch = Collator(0, pack=True)(_rows([4, 5]))
    assert batch["use_cache"] is False
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 4]]
    assert batch["labels"][0, 4].item() == -100  # no target across the boundary


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_labelled_loss_equals_model_loss_and_its_gradients(tiny_llama, tmp_path, arch):
    """Gemma 3's scaled embedding sits in the decoder, so its head is a plain one too."""
    from tests.tiny import build_model

    model = _model(tiny_llama if arch == "llama" else build_model(tmp_path / arch, arch=arch)).train()
    rows = _rows([11, 5, 8], seed=2)
    assert speed.plain_lm_head(model)
    batch = Collator(0, pack=True, label_index=True)(rows)
    reference = model(**{k: v for k, v in batch.items() if k != speed.LABEL_INDEX}).loss
    reference.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    ours = speed.labelled_loss(model, dict(batch))
    ours.backward()
    assert torch.allclose(ours, reference, atol=1e-6)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, ref_grads[name], atol=1e-6), name


def test_labelled_loss_divides_by_tokens_of_the_whole_accumulated_batch(tiny_llama):
    model = _model(tiny_llama)
    rows = _rows([10, 10], seed=3)
    batch = Collator(0, pack=True, label_index=True)(rows)
    n = int(batch[speed.LABEL_INDEX].numel())
    with torch.no_grad():
        mean = speed.labelled_loss(model, dict(batch))
        scaled = speed.labelled_loss(model, dict(batch), num_items_in_batch=torch.tensor(4 * n))
    assert torch.allclose(scaled * 4, mean, atol=1e-6)


def test_heads_with_scaling_are_not_replaced(tiny_llama):
    model = _model(tiny_llama)
    speed.causal_lm(model).config.final_logit_softcapping = 30.0
    assert not speed.plain_lm_head(model)


def test_collator_counts_only_real_tokens():
    rows = _rows([3, 8])
    assert Collator(0, pack=False).count(Collator(0, pack=False)(rows)) == 11
    assert Collator(0, pack=True).count(Collator(0, pack=True)(rows)) == 11


def _examples(n=6):
    from backpropagate_core.data.formats import Example

    return [Example([{"role": "user", "content": f"Question {i}?"},
                     {"role": "assistant", "content": f"Answer {i}."}], i + 1) for i in range(n)]


def test_token_cache_reuses_rows_and_misses_on_any_change(tiny_tokenizer, monkeypatch, tmp_path):
    from backpropagate_core.data import token_cache

    monkeypatch.setenv("BACKPROPAGATE_CACHE_DIR", str(tmp_path / "cache"))
    examples = _examples()
    first = token_cache.tokenize_all(examples, tiny_tokenizer, 64)
    assert len(list((tmp_path / "cache" / "tokens").glob("*.json"))) == 1
    calls = []
    monkeypatch.setattr(token_cache, "tokenize", lambda *a: calls.append(a) or {})
    assert token_cache.tokenize_all(examples, tiny_tokenizer, 64) == first
    assert not calls  # served from the cache
    token_cache.tokenize_all(examples, tiny_tokenizer, 32)  # another length cap
    examples[0].messages[1]["content"] = "A changed answer."
    token_cache.tokenize_all(examples, tiny_tokenizer, 64)  # other data
    assert len(calls) == 2 * len(examples)


def test_token_cache_key_follows_the_chat_template(tiny_tokenizer):
    import copy

    from backpropagate_core.data import token_cache

    other = copy.deepcopy(tiny_tokenizer)
    other.chat_template = tiny_tokenizer.chat_template.replace("\n", "\n\n")
    assert token_cache.key(_examples(), tiny_tokenizer, 64) != token_cache.key(_examples(), other, 64)


def test_a_damaged_cache_entry_is_rebuilt(tiny_tokenizer, monkeypatch, tmp_path):
    from backpropagate_core.data import token_cache

    monkeypatch.setenv("BACKPROPAGATE_CACHE_DIR", str(tmp_path / "cache"))
    rows = token_cache.tokenize_all(_examples(), tiny_tokenizer, 64)
    entry = next((tmp_path / "cache" / "tokens").glob("*.json"))
    entry.write_text("{not json")
    assert token_cache.tokenize_all(_examples(), tiny_tokenizer, 64) == rows


def test_varlen_attention_matches_the_block_mask_and_restores(tiny_llama):
    model = _model(tiny_llama)
    rows = _rows([7, 19, 3, 12], seed=4)
    batch = Collator(0, pack=True)(rows)
    with_lengths = speed.pack_batch(rows, lengths=True)
    with torch.no_grad():
        masked = model(**batch).loss
        previous = speed.use_varlen_attention(model)
        assert previous == "sdpa"
        varlen = model(**with_lengths).loss
        unsplit = model(**batch).loss  # a packed row without lengths still gets its block mask
        padded = _padded_loss(model, rows, pad_id=0)  # unpacked batches still get their mask
        speed.restore_attention(model, previous)
    assert speed.causal_lm(model).config._attn_implementation == "sdpa"
    for loss in (varlen, unsplit, padded):
        assert torch.allclose(loss, masked, atol=1e-5), (loss, masked)


def test_grouped_causal_attention_matches_sdpa():
    """The CPU path of `varlen_sdpa`: grouped query heads, causal, scaled like sdpa."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 6, 13, 8), torch.randn(1, 2, 13, 8), torch.randn(1, 2, 13, 8)
    expected = F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1),
                                              is_causal=True).transpose(1, 2)
    assert torch.allclose(speed.grouped_causal_attention(q, k, v, 8 ** -0.5), expected, atol=1e-5)


def test_varlen_attention_keeps_gemma3s_sliding_window(tmp_path):
    """Gemma 3's local layers see the last 32 tokens (the tiny model's window): a packed row
    through `varlen_sdpa` computes what each example computes alone, on the matmul path (40
    tokens) and the sdpa path (200 tokens, past MATMUL_ATTENTION_MAX_LEN) alike."""
    from tests.tiny import GEMMA_SLIDING_WINDOW, build_model

    model = _model(build_model(tmp_path / "gemma3", arch="gemma3"))
    rows = _rows([200, 40, 9], seed=5)
    assert max(len(r["input_ids"]) for r in rows) > speed.MATMUL_ATTENTION_MAX_LEN > 40 > GEMMA_SLIDING_WINDOW
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows])
        previous = speed.use_varlen_attention(model)
        assert previous == "sdpa"
        packed = speed.pack_batch(rows, lengths=True)
        packed.pop("labels")
        varlen = model(**packed).logits[0]
        speed.restore_attention(model, previous)
    assert torch.allclose(varlen, alone, atol=1e-4), (varlen - alone).abs().max()


def test_input_casts_are_skipped_only_under_autocast_and_restored(tiny_llama):
    model = _model(tiny_llama)
    assert speed.skip_input_casts(model, autocast=False) == []
    changed = speed.skip_input_casts(model, autocast=True)
    assert changed and not any(m.cast_input_dtype_enabled for m in changed)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 inputs reach the fp32 adapters
        model(**speed.pack_batch(_rows([5, 6]))).loss.backward()
    speed.restore_input_casts(changed)
    assert all(m.cast_input_dtype_enabled for m in changed)


def test_backend_choice(monkeypatch):
    from backpropagate_core.training import backends
    from backpropagate_core.errors import BackpropError

    monkeypatch.setattr(backends, "installed", lambda: True)
    assert backends.choose("transformers", "cuda").backend == "transformers"
    assert backends.choose("auto", "cuda").backend == "unsloth"
    assert backends.choose("auto", "cpu").backend == "transformers"  # ours measured faster on CPUs
    assert backends.choose("unsloth", "cpu").backend == "unsloth"
    monkeypatch.setattr(backends, "installed", lambda: False)
    assert backends.choose("auto", "cuda").reason == "Unsloth is not installed"
    with pytest.raises(BackpropError) as err:
        backends.choose("unsloth", "cuda")
    assert err.value.code == "DEP_MISSING"


def test_unsloth_default_targets_follow_the_models_names():
    """Unsloth's default list names unfused projections; Phi-3 fuses q/k/v and gate/up."""
    from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    from backpropagate_core.model.loader import UNSLOTH_TARGETS, unsloth_targets

    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)
    assert unsloth_targets(LlamaForCausalLM(LlamaConfig(**shape))) == UNSLOTH_TARGETS
    assert unsloth_targets(Phi3ForCausalLM(Phi3Config(**shape))) == ["o_proj", "down_proj", "qkv_proj",
                                                                    "gate_up_proj"]


def test_unsloth_backend_trains_with_the_same_events_and_artifacts(tiny_llama, tmp_path):
    """In its own process: importing Unsloth patches transformers and TRL process-wide."""
    import importlib.util
    import json
    import subprocess
    import sys

    if importlib.util.find_spec("unsloth") is None:
        pytest.skip("unsloth is not installed (make unsloth)")
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"Hi {i}"},
                                                       {"role": "assistant", "content": f"Hello {i}."}]})
                              for i in range(8)))
    script = (f"from backpropagate_core.api import Trainer\n"
              f"r = Trainer({str(tiny_llama)!r}, backend='unsloth', report_to='none')"
              f".train({str(data)!r}, steps=2, val_fraction=0.0, save_steps=2)\n"
              f"print('RESULT', r.status, r.steps, r.adapter_path)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "UNSLOTH_DISABLE_STATISTICS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    status, steps, adapter = proc.stdout.split("RESULT ")[-1].split()
    assert status == "completed" and steps == "2"
    assert (tmp_path / adapter / "adapter_model.safetensors").is_file()
    from backpropagate_core.runs.store import RunStore

    events = [e for _, e in RunStore().events((tmp_path / adapter).parent.name)]
    kinds = [e["type"] for e in events]
    assert kinds.count("step") == 2 and "checkpoint" in kinds and kinds[-1] == "finished"
    assert any("backend unsloth" in e.get("message", "") for e in events)


def test_fit_runs_the_labelled_loss_under_autocast(tiny_llama, tiny_tokenizer, tmp_path):
    """The labelled loss calls the decoder directly, past the autocast accelerate wraps
    around model.forward: fit must put autocast back (a bf16 run would be fp32 otherwise)."""
    from backpropagate_core.config import TrainingSettings
    from backpropagate_core.training.trainer import fit

    model = _model(tiny_llama).train()
    seen = []
    speed.causal_lm(model).model.register_forward_pre_hook(
        lambda module, args: seen.append(torch.is_autocast_enabled("cpu")))
    t = TrainingSettings(steps=2, batch_size=2, grad_accum=1, learning_rate=1e-3, warmup_ratio=0.0,
                         max_seq_len=64, save_steps=100, val_fraction=0.0, precision="bf16",
                         gradient_checkpointing=False, report_to="none")
    fit(model, tiny_tokenizer, _rows([9, 12, 7, 10]), [], t, run_id="r", output_dir=tmp_path / "ckpt",
        sink=lambda e: None, resume_from=None, cancel_flag=tmp_path / "CANCEL")
    assert seen and all(seen), seen


def test_single_process_cuda_runs_load_onto_the_gpu(monkeypatch):
    """Liger's Triton kernels failed on an H200 for a model loaded on the CPU and moved by
    the Trainer; a single-process CUDA run loads straight onto its GPU instead."""
    from backpropagate_core.training import backends

    assert backends._this_gpu() is None  # no GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert backends._this_gpu() == {"": 0}
    monkeypatch.setenv("WORLD_SIZE", "2")  # under accelerate launch, accelerate places the model
    assert backends._this_gpu() is None
