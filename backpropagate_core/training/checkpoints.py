"""Checkpoints and adapters on disk, written so a crash never leaves one that looks good.

A checkpoint is `checkpoint-N/` with transformers' trainer state plus our manifest
(`layout.MANIFEST`), written under a `.partial` name and renamed when complete (see
`trainer`); the final adapter is saved the same way.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from backpropagate_core import platform_support
from backpropagate_core.runs.layout import MANIFEST


def rotate(root: Path, keep: int) -> None:
    done = sorted(complete_checkpoints(root), key=checkpoint_step)
    for old in done[:-keep] if keep else []:
        shutil.rmtree(old, ignore_errors=True)


def complete_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.glob("checkpoint-*") if p.is_dir() and not p.name.endswith(".partial")
            and (p / MANIFEST).is_file() and (p / "trainer_state.json").is_file()]


def checkpoint_step(path: Path | str) -> int:
    return int(Path(path).name.split("-")[-1])


def prepare_checkpoints(root: Path) -> Path | None:
    """Delete leftover `.partial` folders; return the newest complete checkpoint, if any."""
    if root.is_dir():
        for partial in root.glob("*.partial"):
            shutil.rmtree(partial, ignore_errors=True)
    done = sorted(complete_checkpoints(root), key=checkpoint_step)
    return done[-1] if done else None


def save_adapter(model, tokenizer, target: Path, meta: dict) -> Path:
    """Save the peft adapter + tokenizer + a manifest naming the base model, atomically."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    # Only the trained adapter: a DPO run that started from another run also holds that
    # one, frozen, as its reference.
    adapters = list(getattr(model, "peft_config", {}) or [])
    model.save_pretrained(partial, **({"selected_adapters": ["default"]} if len(adapters) > 1 else {}))
    tokenizer.save_pretrained(partial)
    (partial / MANIFEST).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    platform_support.replace(partial, target)
    return target


def promote(source: Path, target: Path) -> Path:
    """Copy a saved adapter (the best one) to `target`, replacing it atomically."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    shutil.rmtree(target, ignore_errors=True)
    platform_support.replace(partial, target)
    return target
