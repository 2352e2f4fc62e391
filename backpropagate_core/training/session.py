"""What surrounds every training run, whatever it trains: `run_session`.

A session claims the run in the store (so a dead worker is noticed), clears an old stop
request, binds the run id to every log record and the run's run.log, turns Ctrl-C and
SIGTERM into the same stop request the UI's Stop button writes, and turns any failure
into exactly one coded `Failed` event. Single runs and multi-run campaigns both train
inside one.
"""

from __future__ import annotations

import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from backpropagate_core import logs, platform_support
from backpropagate_core.errors import BackpropError, is_disk_full
from backpropagate_core.runs import events as ev
from backpropagate_core.runs.layout import RunDir
from backpropagate_core.runs.store import Run, RunStore
from backpropagate_core.training import distributed

_log = logs.get_logger(__name__)


@contextmanager
def run_session(store: RunStore, run: Run, extra_sinks=()) -> Iterator[ev.Sink]:
    """The sink the run reports through; on leaving, a coded failure if anything raised."""
    files = RunDir(run.run_dir)
    if distributed.is_main():
        sink = ev.fan_out(store.sink(), logs.log_event, *extra_sinks)
        store.claim(run.id)
        files.cancel_flag.unlink(missing_ok=True)
    else:  # under accelerate launch only rank 0 writes to the store and the run folder
        sink = distributed.follower_sink(run.id)
    with distributed.log_context(logs.bind_run(run.id, files.run_log)):
        try:
            with _stop_on_signals(files.cancel_flag):
                yield sink
        except BackpropError as err:
            sink(ev.Failed(run.id, code=err.code, message=err.message, hint=err.hint))
            raise
        except Exception as err:  # noqa: BLE001 - the worker's outer edge: record a coded failure
            coded = classify(err, files)
            sink(ev.Failed(run.id, code=coded.code, message=coded.message, hint=coded.hint))
            _log.debug("traceback of the failure above", exc_info=err)
            raise coded from err


def classify(err: Exception, files: RunDir | None = None) -> BackpropError:
    """A coded error for an unexpected exception from training."""
    from backpropagate_core.training.checkpoints import checkpoint_step, complete_checkpoints

    from backpropagate_core import memory_limit

    limited = memory_limit.coded(err)  # the address-space cap the app puts on its workers
    if limited is not None:
        return limited
    text = f"{type(err).__name__}: {err}"
    if is_disk_full(err):
        done = sorted(complete_checkpoints(files.checkpoints), key=checkpoint_step) if files else []
        last = done[-1].name if done else "none"
        return BackpropError("STATE_DISK_FULL", f"the disk filled up while writing ({text}); "
                                                f"last complete checkpoint: {last}")
    if "out of memory" in text.lower():
        return BackpropError("RUNTIME_TRAINING_FAILED", f"out of memory: {text}",
                             hint="Lower the batch size or max sequence length, or enable gradient checkpointing.")
    return BackpropError("RUNTIME_TRAINING_FAILED", text)


def remove_partials(folder: Path) -> None:
    """Drop what an interrupted write left (an `adapter.partial` cut short by a full disk)."""
    for partial in folder.glob("*.partial"):
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)


class _stop_on_signals:
    """Ctrl-C / SIGTERM ask for a graceful stop (checkpoint, then stop) by writing the same
    flag file the UI's Stop button writes; a second Ctrl-C interrupts at once."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag
        self.previous: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.flag.exists() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.flag.touch()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in platform_support.stop_signals():
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
