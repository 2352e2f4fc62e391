"""The real built-in model: a short fine-tune on the quickstart data (marked slow)."""

from pathlib import Path

import pytest

from backpropagate_core.api import Trainer

QUICKSTART = Path(__file__).parent.parent / "examples" / "quickstart.jsonl"


@pytest.mark.slow
def test_smollm2_quickstart_trains_and_adapter_reloads(tmp_path):
    trainer = Trainer("smollm2-135m")
    result = trainer.train(QUICKSTART, steps=4, batch_size=2, grad_accum=1, max_seq_len=256)
    assert result.status == "completed" and result.final_loss is not None
    saved = trainer.save(tmp_path / "adapter")

    from peft import PeftModel

    from backpropagate_core.model.loader import load_model

    model = PeftModel.from_pretrained(load_model("smollm2-135m"), saved)
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0
