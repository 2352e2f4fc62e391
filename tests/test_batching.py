"""Micro-batches filled to a token budget when the batch size is left empty; `--batch-size` stays exact."""

from pathlib import Path

import pytest

from backpropagate_core.config import LoraSettings, TrainingSettings
from backpropagate_core.runs import events as ev
from backpropagate_core.training import batching, defaults
from backpropagate_core.training.trainer import MicroBatch
from tests.tiny import qa_jsonl

CPU = defaults.Hardware("cpu", "test cpu", 16.0, False)


def test_groups_hold_every_example_once_within_the_budget():
    lengths = [30, 70, 200, 5, 64, 900, 12, 40] * 25
    groups = batching.token_groups(lengths, 256, seed=3)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) <= batching.MAX_EXAMPLES
        assert sum(lengths[i] for i in g) <= 256 or len(g) == 1  # a longer example goes alone
    # Greedy filling in a shuffled order leaves little of each budget unused.
    fill = sum(lengths) / sum(max(256, sum(lengths[i] for i in g)) for g in groups)
    assert fill > 0.7, fill
    assert batching.token_groups(lengths, 256, seed=3) == groups  # a resumed run rebuilds them
    assert batching.token_groups(lengths, 256, seed=4) != groups


def test_padded_groups_count_padding_and_the_example_cap_holds():
    lengths = [10] * 9 + [100]
    for g in batching.token_groups(lengths, 120, seed=0, padded=True):
        assert len(g) * max(lengths[i] for i in g) <= 120 or len(g) == 1
    assert max(len(g) for g in batching.token_groups([3] * 2000, 10_000, seed=0, device="cuda")) == \
        batching.MAX_EXAMPLES


def test_steps_average_the_examples_the_defaults_learned_with():
    """Fewer, larger steps learn less per example: on a CPU a micro-batch holds at most the
    examples one optimizer step averaged before (4, or 8 from 200 examples); a GPU takes
    more but keeps a pass at STEPS_PER_EPOCH steps or more."""
    assert batching.example_cap(27) == 4 and batching.example_cap(300) == 8
    assert batching.example_cap(100_000) == 8
    assert batching.example_cap(27, "cuda") == 4 and batching.example_cap(300, "cuda") == 12
    assert batching.example_cap(100_000, "cuda") == batching.MAX_EXAMPLES
    for n in (27, 120, 600, 5000):
        groups = batching.token_groups([20] * n, 100_000, seed=1, device="cuda")
        assert len(groups) >= min(n // 4, batching.STEPS_PER_EPOCH), (n, len(groups))


def test_budget_comes_from_the_hardware():
    assert batching.budget("cpu", 256)[0] == batching.CPU_TOKENS
    assert batching.budget("cpu", 2048)[0] == 2048  # never below one whole example
    assert batching.budget("cuda", 1024, fits_batch=4)[0] == 4096
    assert batching.budget("cuda", 4096, fits_batch=64)[0] == batching.GPU_MAX_TOKENS


def resolve(lengths, **training):
    return defaults.resolve(TrainingSettings(**training), LoraSettings(), CPU, n_train=len(lengths),
                            token_lengths=lengths, model_params_b=0.135, model_max_len=2048)


def test_empty_batch_size_fills_micro_batches_to_a_token_budget():
    short = [70] * 300  # short chat rows
    r = resolve(short)
    t = r.training
    assert t.batch_size is None and t.batch_tokens == batching.CPU_TOKENS
    assert "batch_tokens" in r.reasons["batch_size"] and "spread" in r.reasons["batch_tokens"]
    per = batching.per_group([min(n, t.max_seq_len) for n in short], t.batch_tokens, t.seed)
    assert per == pytest.approx(len(short) / len(batching.token_groups(short, t.batch_tokens, t.seed)))
    assert per == pytest.approx(8, abs=0.2) and t.grad_accum == 1  # one micro-batch of 8, not 4 x 2
    assert f"~{per:.1f} examples" in r.reasons["grad_accum"]
    # 300 examples, 5 epochs, 8 per step
    assert t.steps == pytest.approx(300 * 5 / per, abs=2)

    long = [900] * 300
    t = resolve(long).training
    assert t.batch_tokens == 1024 and t.grad_accum == 8  # one long example per micro-batch, 8 per step

    facts = resolve([56] * 27).training  # bench/quality.py's facts: steps as with a batch of 4
    assert t.batch_size is None and facts.grad_accum == 1 and facts.steps == 70
    # Long rows: ~3 fit in 1,024 tokens, so two micro-batches make a step of at least 4.
    assert resolve([300] * 35).training.grad_accum == 2


def test_a_given_batch_size_is_exact_and_pairs_keep_example_batches():
    t = resolve([70] * 300, batch_size=3).training
    assert t.batch_size == 3 and t.batch_tokens is None and t.grad_accum == 2
    t = resolve([70] * 300, packing=False).training
    assert t.batch_size == 4 and t.batch_tokens is None
    t = resolve([70] * 300, method="dpo").training
    assert t.batch_size == 4 and t.batch_tokens is None


def test_out_of_memory_halves_the_token_budget():
    size = MicroBatch(None, 1024)
    assert str(size) == "micro-batches of 1024 tokens"
    assert str(size.halved()) == "micro-batches of 512 tokens" and not size.smallest
    assert MicroBatch(None, 64).smallest and MicroBatch(1, None).smallest
    assert str(MicroBatch(4, None).halved()) == "batch 2"


@pytest.fixture
def short_rows(tmp_path) -> Path:
    return qa_jsonl(tmp_path / "qa.jsonl", 40)


def test_training_steps_hold_the_budget_and_a_given_batch_exactly(tiny_llama, short_rows, monkeypatch):
    from backpropagate_core.api import Trainer
    from tests.test_oom import inject_oom

    state = inject_oom(monkeypatch, max_examples=10**6)
    events: list = []
    common = dict(steps=3, val_fraction=0.0, save_steps=100, learning_rate=1e-3, report_to="none")
    result = Trainer(str(tiny_llama), sink=events.append).train(short_rows, batch_tokens=96, **common)
    assert result.status == "completed" and result.steps == 3
    started = next(e for e in events if isinstance(e, ev.RunStarted))
    assert started.config["training"]["batch_tokens"] == 96 and started.config["training"]["batch_size"] is None
    # Rows of ~30 tokens: each micro-batch holds as many as fit in 96 tokens, two or three.
    assert state["sizes"] and all(n in (2, 3) for n in state["sizes"]), state["sizes"]

    state["sizes"].clear()
    Trainer(str(tiny_llama)).train(short_rows, batch_size=3, grad_accum=1, **common)
    assert state["sizes"] == [3, 3, 3]
