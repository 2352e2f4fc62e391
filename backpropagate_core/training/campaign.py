"""The training loop of a multi-run campaign (see `multirun`).

`Campaign.run` prepares the data (one part per run) and loads the model once through
the same `pipeline` as a single run, then for each run: sets the starting adapter,
trains with `trainer.fit` (GPU guard, OOM recovery and all), merges, measures validation
loss on every chunk seen so far and commits the campaign state (`campaign_state`).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace

from backpropagate_core.errors import BackpropError
from backpropagate_core.runs import events as ev
from backpropagate_core.runs.layout import IGNORE_INDEX, RunDir
from backpropagate_core.runs.store import Run, RunStore
from backpropagate_core.training.campaign_state import (KIND, CampaignResult, CampaignSettings, CampaignState,
                                                        average_forgetting, replay_rows, restore,
                                                        run_seed, split_chunks, write_state)
from backpropagate_core.training.run_config import RunConfig

# ---- adapters -----------------------------------------------------------------------

def adapter_state(model) -> dict:
    """The peft model's LoRA tensors, copied to the CPU (detached from training)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}


def load_adapter(model, state: dict) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    if result.unexpected_keys:
        raise BackpropError("STATE_CHECKPOINT_INVALID",
                            f"saved adapter tensors do not fit the model: {result.unexpected_keys[:3]}")


def validation_loss(model, rows: list[dict], pad_id: int, batch_size: int) -> float | None:
    """Mean cross-entropy per trained (label) token over `rows`, dropout off."""
    import torch
    import torch.nn.functional as F

    from backpropagate_core.training.trainer import Collator

    if not rows:
        return None
    collate, device = Collator(pad_id), next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in collate(rows[start:start + batch_size]).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            total += F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                     labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / count if count else None


# ---- the loop -----------------------------------------------------------------------

class Campaign:
    """One campaign's work: `setup` loads data and model once; `run` trains every run."""

    def __init__(self, config: RunConfig, settings: CampaignSettings, run: Run, store: RunStore,
                 sink: ev.Sink) -> None:
        self.config, self.settings, self.store, self.sink = config, settings, store, sink
        self.run_id, self.run_dir, self.files = run.id, run.run_dir, RunDir(run.run_dir)
        self.guard = None
        self.total = settings.num_runs * settings.steps_per_run
        self.t0, self.start_step = time.time(), 0

    def log(self, message: str, level: str = "INFO") -> None:
        self.sink(ev.LogLine(self.run_id, message=message, level=level))

    def setup(self, reuse_resolved: bool) -> None:
        """Data, settings and model through the same path as a single run."""
        from backpropagate_core.training import pipeline

        c, s = self.config, self.settings
        # Steps are per run, and the trainer's own checkpoint is only the one at its end.
        fixed = c.model_copy(update={"training": c.training.model_copy(
            update={"steps": s.steps_per_run, "save_steps": s.steps_per_run})})
        prep = pipeline.prepare(fixed, self.log, self.files, reuse_resolved,
                                splitter=lambda examples: split_chunks(examples, s, c.training.seed))
        self.tokenizer, self.hw, self.chunks = prep.tokenizer, prep.hardware, prep.parts
        self.t, self.reasons = prep.resolved.training, prep.resolved.reasons
        for name, reason in self.reasons.items():
            self.log(f"{name} = {getattr(self.t, name)} ({reason})")
        # Run 1 starts from a fresh LoRA initialised from the campaign seed (= run_seed(seed, 1)).
        self.model = pipeline.load_model(fixed, prep, self.log)

    def run(self, resume: bool) -> CampaignResult:
        from backpropagate_core.training.pipeline import hardware_sampler

        state, merged, last = restore(self.run_dir) if resume else (CampaignState(), None, None)
        if resume and state.completed == 0:
            self.log("no finished run to resume from; starting at run 1", "WARNING")
        self.setup(reuse_resolved=state.completed > 0)
        s = self.settings
        self.start_step = state.completed * s.steps_per_run
        self.sink(ev.RunStarted(self.run_id, config={
            **self.config.model_dump(mode="json"), "training": self.t.model_dump(mode="json"),
            "campaign": s.model_dump(mode="json"), "device": self.hw.device},
            reasons=self.reasons, total_steps=self.total, resumed_from_step=self.start_step))
        self.publish(state)
        rates: list[float] = []
        with hardware_sampler(self.run_id, self.sink) as sampler:
            self.guard = sampler.guard
            for i in range(state.completed + 1, s.num_runs + 1):
                outcome = self.train_run(i, merged, last, state)
                if outcome.cancelled:
                    return self.cancelled(i, outcome, state)
                rates += [outcome.tokens_per_s] if outcome.tokens_per_s else []
                last = adapter_state(self.model)
                self.publish(state, (i, "merging"))
                merged, lam = self.merge(i, merged, last)
                self.sink(ev.MergeDone(self.run_id, run_index=i, step=i * s.steps_per_run,
                                    mode=s.merge_mode, lam=lam))
                state.forgetting.append(self.measure(i, merged))
                state.lambdas.append(lam)
                state.merge_steps.append(i * s.steps_per_run)
                state.train_losses.append(outcome.final_loss)
                state.completed = i
                write_state(self.run_dir, state, merged, last)
                self.sink(ev.ForgettingMeasured(self.run_id, run_index=i, losses=state.forgetting[-1][:i],
                                             avg_forgetting=average_forgetting(state.forgetting)))
                self.publish(state)
        return self.finish(state, merged, rates)

    def train_run(self, i: int, merged: dict | None, last: dict | None, state: CampaignState):
        """Set run i's starting adapter and train it on chunk i (plus any replay)."""
        from accelerate.utils import extract_model_from_parallel

        from backpropagate_core.training import trainer as hf_trainer
        from backpropagate_core.training.merge import slao_init

        s = self.settings
        if i > 1:  # run 1 starts from the fresh adapter made in setup
            load_adapter(self.model, slao_init(merged, last) if s.merge_mode == "slao" else last)
        chunk = self.chunks[i - 1]
        replay = replay_rows(self.chunks, i - 1, s.replay_fraction, run_seed(self.t.seed, i))
        first = (i - 1) * s.steps_per_run
        self.sink(ev.CampaignRunStarted(self.run_id, run_index=i, num_runs=s.num_runs, first_step=first,
                                     train_examples=len(chunk.train), replay_examples=len(replay)))
        self.publish(state, (i, "training"))
        out_dir = self.files.checkpoints
        outcome = hf_trainer.fit(self.model, self.tokenizer, chunk.train + replay, [],
                                 self.t.model_copy(update={"seed": run_seed(self.t.seed, i)}),
                                 run_id=self.run_id, output_dir=out_dir, sink=self.step_sink(first),
                                 resume_from=None, cancel_flag=self.files.cancel_flag,
                                 guard=self.guard)
        # The campaign state is the checkpoint; a run stopped part-way is retrained whole.
        shutil.rmtree(out_dir, ignore_errors=True)
        # accelerate leaves its mixed-precision wrapper on the model's forward; take it off
        # so evaluation runs in full precision and the next run starts from the same model
        # a resumed campaign builds.
        extract_model_from_parallel(self.model, keep_fp32_wrapper=False)
        return outcome

    def step_sink(self, first: int) -> ev.Sink:
        """Forwards the trainer's events with steps counted across the whole campaign."""
        def emit(event: ev.Event) -> None:
            if isinstance(event, ev.CheckpointSaved):
                return  # deleted after the run; see train_run
            if isinstance(event, ev.Step):
                step, elapsed = first + event.step, time.time() - self.t0
                done = step - self.start_step
                event = replace(event, step=step, total=self.total, elapsed_s=elapsed,
                                eta_s=elapsed / done * (self.total - step) if done > 0 else None)
            self.sink(event)
        return emit

    def merge(self, i: int, merged: dict | None, trained: dict) -> tuple[dict, float | None]:
        """(adapter after run i, λ used): the SLAO merge, or the run's adapter as it is."""
        from backpropagate_core.training.merge import check_finite, lambda_schedule, slao_merge

        s = self.settings
        if s.merge_mode == "sequential" or merged is None:
            check_finite(trained, f"the adapter after run {i}")
            return trained, None if s.merge_mode == "sequential" else 1.0
        return (slao_merge(merged, trained, i, s.schedule, s.lambda_c),
                lambda_schedule(i, s.schedule, s.lambda_c))

    def measure(self, i: int, adapter: dict) -> list:
        """Validation loss of `adapter` on chunks 1..i (None for later chunks)."""
        load_adapter(self.model, adapter)
        losses = [validation_loss(self.model, c.val, self.tokenizer.pad_token_id, self.t.batch_size or 8)
                  for c in self.chunks[:i]]
        return losses + [None] * (self.settings.num_runs - i)

    def publish(self, state: CampaignState, current: tuple[int, str] | None = None) -> None:
        """What the Multi-Run page shows: per-run timeline and the forgetting matrix."""
        s = self.settings
        timeline = ["done" if k <= state.completed else "pending" for k in range(1, s.num_runs + 1)]
        if current:
            timeline[current[0] - 1] = current[1]
        self.store.merge_summary(
            self.run_id, timeline=timeline, forgetting=state.forgetting,
            avg_forgetting=average_forgetting(state.forgetting), lambdas=state.lambdas,
            merge_steps=state.merge_steps, merge_mode=s.merge_mode, num_runs=s.num_runs,
            steps_per_run=s.steps_per_run)

    def finish(self, state: CampaignState, merged: dict, rates: list[float]) -> CampaignResult:
        """Save the merged adapter as the campaign's result and report it."""
        from backpropagate_core.training import checkpoints

        load_adapter(self.model, merged)
        adapter = checkpoints.save_adapter(
            self.model, self.tokenizer, self.files.adapter,
            {"model": self.config.model, "run_id": self.run_id, "step": self.total, "kind": KIND,
             "merge_mode": self.settings.merge_mode, "num_runs": self.settings.num_runs})
        state.done = True
        write_state(self.run_dir, state)
        self.publish(state)
        wall = time.time() - self.t0
        final_loss = state.train_losses[-1] if state.train_losses else None
        rate = sum(rates) / len(rates) if rates else None
        self.sink(ev.Finished(self.run_id, final_loss=final_loss, steps=self.total,
                              artifacts={"adapter": str(adapter), "campaign": str(self.files.campaign)},
                              tokens_per_s=rate, wall_s=wall))
        return CampaignResult(self.run_id, "completed", final_loss, self.total, self.run_dir, adapter,
                              rate, wall, forgetting=state.forgetting,
                              avg_forgetting=average_forgetting(state.forgetting),
                              final_val_loss=state.forgetting[-1] if state.forgetting else [])

    def cancelled(self, i: int, outcome, state: CampaignState) -> CampaignResult:
        step = (i - 1) * self.settings.steps_per_run + outcome.step
        self.publish(state)  # run i goes back to pending: a resume retrains it whole
        saved = str(self.files.campaign) if state.completed else None
        self.sink(ev.Cancelled(self.run_id, step=step, checkpoint=saved))
        return CampaignResult(self.run_id, "cancelled", outcome.final_loss, step, self.run_dir, None,
                              outcome.tokens_per_s, time.time() - self.t0, forgetting=state.forgetting,
                              avg_forgetting=average_forgetting(state.forgetting))
