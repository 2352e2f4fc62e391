"""Chat feedback: the append-only file, the pairs it makes, the dataset and `backprop feedback`."""

from __future__ import annotations

import json
import threading

import pytest

from backpropagate_core.cli.app import main
from backpropagate_core.data import feedback
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.layout import RunDir
from backpropagate_core.runs.store import RunStore

Q = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
Q2 = [{"role": "user", "content": "2 + 2?"}]


@pytest.fixture
def run_dir(tmp_path) -> RunDir:
    (tmp_path / "run").mkdir()
    return RunDir(tmp_path / "run")


def test_records_round_trip(run_dir):
    given = feedback.record(run_dir, Q, "Paris is the capital.", "up", source="run-1")
    edit = feedback.record(run_dir, Q2, "5", "edit", edited="4")
    assert feedback.items(run_dir) == [given, edit]
    assert given.source == "run-1" and edit.edited == "4" and len(given.id) == 12 and given.id != edit.id
    lines = run_dir.feedback.read_text().splitlines()
    assert [json.loads(line)["verdict"] for line in lines] == ["up", "edit"]


def test_invalid_feedback_names_every_problem(run_dir):
    with pytest.raises(BackpropError) as err:
        feedback.record(run_dir, [{"role": "assistant", "content": "hi"}], "x", "meh")
    assert err.value.code == "INPUT_FEEDBACK_INVALID"
    assert "end with the user's turn" in err.value.message and "verdict must be one of" in err.value.message
    with pytest.raises(BackpropError, match="edit needs the answer you wanted"):
        feedback.record(run_dir, Q, "x", "edit", edited="  ")
    with pytest.raises(BackpropError, match="non-empty list"):
        feedback.record(run_dir, [], "x", "up")
    assert not run_dir.feedback.exists()


def test_a_torn_last_line_is_skipped_and_the_next_record_is_kept(run_dir):
    first = feedback.record(run_dir, Q, "Paris.", "up")
    second = feedback.record(run_dir, Q, "Lyon.", "down")
    with open(run_dir.feedback, "ab") as f:  # a crash halfway through a third write
        f.write(b'{"id": "dead", "ts": 1.0, "prompt": [{"role": "us')
    assert feedback.items(run_dir) == [first, second]
    third = feedback.record(run_dir, Q2, "4", "up")
    assert feedback.items(run_dir) == [first, second, third]


def test_two_writers_never_mix_their_lines(run_dir):
    def write(n):
        for i in range(40):
            feedback.record(run_dir, Q, f"answer {n}-{i} " + "x" * 2000, "down")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(feedback.items(run_dir)) == 160


def test_an_edit_makes_a_pair_of_wanted_over_given(run_dir):
    item = feedback.record(run_dir, Q, "France is a country whose capital is...", "edit", edited="Paris.")
    [pair] = feedback.pairs(feedback.items(run_dir))
    assert (pair.chosen, pair.rejected, pair.feedback_ids) == ("Paris.", item.answer, (item.id,))
    assert pair.prompt == Q


def test_up_pairs_with_every_down_to_the_same_prompt(run_dir):
    up = feedback.record(run_dir, Q, "Paris.", "up")
    down1 = feedback.record(run_dir, [dict(m, content=m["content"] + "  ") for m in Q], "Lyon.", "down")
    down2 = feedback.record(run_dir, Q, "Marseille.", "down")
    feedback.record(run_dir, Q2, "5", "down")  # another prompt: nothing to pair with
    got = [(p.chosen, p.rejected, p.feedback_ids) for p in feedback.pairs(feedback.items(run_dir))]
    assert got == [("Paris.", "Lyon.", (up.id, down1.id)), ("Paris.", "Marseille.", (up.id, down2.id))]


def test_identical_and_duplicate_pairs_are_dropped(run_dir):
    feedback.record(run_dir, Q, "Paris.", "edit", edited=" Paris. ")  # the edit changed nothing
    feedback.record(run_dir, Q2, "5", "edit", edited="4")
    feedback.record(run_dir, Q2, "4", "up")  # the wanted answer, given later: the same pair again
    got = [(p.chosen, p.rejected) for p in feedback.pairs(feedback.items(run_dir))]
    assert got == [("4", "5")]


def test_a_later_verdict_replaces_the_earlier_one(run_dir):
    feedback.record(run_dir, Q, "Paris.", "up")
    feedback.record(run_dir, Q, "Lyon.", "down")
    assert len(feedback.pairs(feedback.items(run_dir))) == 1
    feedback.record(run_dir, Q, "Lyon.", "up")  # changed their mind: both answers are fine
    assert feedback.pairs(feedback.items(run_dir)) == []
    assert feedback.counts(feedback.items(run_dir)) == {"up": 2, "down": 0, "edit": 0}
    assert len(feedback.items(run_dir)) == 3  # the raw record keeps every verdict


def test_too_few_pairs_say_how_many_and_what_to_do(run_dir):
    for n in range(3):
        feedback.record(run_dir, [{"role": "user", "content": f"q{n}"}], "bad", "edit", edited="good")
    pairs = feedback.pairs(feedback.items(run_dir))
    assert feedback.shortfall(pairs) == ("3 preference pairs so far; train on feedback needs at least 4: "
                                         "correct or rate more answers")
    with pytest.raises(BackpropError) as err:
        feedback.require_enough(pairs)
    assert err.value.code == "INPUT_FEEDBACK_TOO_FEW"
    feedback.record(run_dir, [{"role": "user", "content": "q3"}], "bad", "edit", edited="good")
    assert feedback.shortfall(feedback.pairs(feedback.items(run_dir))) is None


def test_dataset_is_trl_conversational_and_never_replaces_another_file(run_dir, tmp_path):
    feedback.record(run_dir, Q, "Lyon.", "edit", edited="Paris.")
    pairs = feedback.pairs(feedback.items(run_dir))
    out = feedback.write_dataset(pairs, tmp_path / "prefs.jsonl")
    [line] = out.read_text().splitlines()
    assert json.loads(line) == {"prompt": Q, "chosen": [{"role": "assistant", "content": "Paris."}],
                                "rejected": [{"role": "assistant", "content": "Lyon."}]}
    assert feedback.write_dataset(pairs, out) == out  # the same content again is fine
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"prompt": "hand made", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(BackpropError) as err:
        feedback.write_dataset(pairs, mine)
    assert err.value.code == "INPUT_FILE_EXISTS" and "hand made" in mine.read_text()
    feedback.write_dataset(pairs, mine, overwrite=True)
    assert mine.read_text() == out.read_text()
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.partial"))


def _run_with_feedback() -> str:
    run = RunStore().create_run(config={}, model="tiny", dataset="facts.jsonl", status="completed")
    feedback.record(run.run_dir, Q, "Lyon.", "edit", edited="Paris.")
    feedback.record(run.run_dir, Q2, "4", "up")
    feedback.record(run.run_dir, Q2, "5", "down")
    return run.id


def test_cli_json_lists_items_and_pairs(capsys):
    run_id = _run_with_feedback()
    assert main(["feedback", run_id[:8], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["run_id"] == run_id and shown["counts"] == {"up": 1, "down": 1, "edit": 1}
    assert [(p["chosen"], p["rejected"]) for p in shown["pairs"]] == [("Paris.", "Lyon."), ("4", "5")]
    assert len(shown["items"]) == 3 and shown["enough"] is False and "2 preference pairs" in shown["message"]


def test_cli_writes_the_dataset_and_refuses_to_replace_another(capsys, tmp_path):
    run_id = _run_with_feedback()
    out = tmp_path / "prefs.jsonl"
    assert main(["feedback", run_id, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 up, 1 down, 1 edited" in printed and "needs at least 4" in printed
    assert [json.loads(line)["chosen"][0]["content"] for line in out.read_text().splitlines()] == ["Paris.", "4"]
    other = tmp_path / "other.jsonl"
    other.write_text("mine\n")
    assert main(["feedback", run_id, "--out", str(other)]) == 1
    assert "[INPUT_FILE_EXISTS]" in capsys.readouterr().err and other.read_text() == "mine\n"
    assert main(["feedback", run_id, "--out", str(other), "--force"]) == 0
    assert other.read_text() == out.read_text()


def test_cli_unknown_run_exits_with_its_code(capsys):
    assert main(["feedback", "nope", "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "STATE_RUN_NOT_FOUND"
