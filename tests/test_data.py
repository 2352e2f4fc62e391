"""Datasets: loading every format, templating, assistant-only labels, errors, report, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from backpropagate_core.data import dataset as data
from backpropagate_core.data import report as data_report
from backpropagate_core.data.templates import IGNORE_INDEX, count_tokens
from backpropagate_core.errors import BackpropError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

CHAT = [
    {"role": "system", "content": "You are a baker."},
    {"role": "user", "content": "Why knead bread?"},
    {"role": "assistant", "content": "Kneading builds gluten."},
    {"role": "user", "content": "How long?"},
    {"role": "assistant", "content": "About ten minutes."},
]

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Like Qwen2.5: a default system prompt whenever the conversation has none.
DEFAULT_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Like Qwen3: the last reply carries an (empty) reasoning block, earlier ones do not, so
# prefixes of the conversation are not prefixes of the whole.
THINKING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' and loop.last %}"
    "{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' + message['content'] + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NO_SYSTEM_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def sharegpt(*turns: str, system: str | None = None) -> dict:
    conv = [{"from": "system", "value": system}] if system else []
    conv += [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]
    return {"conversations": conv}


def labelled_segments(tokenizer, encoded: dict) -> list[str]:
    """Decode each run of consecutive labelled tokens."""
    runs, current = [], []
    for token, label in zip(encoded["input_ids"], encoded["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


@pytest.fixture
def tok(tiny_tokenizer):
    return copy.deepcopy(tiny_tokenizer)  # tests install templates; keep the session one clean


@pytest.fixture
def plain_tok(tiny_tokenizer_no_template):
    return copy.deepcopy(tiny_tokenizer_no_template)


@pytest.fixture(scope="module")
def eos_only_tokenizer():
    """A tokenizer with no ChatML tokens at all, only an EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(["Why knead bread? Kneading builds gluten."] * 5, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")


# ---- formats ----------------------------------------------------------------------

@pytest.mark.parametrize("name, fmt, first", [
    ("quickstart.jsonl", "sharegpt", {"role": "user", "content": "Why does bread dough need to be kneaded?"}),
    ("formats/openai.jsonl", "openai", {"role": "system", "content": "You are a friendly baking assistant."}),
    ("formats/alpaca.json", "alpaca", {"role": "user", "content": "Explain what an autolyse is."}),
    ("formats/prompt_completion.csv", "prompt_completion", {"role": "user", "content": "What is a poolish?"}),
])
def test_example_files_load_clean(name, fmt, first):
    loaded = data.load(EXAMPLES / name)
    assert loaded.format == fmt
    assert loaded.problems == []
    assert loaded.examples[0].messages[0] == first
    assert all(any(m["role"] == "assistant" and m["content"] for m in ex.messages) for ex in loaded.examples)


def test_quickstart_is_a_real_dataset():
    loaded = data.load(EXAMPLES / "quickstart.jsonl")
    assert 30 <= len(loaded.examples) <= 40
    assert data_report.build_report(loaded).duplicates == 0
    assert any(ex.messages[0]["role"] == "system" for ex in loaded.examples)
    assert max(len(ex.messages) for ex in loaded.examples) >= 6  # some multi-turn


def test_text_format(tmp_path):
    loaded = data.load(EXAMPLES / "formats" / "text.jsonl")
    assert loaded.format == "text"
    assert loaded.examples[0].messages == [] and loaded.examples[0].text.startswith("Bread is made")


def test_sharegpt_speaker_aliases(tmp_path):
    conv = [{"from": "system", "value": "s"}, {"from": "user", "value": "u1"}, {"from": "bot", "value": "a1"},
            {"from": "Human", "value": "u2"}, {"from": "chatgpt", "value": "a2"}, {"from": "human", "value": "u3"},
            {"from": "assistant", "value": "a3"}]
    loaded = data.load(write_jsonl(tmp_path / "d.jsonl", [{"conversations": conv}]))
    assert [m["role"] for m in loaded.examples[0].messages] == [
        "system", "user", "assistant", "user", "assistant", "user", "assistant"]


def test_alpaca_input_and_system(tmp_path):
    rows = [{"instruction": "Convert", "input": "7 g instant yeast", "output": "21 g fresh", "system": "Be exact."},
            {"instruction": "Say hi", "output": "Hi"}]
    loaded = data.load(write_jsonl(tmp_path / "a.jsonl", rows))
    assert loaded.format == "alpaca"
    assert loaded.examples[0].messages == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "Convert\n\n7 g instant yeast"},
        {"role": "assistant", "content": "21 g fresh"}]
    assert loaded.examples[1].messages == [{"role": "user", "content": "Say hi"},
                                           {"role": "assistant", "content": "Hi"}]


def test_prompt_response_and_conversational_prompt_completion(tmp_path):
    rows = [{"prompt": "Q1", "response": "A1"},
            {"prompt": [{"role": "user", "content": "Q2"}], "completion": [{"role": "assistant", "content": "A2"}]}]
    loaded = data.load(write_jsonl(tmp_path / "p.jsonl", rows))
    assert loaded.format == "prompt_completion"
    assert [ex.messages[-1]["content"] for ex in loaded.examples] == ["A1", "A2"]


def test_openai_content_parts(tmp_path):
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
                        {"role": "assistant", "content": "Hi"}]}
    loaded = data.load(write_jsonl(tmp_path / "o.jsonl", [row]))
    assert loaded.examples[0].messages[0] == {"role": "user", "content": "Hello"}


def test_forced_format(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"instruction": "i", "output": "o", "text": "the whole thing"}])
    assert data.load(path).format == "alpaca"
    assert data.load(path, format="text").examples[0].text == "the whole thing"


# ---- templating and labels --------------------------------------------------------

def test_model_chat_template_is_used(tok):
    example = data.Example(CHAT, line=1)
    encoded = data.tokenize(example, tok, None)
    assert tok.decode(encoded["input_ids"]) == tok.apply_chat_template(CHAT, tokenize=False)
    assert not data.ensure_chat_template(tok)


def test_fallback_template_when_absent(plain_tok):
    assert plain_tok.chat_template is None
    assert data.ensure_chat_template(plain_tok) is True
    assert data.ensure_chat_template(plain_tok) is False
    text = plain_tok.decode(data.tokenize(data.Example(CHAT[1:3], 1), plain_tok, None)["input_ids"])
    assert text == "<|im_start|>user\nWhy knead bread?<|im_end|>\n<|im_start|>assistant\nKneading builds gluten.<|im_end|>\n"


def test_assistant_only_labels_multi_turn(tok):
    encoded = data.tokenize(data.Example(CHAT, line=1), tok, None)
    assert labelled_segments(tok, encoded) == ["Kneading builds gluten.<|im_end|>", "About ten minutes.<|im_end|>"]
    assert len(encoded["labels"]) == len(encoded["input_ids"]) == encoded["n_tokens"]
    assert encoded["truncated"] is False


def test_assistant_only_labels_with_fallback_template(plain_tok):
    encoded = data.tokenize(data.Example(CHAT, line=1), plain_tok, None)
    assert labelled_segments(plain_tok, encoded) == ["Kneading builds gluten.<|im_end|>",
                                                     "About ten minutes.<|im_end|>"]


def test_fallback_without_chatml_tokens_ends_turns_with_eos(eos_only_tokenizer):
    tok = copy.deepcopy(eos_only_tokenizer)
    encoded = data.tokenize(data.Example(CHAT[1:3], line=1), tok, None)
    assert labelled_segments(tok, encoded) == ["Kneading builds gluten.</s>"]
    assert encoded["input_ids"].count(tok.eos_token_id) == 2


@pytest.mark.parametrize("template, extra_tokens, end", [
    (LLAMA3_TEMPLATE, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>"),
    (DEFAULT_SYSTEM_TEMPLATE, [], "<|im_end|>"),
])
def test_assistant_only_labels_with_other_templates(tok, template, extra_tokens, end):
    tok.add_special_tokens({"additional_special_tokens": extra_tokens})
    tok.chat_template = template
    for messages in (CHAT, CHAT[1:]):  # with and without a system turn
        encoded = data.tokenize(data.Example(messages, line=1), tok, None)
        assert labelled_segments(tok, encoded) == [f"Kneading builds gluten.{end}", f"About ten minutes.{end}"]


def test_labels_when_template_renders_earlier_turns_differently(tok):
    tok.chat_template = THINKING_TEMPLATE
    segments = labelled_segments(tok, data.tokenize(data.Example(CHAT, line=1), tok, None))
    assert segments[0] == "Kneading builds gluten.<|im_end|>"
    assert segments[1].endswith("About ten minutes.<|im_end|>")
    assert len(segments) == 2


class _NoOffsets:
    """A tokenizer seen as one without offset mappings (sentencepiece-only models)."""
    is_fast = False

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)


def test_labels_without_offset_mapping_match_fast_path(tok):
    fast = data.tokenize(data.Example(CHAT, line=1), tok, None)
    assert data.tokenize(data.Example(CHAT, line=1), _NoOffsets(tok), None) == fast


def test_raw_text_labels_every_token_and_ends_with_eos(tok):
    encoded = data.tokenize(data.Example([], line=1, text="Bread is made from flour."), tok, None)
    assert encoded["labels"] == encoded["input_ids"]
    assert encoded["input_ids"][-1] == tok.eos_token_id


def test_truncation(tok):
    full = data.tokenize(data.Example(CHAT, line=1), tok, None)
    cut = data.tokenize(data.Example(CHAT, line=1), tok, 10)
    assert cut["truncated"] is True and cut["n_tokens"] == 10
    assert cut["input_ids"] == full["input_ids"][:10] and cut["labels"] == full["labels"][:10]


def test_template_rejection_is_a_coded_error(tok):
    tok.chat_template = NO_SYSTEM_TEMPLATE
    with pytest.raises(BackpropError) as err:
        data.tokenize(data.Example(CHAT, line=7), tok, None)
    assert err.value.code == "INPUT_DATASET_INVALID" and "line 7:" in err.value.message


# ---- malformed input --------------------------------------------------------------

GOOD = sharegpt("Hi", "Hello")


@pytest.mark.parametrize("bad, expected", [
    ('{"conversations": [{"from": "human", "value": "Hi"}', "invalid JSON"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt"}]}, "'conversations' turn 2 has no 'value'"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "x"}]}, "unknown speaker 'robot'"),
    ({"conversations": []}, "'conversations' is empty"),
    ({"conversations": [{"from": "human", "value": "Hi"}]}, "has no assistant reply"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}, "mixed formats"),
    ({"title": "Bread"}, "has none of the fields"),
    ('["not", "an", "object"]', "not an object"),
])
def test_bad_line_reports_code_and_line(tmp_path, bad, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, "", bad, GOOD])  # blank line 2 is allowed
    with pytest.raises(BackpropError) as err:
        data.load(path)
    assert err.value.code == "INPUT_DATASET_INVALID"
    assert err.value.message.startswith(f"{path}: line 3: ")
    assert expected in err.value.message


def test_skip_bad_lines_collects_problems(tmp_path):
    rows = [GOOD, "{oops", sharegpt("Hi", "Hello", "Again?", "Yes"), {"conversations": []}, GOOD]
    loaded = data.load(write_jsonl(tmp_path / "d.jsonl", rows), skip_bad_lines=True)
    assert [ex.line for ex in loaded.examples] == [1, 3, 5]
    assert [(p.line, p.code) for p in loaded.problems] == [(2, "INPUT_DATASET_INVALID"), (4, "INPUT_DATASET_INVALID")]
    assert loaded.problems[1].message == "line 4: 'conversations' is empty"


@pytest.mark.parametrize("name, content, code", [
    ("missing.jsonl", None, "INPUT_DATASET_NOT_FOUND"),
    ("empty.jsonl", "\n\n", "INPUT_DATASET_EMPTY"),
    ("odd.jsonl", '{"question": "q", "answer": "a"}\n', "INPUT_DATASET_FORMAT_UNKNOWN"),
    ("notes.txt", "hello\n", "INPUT_DATASET_FORMAT_UNKNOWN"),
])
def test_file_level_errors(tmp_path, name, content, code):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(BackpropError) as err:
        data.load(path)
    assert err.value.code == code and str(path) in err.value.message


def test_nothing_usable_in_skip_mode_is_empty(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["{bad", {"conversations": []}])
    with pytest.raises(BackpropError) as err:
        data.load(path, skip_bad_lines=True)
    assert err.value.code == "INPUT_DATASET_EMPTY" and "line 1:" in err.value.message


# ---- file types -------------------------------------------------------------------

def test_json_array_reports_the_line_a_record_starts_on(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD, GOOD, {"conversations": [{"from": "gpt"}]}], indent=2))
    starts = [i + 1 for i, text in enumerate(path.read_text().splitlines()) if text == "  {"]
    assert starts[0] == 2 and len(starts) == 3
    with pytest.raises(BackpropError) as err:
        data.load(path)
    assert f"line {starts[2]}: 'conversations' turn 1 has no 'value'" in err.value.message
    assert [ex.line for ex in data.load(path, skip_bad_lines=True).examples] == starts[:2]


def test_json_lines_in_a_json_file(tmp_path):
    path = write_jsonl(tmp_path / "d.json", [GOOD, GOOD])
    assert len(data.load(path).examples) == 2


def test_csv_lines_count_multiline_cells(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\n"two\nlines",A\nQ,A,extra\nQ3,A3\n')
    with pytest.raises(BackpropError) as err:
        data.load(path)
    assert "line 4: has more cells than the header" in err.value.message  # header 1, row spans 2-3
    assert [ex.line for ex in data.load(path, skip_bad_lines=True).examples] == [2, 5]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD, sharegpt("Q", "A", system="S")]), path)
    loaded = data.load(path)
    assert loaded.format == "sharegpt" and loaded.examples[1].messages[0] == {"role": "system", "content": "S"}


def test_saved_hf_dataset_folder(tmp_path):
    import datasets

    rows = [{"instruction": f"i{n}", "input": None, "output": f"o{n}"} for n in range(3)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(tmp_path / "saved")
    loaded = data.load(tmp_path / "saved")
    assert loaded.format == "alpaca" and [ex.line for ex in loaded.examples] == [1, 2, 3]


def test_folder_of_files_prefers_train_split(tmp_path):
    folder = tmp_path / "hub"
    (folder / "data").mkdir(parents=True)
    write_jsonl(folder / "data" / "train.jsonl", [GOOD, GOOD])
    write_jsonl(folder / "data" / "test.jsonl", [GOOD])
    loaded = data.load(folder)
    assert loaded.format == "sharegpt" and len(loaded.examples) == 2


# ---- split ------------------------------------------------------------------------

def test_split_is_deterministic_and_disjoint():
    examples = [data.Example([], line=n, text=str(n)) for n in range(1, 101)]
    train, val = data.split(examples, 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert {ex.line for ex in train} | {ex.line for ex in val} == set(range(1, 101))
    assert data.split(examples, 0.1, seed=3) == (train, val)
    assert data.split(examples, 0.1, seed=4)[1] != val


@pytest.mark.parametrize("n, fraction, n_val", [(100, 0.0, 0), (9, 0.3, 0), (10, 0.01, 1), (10, 0.99, 9)])
def test_split_sizes(n, fraction, n_val):
    train, val = data.split([data.Example([], line=i, text="x") for i in range(n)], fraction, seed=0)
    assert len(val) == n_val and len(train) == n - n_val and train


# ---- report -----------------------------------------------------------------------

def test_report_figures(tmp_path, tok):
    long_reply = " ".join(["bread"] * 60)
    rows = [sharegpt("Hi", "Hello"), sharegpt("hi ", "  hello"), sharegpt("Q", "   "),
            sharegpt("Q", long_reply), "{broken"]
    rep = data_report.report(write_jsonl(tmp_path / "d.jsonl", rows), tok, max_seq_len=40)
    assert (rep.format, rep.examples, rep.duplicates, rep.empty, rep.over_long) == ("sharegpt", 4, 1, 1, 1)
    assert [p.line for p in rep.problems] == [5]
    lengths = count_tokens(tok, data.load(tmp_path / "d.jsonl", skip_bad_lines=True).examples)[0]
    assert rep.token_percentiles == {"p50": sorted(lengths)[1], "p90": max(lengths), "p95": max(lengths),
                                     "p99": max(lengths), "max": max(lengths)}
    assert sum(b["count"] for b in rep.histogram) == 4 and len(rep.histogram) <= 20
    assert rep.histogram[0]["bin_start"] == min(lengths) and rep.histogram[-1]["bin_end"] >= max(lengths)
    assert all(b["bin_start"] == a["bin_end"] + 1 for a, b in zip(rep.histogram, rep.histogram[1:]))
    assert rep.total_tokens == sum(lengths)
    assert rep.preview[0] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    json.dumps(rep.to_dict())


def test_report_token_counts_match_tokenize(tok):
    loaded = data.load(EXAMPLES / "quickstart.jsonl")
    counts, rejected = count_tokens(tok, loaded.examples[:5])
    assert not rejected
    assert counts == [data.tokenize(ex, tok, None)["n_tokens"] for ex in loaded.examples[:5]]


def test_report_without_tokenizer():
    rep = data_report.report(EXAMPLES / "quickstart.jsonl")
    assert rep.token_percentiles is None and rep.histogram == [] and rep.over_long == 0
    assert len(rep.preview) == 5


def test_report_lists_examples_the_template_rejects(tmp_path, tok):
    tok.chat_template = NO_SYSTEM_TEMPLATE
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, sharegpt("Q", "A", system="S")])
    rep = data_report.report(path, tok)
    assert rep.examples == 2 and rep.token_percentiles["max"] > 0
    assert [(p.line, p.code) for p in rep.problems] == [(2, "INPUT_DATASET_INVALID")]
    assert "System role not supported" in rep.problems[0].message


# ---- CLI --------------------------------------------------------------------------

def run_cli(*args: str) -> int:
    import backpropagate_core.cli  # noqa: F401  (registers the commands)
    from backpropagate_core.cli.app import main

    return main(["data", "report", *args])


def test_cli_report_json_without_model(capsys):
    assert run_cli(str(EXAMPLES / "quickstart.jsonl"), "--model", "none", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "sharegpt" and out["examples"] >= 30 and out["token_percentiles"] is None


def test_cli_report_json_with_model(capsys, tiny_llama):
    assert run_cli(str(EXAMPLES / "quickstart.jsonl"), "--model", str(tiny_llama),
                   "--max-seq-len", "64", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["token_percentiles"]["max"] > 64 and out["over_long"] > 0 and len(out["histogram"]) == 20


def test_cli_table_output(capsys):
    assert run_cli(str(EXAMPLES / "formats" / "alpaca.json"), "--model", "none") == 0
    out = capsys.readouterr().out
    assert "alpaca" in out and "examples" in out


def test_cli_report_lists_every_problem_by_default(tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, "{nope", GOOD, {"conversations": [{"from": "human"}]}])
    assert run_cli(str(path), "--model", "none", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["examples"] == 2 and [p["line"] for p in out["problems"]] == [2, 4]


def test_cli_strict_report_exits_1_with_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, GOOD, {"conversations": [{"from": "human"}]}])
    assert run_cli(str(path), "--model", "none", "--strict", "--json") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "[INPUT_DATASET_INVALID]" in err and "line 3: 'conversations' turn 1 has no 'value'" in err


def test_cli_skip_bad_lines_lists_problems(tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, "{nope", GOOD])
    assert run_cli(str(path), "--model", "none", "--skip-bad-lines", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["examples"] == 2 and [p["line"] for p in out["problems"]] == [2]


def test_a_parquet_bomb_is_refused_from_its_metadata(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"text": ["x" * 1000] * 2000}), path, row_group_size=500)
    assert len(data.load(path).examples) == 2000  # read row group by row group
    monkeypatch.setattr(data, "PARQUET_MAX_ROWS", 1000)
    with pytest.raises(BackpropError) as err:
        data.load(path)
    assert err.value.code == "INPUT_DATASET_INVALID" and "2000 rows" in err.value.message
