"""What the training loop reports and obeys between steps: a transformers callback.

It turns the Trainer's hooks into our events (steps with tokens/s and ETA, evaluations
with the held-out answer score, samples, checkpoints), waits while the GPU guard has
paused training, stops on the run's stop flag, on a NaN loss, or when `probing` says
the held-out result has stopped improving.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from transformers import TrainerCallback

from backpropagate_core.errors import BackpropError
from backpropagate_core.runs import events as ev
from backpropagate_core.training import checkpoints, distributed, preference


class EventCallback(TrainerCallback):
    """Turns Trainer hooks into events and checks the stop flag after each step."""

    def __init__(self, run_id: str, sink: ev.Sink, collator, cancel_flag: Path, output_dir: Path,
                 guard=None, probing=None) -> None:
        self.run_id, self.sink, self.collator, self.guard, self.probing = run_id, sink, collator, guard, probing
        self.cancel_flag, self.output_dir = cancel_flag, output_dir
        self.cancelled = False
        self.overheat = None
        """The RUNTIME_GPU_OVERHEAT error once the guard aborted; raised after the last save."""
        self.nonfinite: BackpropError | None = None
        """RUNTIME_LOSS_NONFINITE once a logged loss was NaN or infinite; raised after training stops."""
        self.last_loss: float | None = None
        self.t0 = self.t_last = time.time()
        self.tokens_last = 0
        self.start_step = 0
        self.rate: float | None = None
        self.last_checkpoint: str | None = None
        # Time inside optimizer steps only, so saves and evaluations do not dilute tokens/s.
        self.step_time = 0.0
        self.step_time_last = 0.0
        self.t_step = 0.0

    def on_step_begin(self, args, state, control, **kw):
        self.t_step = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if "loss" not in logs:
            return
        now = time.time()
        window = self.step_time - self.step_time_last
        if window > 0:
            self.rate = (self.collator.trained - self.tokens_last) / window
        self.t_last, self.tokens_last, self.step_time_last = now, self.collator.trained, self.step_time
        done = state.global_step - self.start_step
        elapsed = now - self.t0
        eta = elapsed / done * (state.max_steps - state.global_step) if done else None
        self.last_loss = float(logs["loss"])
        if not math.isfinite(self.last_loss):
            # Further steps would only train on NaN weights; stop without saving them.
            self.nonfinite = BackpropError(
                "RUNTIME_LOSS_NONFINITE", f"the training loss became {self.last_loss} at step {state.global_step}",
                hint="Lower the learning rate (e.g. --lr 1e-4), train in fp32 (--precision fp32), "
                     "or check the data for empty or extremely long examples.")
            control.should_save = False
            control.should_training_stop = True
            return control
        grad = logs.get("grad_norm")
        self.sink(ev.Step(self.run_id, step=state.global_step, total=state.max_steps, loss=self.last_loss,
                     lr=float(logs.get("learning_rate", 0.0)),
                     grad_norm=None if grad is None else float(grad),
                     tokens_per_s=self.rate, elapsed_s=elapsed, eta_s=eta,
                     epoch=logs.get("epoch"), **preference.event_metrics(logs)))

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.start_step = state.global_step
        self.t0 = self.t_last = time.time()
        if self.probing is not None and model is not None:
            self.probing.start(model)

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kw):
        if not metrics or "eval_loss" not in metrics:
            return
        loss, step = float(metrics["eval_loss"]), state.global_step
        verdict = None
        pairs = preference.event_metrics(metrics, "eval_")
        if self.probing is not None and args.should_save:
            verdict = self.probing.judge(step, loss, lambda path, meta: checkpoints.save_adapter(
                model, self.probing.tokenizer, path, meta), pairs.get("reward_accuracy"))
        got = lambda key: metrics.get(f"eval_{key}")  # noqa: E731
        self.sink(ev.Eval(self.run_id, step=step, loss=loss, answer_score=got("answer_score"), f1=got("f1"),
                     rouge_l=got("rouge_l"), exact_match=got("exact_match"),
                     best=bool(verdict and verdict.best), reward_accuracy=pairs.get("reward_accuracy"),
                     reward_margin=pairs.get("reward_margin")))
        if self.probing is not None and self.probing.samples:
            self.sink(ev.Samples(self.run_id, step=step, samples=self.probing.samples,
                            answer_score=got("answer_score"), base_score=self.probing.base_score))
        if verdict is not None and verdict.stop:
            self.sink(ev.LogLine(self.run_id, message=(
                f"stopping early at step {step}: no better held-out result for {self.probing.patience} "
                f"evaluations; keeping step {self.probing.best_step}")))
            control.should_training_stop = True

    def on_save(self, args, state, control, **kw):
        path = self.output_dir / f"checkpoint-{state.global_step}"
        if path.is_dir():
            self.last_checkpoint = str(path)
            self.sink(ev.CheckpointSaved(self.run_id, step=state.global_step, path=str(path)))

    def on_step_end(self, args, state, control, **kw):
        self.step_time += time.perf_counter() - self.t_step
        if self.guard is not None and self.overheat is None:
            try:
                self.guard.wait_if_paused(should_stop=self.cancel_flag.exists)
            except BackpropError as err:
                self.overheat = err
        # Under accelerate every rank must stop after the same step, or one would wait
        # forever in the next gradient all-reduce.
        if distributed.any_rank(self.cancel_flag.exists() or self.overheat is not None):
            self.cancelled = self.overheat is None
            control.should_save = True
            control.should_training_stop = True
        return control
