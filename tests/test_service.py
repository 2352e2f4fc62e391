"""The engine helper: typed plans, reports and chat answers from one long-lived process."""

from __future__ import annotations

import os
import signal
import time

import pytest

from backpropagate_core.errors import BackpropError
from backpropagate_core.runs import client
from backpropagate_core.runs.protocol import ChatAnswer, DatasetReport, Plan
from tests.test_train import write_dataset


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "facts.jsonl", repeats=10)


@pytest.fixture(scope="module", autouse=True)
def stop_helper():
    yield
    client.shutdown()


def test_plan_and_report_arrive_typed(tiny_llama, dataset):
    plan = client.plan(str(tiny_llama), str(dataset), {"steps": 7})
    assert isinstance(plan, Plan) and plan.config.training.steps == 7
    assert plan.reasons["steps"] == "set by you" and "learning_rate" in plan.reasons
    assert plan.device == "cpu" and plan.memory_gb > 0 and 0 < plan.label_fraction < 1
    assert plan.train_examples + plan.val_examples == plan.examples == 40
    report = client.dataset_report(str(dataset), model=str(tiny_llama), max_seq_len=16)
    assert isinstance(report, DatasetReport) and report.format == "sharegpt" and report.examples == 40
    assert report.token_percentiles["max"] >= report.token_percentiles["p50"] > 0
    assert report.over_long > 0 and report.histogram and report.preview[0][0].role == "user"
    assert client.dataset_report(str(dataset)).token_percentiles is None  # no model: no token counts


def test_one_helper_answers_many_calls_quickly(tiny_llama, dataset):
    client.plan(str(tiny_llama), str(dataset))
    pid = client.client().pid
    started = time.perf_counter()
    client.plan(str(tiny_llama), str(dataset), {"steps": 3})
    client.dataset_report(str(dataset), model=str(tiny_llama))
    warm = time.perf_counter() - started
    assert client.client().pid == pid
    assert warm < 1.0, f"two warm answers took {warm:.2f} s"


def test_a_killed_helper_is_started_again(tiny_llama, dataset):
    client.plan(str(tiny_llama), str(dataset))
    pid = client.client().pid
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert client.plan(str(tiny_llama), str(dataset)).examples == 40
    assert client.client().pid not in (None, pid)


def test_a_helper_dying_mid_request_is_retried_once(tiny_llama, dataset):
    helper = client.client()
    client.ping()
    helper._proc.stdin.close()  # the helper ends; the next request finds the pipe closed
    helper._proc.wait(timeout=10)
    assert client.ping().pid == helper.pid


def test_error_replies_become_coded_errors(tiny_llama, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(BackpropError) as err:
        client.plan(str(tiny_llama), str(bad))
    assert err.value.code == "INPUT_DATASET_INVALID" and err.value.hint
    with pytest.raises(BackpropError) as err:
        client.dataset_report(str(tmp_path / "missing.jsonl"))
    assert err.value.code == "INPUT_DATASET_NOT_FOUND"
    with pytest.raises(BackpropError) as err:
        client.plan(str(tiny_llama), str(bad), {"steps": -3})
    assert err.value.code == "CONFIG_INVALID"


def test_settings_travel_with_each_request(tiny_llama, dataset, monkeypatch):
    client.plan(str(tiny_llama), str(dataset))
    pid = client.client().pid
    monkeypatch.setenv("BACKPROPAGATE_TRAINING__LEARNING_RATE", "0.0005")
    assert client.plan(str(tiny_llama), str(dataset)).config.training.learning_rate == 0.0005
    assert client.client().pid == pid  # no restart for a settings change


def test_a_slow_answer_times_out_with_a_coded_error(tiny_llama, dataset):
    client.ping()
    with pytest.raises(BackpropError) as err:
        client.plan(str(tiny_llama), str(dataset), timeout=0.0001)
    assert err.value.code == "RUNTIME_UNEXPECTED" and "took more than" in err.value.message
    assert client.plan(str(tiny_llama), str(dataset)).examples == 40  # a fresh helper serves the next


def test_chat_answers_two_questions_with_one_model_load(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from tests.export_fixtures import make_run, tiny_base

    run = make_run(tiny_base(tmp_path_factory.mktemp("service-chat"), "qwen2"))
    loads = client.ping().chat_loads
    first = client.chat(run.id, [{"role": "user", "content": "What is the capital of France?"}],
                        max_new_tokens=6, compare=False)
    second = client.chat(run.id[:8], [{"role": "user", "content": "And of Spain?"}], max_new_tokens=4,
                         compare=False)
    assert isinstance(first, ChatAnswer) and list(first.answers) == ["transformers"]
    assert first.answers["transformers"].tokens and len(second.answers["transformers"].tokens) <= 4
    assert first.identical is None and first.gguf is None
    assert client.ping().chat_loads == loads + 1
    # Base · fine-tuned side by side, from the same loaded model (the adapter switched off).
    both = client.chat(run.id, [{"role": "user", "content": "What is the capital of France?"}],
                       max_new_tokens=6, compare=False, base=True)
    assert list(both.answers) == ["base", "transformers"] and client.ping().chat_loads == loads + 1
    assert both.answers["transformers"].tokens == first.answers["transformers"].tokens
    assert both.answers["base"].tokens != both.answers["transformers"].tokens  # make_run's adapter is not a no-op
    # Streaming: partial answers arrive while the final one is computed, each a prefix of it.
    partials = []
    streamed = client.chat(run.id, [{"role": "user", "content": "What is the capital of France?"}],
                           max_new_tokens=6, compare=False, base=True, on_partial=partials.append)
    assert partials and {p["engine"] for p in partials} == {"base", "transformers"}
    last = [p for p in partials if p["engine"] == "transformers"][-1]["text"]
    assert streamed.answers["transformers"].text.strip().startswith(last.strip()[:3])
    assert client.ping().chat_loads == loads + 1
    with pytest.raises(BackpropError) as err:
        client.chat(run.id, [{"role": "assistant", "content": "no question"}])
    assert err.value.code == "INPUT_EXPORT_OPTION_INVALID"
