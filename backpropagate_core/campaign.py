"""The training loop of a multi-run campaign and its checkpoint (see `multirun`).

`Campaign.run` loads the data and the base model once, then for each run: sets the
starting adapter, trains with `hf_trainer.fit`, merges, measures validation loss on
every chunk seen so far and commits the campaign state. The state is
`<run_dir>/campaign/state.json` plus safetensors files beside it; each file is written
under a `.partial` name and renamed when complete, and state.json is renamed last, so a
kill at any moment leaves the previous complete state in place.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from backpropagate_core import events as ev
from backpropagate_core import platform_support
from backpropagate_core.errors import BackpropError
from backpropagate_core.multirun import (KIND, CampaignResult, CampaignRunStarted,
                                         CampaignSettings, ForgettingMeasured, MergeDone,
                                         average_forgetting)
from backpropagate_core.runs import Run, RunStore
from backpropagate_core.train import ADAPTER_DIR, CANCEL_FLAG, CHECKPOINTS_DIR, RunConfig

STATE_DIR = "campaign"
STATE_FILE = "state.json"


# ---- campaign state -----------------------------------------------------------------

@dataclass
class CampaignState:
    completed: int = 0
    """Runs trained, merged, measured and committed."""
    forgetting: list = field(default_factory=list)
    """One row per completed run: validation loss per chunk, None for chunks not yet seen."""
    lambdas: list = field(default_factory=list)
    """λ used to merge B after each run (None in sequential mode)."""
    merge_steps: list = field(default_factory=list)
    """Campaign step of each merge point."""
    train_losses: list = field(default_factory=list)
    """Last training loss of each run."""
    merged_file: str | None = None
    """Safetensors file with the merged adapter (the campaign's result so far)."""
    last_file: str | None = None
    """Safetensors file with the last run's own fine-tuned adapter."""
    done: bool = False
    """True once the final adapter is saved."""


def read_state(run_dir: Path) -> CampaignState | None:
    path = Path(run_dir) / STATE_DIR / STATE_FILE
    return CampaignState(**json.loads(path.read_text())) if path.is_file() else None


def write_state(run_dir: Path, state: CampaignState, merged: dict | None = None,
                last: dict | None = None) -> None:
    """Commit `state` (and, when given, the adapters it names) atomically."""
    folder = run_dir / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if last is not None:
        state.last_file = _save_tensors(folder / f"run-{state.completed}.safetensors", last)
        state.merged_file = state.last_file if merged is last else \
            _save_tensors(folder / f"merged-{state.completed}.safetensors", merged)
    partial = folder / (STATE_FILE + ".partial")
    partial.write_text(json.dumps(asdict(state), indent=2))
    platform_support.replace(partial, folder / STATE_FILE)
    for old in folder.glob("merged-*.safetensors"):  # only the latest merge is needed
        if old.name != state.merged_file:
            old.unlink()


def restore(run_dir: Path) -> tuple[CampaignState, dict | None, dict | None]:
    """The last committed state and its (merged, last run's) adapters; a fresh state if none."""
    from safetensors.torch import load_file

    folder = run_dir / STATE_DIR
    for leftover in folder.glob("*.partial"):
        leftover.unlink()
    state = read_state(run_dir)
    if state is None or state.completed == 0:
        return CampaignState(), None, None
    return state, load_file(folder / state.merged_file), load_file(folder / state.last_file)


def _save_tensors(path: Path, tensors: dict) -> str:
    from safetensors.torch import save_file

    partial = path.with_name(path.name + ".partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial))
    platform_support.replace(partial, path)
    return path.name


# ---- data -----------------------------------------------------------------------------

@dataclass
class Chunk:
    train: list
    val: list
    """Held out: only ever evaluated on."""


def run_seed(seed: int, i: int) -> int:
    """The seed of run i (1-based): the campaign seed for run 1, then one more per run."""
    return seed + i - 1


def check_enough(settings: CampaignSettings, n_examples: int) -> None:
    need = settings.num_runs * settings.samples_per_run
    if n_examples < need:
        raise BackpropError(
            "CONFIG_INVALID",
            f"the dataset has {n_examples} examples; {settings.num_runs} runs of "
            f"{settings.samples_per_run} samples need {need}",
            hint="Lower --runs or --samples, or add data.")


def split_chunks(examples: list, settings: CampaignSettings, seed: int) -> list[tuple[list, list]]:
    """(train, validation) per run: chunk k is the k-th block of `samples_per_run`
    examples in file order; `val_size` of them, picked by a seeded shuffle, are held out."""
    size, n_val = settings.samples_per_run, settings.val_size
    out = []
    for k in range(settings.num_runs):
        chunk = examples[k * size:(k + 1) * size]
        held = set(random.Random(seed + k).sample(range(len(chunk)), n_val))
        out.append(([e for j, e in enumerate(chunk) if j not in held],
                    [e for j, e in enumerate(chunk) if j in held]))
    return out


def replay_rows(chunks: list[Chunk], k: int, fraction: float, seed: int) -> list:
    """round(fraction × chunk k's training examples) drawn from earlier chunks' training
    examples (never their validation slices)."""
    pool = [row for chunk in chunks[:k] for row in chunk.train]
    n = min(len(pool), round(fraction * len(chunks[k].train)))
    return random.Random(seed).sample(pool, n) if n > 0 else []


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

    from backpropagate_core.hf_trainer import Collator

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
                                     labels.reshape(-1), ignore_index=-100, reduction="sum").item()
            count += int((labels != -100).sum())
    model.train(was_training)
    return total / count if count else None


# ---- the loop -----------------------------------------------------------------------

class Campaign:
    """One campaign's work: `setup` loads data and model once; `run` trains every run."""

    def __init__(self, config: RunConfig, settings: CampaignSettings, run: Run, store: RunStore,
                 sink: ev.Sink) -> None:
        self.config, self.settings, self.store, self.sink = config, settings, store, sink
        self.run_id, self.run_dir = run.id, run.run_dir
        self.total = settings.num_runs * settings.steps_per_run
        self.t0, self.start_step = time.time(), 0

    def log(self, message: str, level: str = "INFO") -> None:
        self.sink(ev.LogLine(self.run_id, message=message, level=level))

    def setup(self, reuse_resolved: bool) -> None:
        import torch

        from backpropagate_core import data as data_mod, defaults, hf_trainer, model as model_mod
        from backpropagate_core.train import _resolve

        c, s = self.config, self.settings
        self.log(f"loading dataset {c.data}")
        loaded = data_mod.load(c.data, skip_bad_lines=c.training.skip_bad_lines)
        check_enough(s, len(loaded.examples))
        self.tokenizer = model_mod.load_tokenizer(c.model, c.training.trust_remote_code)
        data_mod.ensure_chat_template(self.tokenizer)
        cap = int(getattr(self.tokenizer, "model_max_length", 0) or 0)
        cap = cap if 0 < cap < 1_000_000 else 8192
        tokenized = [([data_mod.tokenize(e, self.tokenizer, cap) for e in train],
                      [data_mod.tokenize(e, self.tokenizer, cap) for e in val])
                     for train, val in split_chunks(loaded.examples, s, c.training.seed)]
        # Steps are per run, and the trainer's own checkpoint is only the one at its end.
        fixed = c.model_copy(update={"training": c.training.model_copy(
            update={"steps": s.steps_per_run, "save_steps": s.steps_per_run})})
        self.hw = defaults.detect_hardware()
        resolved = _resolve(fixed, self.run_dir / "resolved.json", reuse_resolved, self.hw,
                            [row for train, _ in tokenized for row in train], cap)
        self.t, self.reasons = resolved.training, resolved.reasons
        for name, reason in self.reasons.items():
            self.log(f"{name} = {getattr(self.t, name)} ({reason})")
        n = self.t.max_seq_len
        self.chunks = [Chunk(hf_trainer.truncate(tr, n), hf_trainer.truncate(va, n)) for tr, va in tokenized]

        platform_support.configure_attention(self.hw.device, self.hw.name)
        self.log(f"loading model {c.model}")
        base = model_mod.load_model(c.model, dtype=hf_trainer.weight_dtype(self.t.precision, self.hw.device),
                                    load_in_4bit=self.t.load_in_4bit, trust_remote_code=self.t.trust_remote_code)
        torch.manual_seed(run_seed(self.t.seed, 1))  # run 1's fresh LoRA init
        self.model = model_mod.add_lora(base, c.lora.r, c.lora.alpha, c.lora.dropout, c.lora.target_modules)

    def run(self, resume: bool) -> CampaignResult:
        from backpropagate_core.gpu import Sampler

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
        with Sampler(self.run_id, self.sink, interval=5.0):
            for i in range(state.completed + 1, s.num_runs + 1):
                outcome = self.train_run(i, merged, last, state)
                if outcome.cancelled:
                    return self.cancelled(i, outcome, state)
                rates += [outcome.tokens_per_s] if outcome.tokens_per_s else []
                last = adapter_state(self.model)
                self.publish(state, (i, "merging"))
                merged, lam = self.merge(i, merged, last)
                self.sink(MergeDone(self.run_id, run_index=i, step=i * s.steps_per_run,
                                    mode=s.merge_mode, lam=lam))
                state.forgetting.append(self.measure(i, merged))
                state.lambdas.append(lam)
                state.merge_steps.append(i * s.steps_per_run)
                state.train_losses.append(outcome.final_loss)
                state.completed = i
                write_state(self.run_dir, state, merged, last)
                self.sink(ForgettingMeasured(self.run_id, run_index=i, losses=state.forgetting[-1][:i],
                                             avg_forgetting=average_forgetting(state.forgetting)))
                self.publish(state)
        return self.finish(state, merged, rates)

    def train_run(self, i: int, merged: dict | None, last: dict | None, state: CampaignState):
        """Set run i's starting adapter and train it on chunk i (plus any replay)."""
        from accelerate.utils import extract_model_from_parallel

        from backpropagate_core import hf_trainer
        from backpropagate_core.merge import slao_init

        s = self.settings
        if i > 1:  # run 1 starts from the fresh adapter made in setup
            load_adapter(self.model, slao_init(merged, last) if s.merge_mode == "slao" else last)
        chunk = self.chunks[i - 1]
        replay = replay_rows(self.chunks, i - 1, s.replay_fraction, run_seed(self.t.seed, i))
        first = (i - 1) * s.steps_per_run
        self.sink(CampaignRunStarted(self.run_id, run_index=i, num_runs=s.num_runs, first_step=first,
                                     train_examples=len(chunk.train), replay_examples=len(replay)))
        self.publish(state, (i, "training"))
        out_dir = self.run_dir / CHECKPOINTS_DIR
        outcome = hf_trainer.fit(self.model, self.tokenizer, chunk.train + replay, [],
                                 self.t.model_copy(update={"seed": run_seed(self.t.seed, i)}),
                                 run_id=self.run_id, output_dir=out_dir, sink=self.step_sink(first),
                                 resume_from=None, cancel_flag=self.run_dir / CANCEL_FLAG)
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
        from backpropagate_core.merge import check_finite, lambda_schedule, slao_merge

        s = self.settings
        if s.merge_mode == "sequential" or merged is None:
            check_finite(trained, f"the adapter after run {i}")
            return trained, None if s.merge_mode == "sequential" else 1.0
        return (slao_merge(merged, trained, i, s.schedule, s.lambda_c),
                lambda_schedule(i, s.schedule, s.lambda_c))

    def measure(self, i: int, adapter: dict) -> list:
        """Validation loss of `adapter` on chunks 1..i (None for later chunks)."""
        load_adapter(self.model, adapter)
        losses = [validation_loss(self.model, c.val, self.tokenizer.pad_token_id, self.t.batch_size)
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
        from backpropagate_core import hf_trainer

        load_adapter(self.model, merged)
        adapter = hf_trainer.save_adapter(
            self.model, self.tokenizer, self.run_dir / ADAPTER_DIR,
            {"model": self.config.model, "run_id": self.run_id, "step": self.total, "kind": KIND,
             "merge_mode": self.settings.merge_mode, "num_runs": self.settings.num_runs})
        state.done = True
        write_state(self.run_dir, state)
        self.publish(state)
        wall = time.time() - self.t0
        final_loss = state.train_losses[-1] if state.train_losses else None
        rate = sum(rates) / len(rates) if rates else None
        self.sink(ev.Finished(self.run_id, final_loss=final_loss, steps=self.total,
                              artifacts={"adapter": str(adapter), "campaign": str(self.run_dir / STATE_DIR)},
                              tokens_per_s=rate, wall_s=wall))
        return CampaignResult(self.run_id, "completed", final_loss, self.total, self.run_dir, adapter,
                              rate, wall, forgetting=state.forgetting,
                              avg_forgetting=average_forgetting(state.forgetting),
                              final_val_loss=state.forgetting[-1] if state.forgetting else [])

    def cancelled(self, i: int, outcome, state: CampaignState) -> CampaignResult:
        step = (i - 1) * self.settings.steps_per_run + outcome.step
        self.publish(state)  # run i goes back to pending: a resume retrains it whole
        saved = str(self.run_dir / STATE_DIR) if state.completed else None
        self.sink(ev.Cancelled(self.run_id, step=step, checkpoint=saved))
        return CampaignResult(self.run_id, "cancelled", outcome.final_loss, step, self.run_dir, None,
                              outcome.tokens_per_s, time.time() - self.t0, forgetting=state.forgetting,
                              avg_forgetting=average_forgetting(state.forgetting))
