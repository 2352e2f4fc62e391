"""The Train page's form from a typed plan (backpropagate_app.pages.train.form), without a browser."""

from __future__ import annotations

import pytest

from backpropagate_app.pages.train import form as f
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.protocol import Plan

PLAN = Plan.model_validate({
    "config": {"model": "m", "data": "/d.jsonl",
               "training": {"steps": 27, "learning_rate": 0.0002, "batch_size": 4, "grad_accum": 1,
                            "max_seq_len": 704, "precision": "bf16", "gradient_checkpointing": True},
               "lora": {"r": 16, "alpha": 32}},
    "reasons": {"steps": "~3 epochs", "learning_rate": "standard LoRA rate"},
    "device": "cpu", "format": "openai", "examples": 40, "train_examples": 36, "val_examples": 4,
    "memory_gb": 8.0, "label_fraction": 0.5})


def test_plan_values_and_captions_are_typed():
    values = f.plan_values(PLAN)
    assert values == {"steps": 27, "learning_rate": 0.0002, "batch_size": 4, "grad_accum": 1,
                      "max_seq_len": 704, "r": 16, "alpha": 32}
    assert {key: f.as_text(v) for key, v in values.items()}["learning_rate"] == "0.0002"
    captions = f.plan_captions(PLAN)
    assert captions["steps"] == "~3 epochs"
    assert "LoRA rank" in captions["r"]  # no reason from the plan: the field's own description
    assert "None" not in f.default_captions()["steps"]
    facts = f.MemoryFacts.of(PLAN)
    assert facts.memory_gb == 8.0 and facts.gradient_checkpointing is True and facts.load_in_4bit is False


def test_form_overrides_only_send_what_the_person_changed():
    planned = f.plan_values(PLAN)
    form = {key: f.as_text(v) for key, v in planned.items()} | {"steps": "40", "learning_rate": "1e-4", "r": ""}
    assert f.form_overrides(form, planned) == {"steps": 40, "learning_rate": 0.0001}
    assert f.form_overrides({"steps": "12"}, {}) == {"steps": 12}
    assert f.form_overrides({"learning_rate": "2e-4", "steps": "27.0"}, planned) == {}  # same numbers


def test_form_overrides_report_every_bad_field_at_once():
    with pytest.raises(BackpropError) as err:
        f.form_overrides({"steps": "ten", "learning_rate": "-1", "batch_size": "2.5"}, {})
    assert err.value.code == "CONFIG_INVALID"
    for part in ("Steps", "Learning rate", "Batch size"):
        assert part in err.value.message


def test_merge_plan_keeps_edits_and_captions_say_so():
    planned = f.plan_values(PLAN)
    form = {key: f.as_text(v) for key, v in planned.items()} | {"steps": "5"}
    fresh = planned | {"steps": 99, "learning_rate": 0.0001}
    merged = f.merge_plan(form, planned, fresh)
    assert merged["steps"] == "5" and merged["learning_rate"] == "0.0001"
    notes = f.field_captions(merged, fresh, f.plan_captions(PLAN))
    assert notes["steps"].startswith("set by you; the plan chose 99")
    assert notes["learning_rate"] == "standard LoRA rate"


def test_memory_line_uses_the_form_then_the_plan(tiny_llama):
    facts = f.MemoryFacts(device="cpu", memory_gb=8.0, label_fraction=0.5, precision="bf16")
    planned = {"max_seq_len": 128, "batch_size": 4, "r": 16}
    small = f.memory_line(str(tiny_llama), {}, planned, facts)
    assert small.startswith("Memory: about") and "of 8.0 GB of RAM" in small and "may not fit" not in small
    huge = f.memory_line(str(tiny_llama), {"batch_size": "200000"}, planned, facts)
    assert "may not fit" in huge
    assert f.memory_line(str(tiny_llama), {"batch_size": "abc"}, {"max_seq_len": 128, "r": 16}, facts) == ""
    assert "no estimate" in f.memory_line("someone/unknown-model", {}, planned, facts)
    assert f.memory_line(str(tiny_llama), {}, planned, f.MemoryFacts()) == ""  # no plan yet


PAIRS_PLAN = Plan.model_validate({
    "config": {"model": "m", "data": "/pairs.jsonl",
               "training": {"method": "dpo", "beta": 0.1, "steps": 10, "learning_rate": 2e-5, "batch_size": 2,
                            "grad_accum": 1, "max_seq_len": 64},
               "lora": {"r": 16, "alpha": 32}},
    "reasons": {"method": "the dataset holds chosen/rejected answer pairs",
                "beta": "DPO's usual strength: the model may drift moderately from where it started"},
    "device": "cpu", "format": "preference", "examples": 24, "train_examples": 22, "val_examples": 2,
    "memory_gb": 8.0})


def test_a_preference_plan_gives_beta_and_the_method_reason():
    values = f.plan_values(PAIRS_PLAN)
    assert values["beta"] == 0.1 and "beta" not in f.plan_values(PLAN)
    captions = f.plan_captions(PAIRS_PLAN)
    assert captions["method"] == "the dataset holds chosen/rejected answer pairs"
    assert captions["beta"].startswith("DPO's usual strength")
    assert f.default_captions()["beta"].endswith("Blank picks 0.1.")  # before any plan
    form = {key: f.as_text(v) for key, v in values.items()} | {"beta": "0.3"}
    notes = f.field_captions(form, values, captions)
    assert notes["beta"].startswith("set by you; the plan chose 0.1 (DPO's usual")
    assert notes["method"] == captions["method"]
    assert f.MemoryFacts.of(PAIRS_PLAN).pairs and not f.MemoryFacts.of(PLAN).pairs


def test_method_and_beta_are_sent_only_for_a_preference_dataset():
    planned = f.plan_values(PAIRS_PLAN)
    form = {key: f.as_text(v) for key, v in planned.items()}
    assert f.form_overrides(form, planned, "", pairs=True) == {}  # the plan's own choice: auto
    # The plan was made with the picked method, so it is sent even though the plan agrees.
    assert f.form_overrides(form, planned, "orpo", pairs=True) == {"method": "orpo"}
    assert f.form_overrides(form | {"beta": "0.5"}, planned, "dpo", pairs=True) == {"method": "dpo", "beta": 0.5}
    # A beta typed for an earlier preference dataset is not sent with an SFT one.
    assert f.form_overrides(form | {"beta": "0.5"}, planned, "dpo", pairs=False) == {}
    with pytest.raises(BackpropError) as err:
        f.form_overrides(form | {"beta": "strong"}, planned, "dpo", pairs=True)
    assert "Beta: 'strong' is not a number" in err.value.message


def test_memory_line_counts_both_answers_of_a_pair(tiny_llama):
    planned = {"max_seq_len": 128, "batch_size": 4, "r": 16}
    single = f.MemoryFacts(device="cpu", memory_gb=8.0)
    pairs = f.MemoryFacts(device="cpu", memory_gb=8.0, pairs=True)
    assert f.memory_line(str(tiny_llama), {}, planned, pairs) == \
        f.memory_line(str(tiny_llama), {"batch_size": "8"}, planned, single)


def test_a_token_budget_plan_shows_its_budget_and_a_typed_batch_size_overrides_it(tiny_llama):
    plan = Plan.model_validate({**PLAN.model_dump(), "config": {**PLAN.config.model_dump(), "training": {
        **PLAN.config.training.model_dump(), "batch_size": None, "batch_tokens": 1024}},
        "reasons": {"batch_size": "empty: each micro-batch is filled to batch_tokens",
                    "batch_tokens": "cpu: steps of ~1024 tokens"}})
    planned = f.plan_values(plan)
    assert planned["batch_tokens"] == 1024 and "batch_size" not in planned
    form = {key: f.as_text(v) for key, v in planned.items()}
    assert form.get("batch_size", "") == "" and f.plan_captions(plan)["batch_tokens"].startswith("cpu: steps")
    facts = f.MemoryFacts(device="cpu", memory_gb=8.0, label_fraction=0.5, precision="fp32")
    # The estimate counts the budget as rows of the max length: 1024 tokens of 128 = 8 rows.
    assert f.memory_line(str(tiny_llama), form | {"max_seq_len": "128"}, planned, facts) == \
        f.memory_line(str(tiny_llama), {"batch_size": "8"}, {"max_seq_len": 128, "r": 16}, facts)
    assert f.form_overrides(form | {"batch_size": "6"}, planned) == {"batch_size": 6}
