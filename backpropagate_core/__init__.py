"""backpropagate: fine-tune LLMs with LoRA from a browser, a CLI or three lines of Python.

    from backpropagate_core import Trainer
    trainer = Trainer("smollm2-135m")
    trainer.train("examples/quickstart.jsonl", steps=20)
    trainer.save("my-adapter")

Heavy dependencies (torch, transformers) load when a Trainer is created, not on import.
"""

from backpropagate_core.privacy import disable_telemetry as _disable_telemetry

_disable_telemetry()

__version__ = "0.1.0"
__all__ = ["Trainer", "BackpropError", "__version__"]


def __getattr__(name):
    if name == "Trainer":
        from backpropagate_core.api import Trainer
        return Trainer
    if name == "BackpropError":
        from backpropagate_core.errors import BackpropError
        return BackpropError
    raise AttributeError(name)
