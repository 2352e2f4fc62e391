"""A full disk mid-save: the half-written folder stays `.partial`, is never resumed from,
is removed on the next start, and the error says STATE_DISK_FULL with the last good
checkpoint named."""

import errno
import json
import sqlite3
from pathlib import Path

import pytest

from backpropagate_core.runs import events as ev
from backpropagate_core.errors import BackpropError
from backpropagate_core.training.checkpoints import complete_checkpoints, prepare_checkpoints
from backpropagate_core.runs.store import RunStore
from backpropagate_core.api import Trainer
from backpropagate_core.training.session import classify as _classify


@pytest.fixture
def dataset(tmp_path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"Count to {i}."},
                          {"role": "assistant", "content": " ".join(str(n) for n in range(i))}]}
            for i in range(1, 13)]
    path = tmp_path / "count.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


class SafetensorError(Exception):
    """Stands in for safetensors' Rust error, which is not an OSError."""


def test_checkpoint_cut_short_by_a_full_disk(tiny_llama, dataset, monkeypatch):
    import transformers

    real = transformers.Trainer._save_optimizer_and_scheduler

    def disk_fills_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            Path(output_dir, "optimizer.pt").write_bytes(b"\0" * 4096)  # half-written
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir)

    with monkeypatch.context() as patch:
        patch.setattr(transformers.Trainer, "_save_optimizer_and_scheduler", disk_fills_at_step_4)
        with pytest.raises(BackpropError) as err:
            Trainer(str(tiny_llama)).train(dataset, steps=6, save_steps=2, val_fraction=0.0)
    assert err.value.code == "STATE_DISK_FULL" and err.value.retryable
    assert "last complete checkpoint: checkpoint-2" in err.value.message

    run = RunStore().list()[0]
    assert (run.status, run.error_code) == ("failed", "STATE_DISK_FULL")
    ckpts = run.run_dir / "checkpoints"
    assert (ckpts / "checkpoint-4.partial").is_dir()
    assert [p.name for p in complete_checkpoints(ckpts)] == ["checkpoint-2"]
    state = json.loads((ckpts / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and (ckpts / "checkpoint-2" / "adapter_model.safetensors").is_file()

    seen = []
    result = Trainer(str(tiny_llama), sink=seen.append).resume(run.id[:8])
    started = [e for e in seen if isinstance(e, ev.RunStarted)][0]
    assert started.resumed_from_step == 2
    assert result.status == "completed" and result.steps == 6
    assert not [p for p in ckpts.iterdir() if p.name.endswith(".partial")]


def test_adapter_save_cut_short_by_a_full_disk(tiny_llama, dataset, monkeypatch):
    from peft import PeftModel

    real = PeftModel.save_pretrained

    def disk_fills_on_adapter(self, path, *args, **kwargs):
        if str(path).endswith("adapter.partial"):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "adapter_model.safetensors").write_bytes(b"\0" * 100)
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                  'message: "No space left on device" })')
        return real(self, path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(PeftModel, "save_pretrained", disk_fills_on_adapter)
        with pytest.raises(BackpropError) as err:
            Trainer(str(tiny_llama)).train(dataset, steps=4, save_steps=2, val_fraction=0.0)
    assert err.value.code == "STATE_DISK_FULL"
    assert "last complete checkpoint: checkpoint-4" in err.value.message

    run = RunStore().list()[0]
    assert run.error_code == "STATE_DISK_FULL" and "adapter" not in run.artifacts
    assert (run.run_dir / "adapter.partial").is_dir() and not (run.run_dir / "adapter").exists()

    result = Trainer(str(tiny_llama)).resume(run.id)
    assert result.status == "completed"
    assert (run.run_dir / "adapter" / "adapter_model.safetensors").stat().st_size > 100
    assert not (run.run_dir / "adapter.partial").exists()


def test_partial_checkpoints_are_never_resumed_from(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in [("checkpoint-2", True), ("checkpoint-4", False), ("checkpoint-6.partial", True)]:
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text("{}")
        if complete:
            (folder / "backpropagate.json").write_text("{}")
    assert prepare_checkpoints(root).name == "checkpoint-2"
    assert not (root / "checkpoint-6.partial").exists()


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: "
                 "PytorchStreamWriter failed writing file data/0: file write failed"),
    OSError(None, "[WinError 112] There is not enough space on the disk"),
    sqlite3.OperationalError("database or disk is full"),
])
def test_disk_full_is_recognised_however_it_is_worded(error):
    assert _classify(error).code == "STATE_DISK_FULL"


def test_disk_full_found_behind_a_wrapping_error():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as outer:
        assert _classify(outer).code == "STATE_DISK_FULL"
    assert _classify(ValueError("bad value")).code == "RUNTIME_TRAINING_FAILED"
