"""Trained-looking runs for export tests: a base model plus a LoRA adapter with non-zero B.

A fresh LoRA adapter is a no-op (B starts at zero), which would let a broken merge pass.
Random B weights stand in for training, so merged weights really differ from the base.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.tiny import build_model


def make_adapter(base: str | Path, out_dir: Path, seed: int = 1, scale: float = 0.05) -> Path:
    """Save a peft LoRA adapter on `base` (folder or preset) with random non-zero B weights."""
    import torch

    from backpropagate_core import model as model_mod

    model = model_mod.load_model(str(base))
    tokenizer = model_mod.load_tokenizer(str(base))
    peft_model = model_mod.add_lora(model, r=8, alpha=16, dropout=0.0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "backpropagate.json").write_text(json.dumps({"model": str(base)}))
    return out_dir


def make_run(base: str | Path, name: str = "tiny-run", seed: int = 1, scale: float = 0.05):
    """A completed run in the current BACKPROPAGATE_HOME whose adapter is `make_adapter`'s."""
    from backpropagate_core import events as ev
    from backpropagate_core.runs import RunStore

    store = RunStore()
    config = {"model": str(base), "data": "/somewhere/private/chat.jsonl", "name": name,
              "lora": {"r": 8, "alpha": 16}, "training": {"steps": 3, "learning_rate": 2e-4}}
    run = store.create_run(config=config, model=str(base), dataset=config["data"], name=name)
    adapter = make_adapter(base, run.run_dir / "adapter", seed=seed, scale=scale)
    store.record(ev.RunStarted(run.id, config=config, total_steps=3))
    store.record(ev.Finished(run.id, final_loss=1.234, steps=3, artifacts={"adapter": str(adapter)}))
    return store.get(run.id)


def tiny_base(root: Path, arch: str, **kwargs) -> Path:
    """A tiny random model wide enough (256) for llama.cpp's k-quants to really apply."""
    return build_model(root / f"base-{arch}", arch=arch, hidden=256, intermediate=512,
                       heads=4, kv_heads=2, **kwargs)
