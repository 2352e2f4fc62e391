"""The typed questions the app asks the engine helper, and its answers.

Both sides import these models: the client (in the UI server, which never loads torch)
builds a request and validates the reply, and the helper process (`runs.service`)
validates the request and builds the reply. So values cross the process boundary once,
as JSON, and arrive as the same types they left as. Pydantic only: no torch here.

On the wire each message is one JSON line: `{"id", "kind", "body"}` for a request and
`{"id", "ok", "body"}` for its reply, where body is the request model, the response
model or, when `ok` is false, an `ErrorReply`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from backpropagate_core.config import LoraSettings, TrainingSettings
from backpropagate_core.errors import BackpropError

# ---- dataset report --------------------------------------------------------------------


class ReportRequest(BaseModel):
    path: str
    """Dataset file or folder, absolute (the helper's working folder is not the caller's)."""
    model: str | None = None
    """Model whose tokenizer and chat template count tokens; None skips token statistics."""
    max_seq_len: int | None = None
    """Count examples longer than this many tokens."""
    skip_bad_lines: bool = True
    """List malformed lines in the report instead of failing on the first."""


class Problem(BaseModel):
    line: int | None
    """1-based line (or record) of the file; None for file-wide problems."""
    code: str
    """Error code from errors.CATALOG."""
    message: str


class HistogramBin(BaseModel):
    bin_start: int
    bin_end: int
    """Inclusive, like bin_start."""
    count: int


class Message(BaseModel):
    role: str
    """system, user, assistant, "text" for a raw-text example, or "chosen"/"rejected" for
    the answers of a preference pair."""
    content: str


class DatasetReport(BaseModel):
    """`data.dataset.DatasetReport`, field for field."""

    path: str
    format: str
    examples: int
    problems: list[Problem] = []
    token_percentiles: dict[str, int] | None = None
    """{"p50", "p90", "p95", "p99", "max"} tokens per example; None without a tokenizer."""
    histogram: list[HistogramBin] = []
    duplicates: int = 0
    empty: int = 0
    over_long: int = 0
    max_seq_len: int | None = None
    preview: list[list[Message]] = []
    total_tokens: int | None = None
    pairs: dict | None = None
    """Preference datasets: pair count and chosen/rejected answer lengths (`data.report`)."""


# ---- plan ------------------------------------------------------------------------------


class PlanRequest(BaseModel):
    model: str | None
    """Model spec; None uses the configured default."""
    data: str
    """Dataset file or folder, absolute."""
    overrides: dict[str, Any] = {}
    """Settings the person fixed, flat (`steps=20`) or nested (`lora={"r": 8}`)."""


class PlanConfig(BaseModel):
    model: str
    data: str
    training: TrainingSettings
    """Every training setting as the run would use it, defaults resolved."""
    lora: LoraSettings


class Plan(BaseModel):
    """What `training.pipeline.plan_run` says a run would use, and why."""

    config: PlanConfig
    reasons: dict[str, str] = {}
    """Why each defaulted setting got its value, keyed by setting name."""
    device: str
    """"cuda", "mps" or "cpu"."""
    format: str
    """Detected dataset format."""
    examples: int
    train_examples: int
    val_examples: int
    dropped_examples: int = 0
    """Examples left out because none of their answer tokens fit in max_seq_len."""
    memory_gb: float
    """Free GPU memory (or RAM on CPU) of this machine."""
    label_fraction: float = 1.0
    """Share of the training tokens that carry a label."""


# ---- chat ------------------------------------------------------------------------------


class ChatRequest(BaseModel):
    source: str
    """Run id (or prefix), adapter folder or merged model folder."""
    messages: list[Message]
    """The conversation; the last turn is the user's."""
    gguf: str | None = None
    """GGUF to compare with; default: the run's newest GGUF export."""
    max_new_tokens: int = Field(128, ge=1, le=4096)
    compare: bool = True
    """False: the trained model alone, no llama.cpp."""
    base: bool = False
    """Also answer with the base model (the adapter switched off), first."""
    stream: bool = False
    """Send the answers' text as it grows, as partial replies before the final one."""


class EngineAnswer(BaseModel):
    text: str
    tokens: list[int]
    seconds: float


class ChatAnswer(BaseModel):
    answers: dict[str, EngineAnswer]
    """Keyed by engine: "transformers" and, with a GGUF, "llama.cpp"."""
    gguf: str | None = None
    """The GGUF compared with, if any."""
    identical: bool | None = None
    """Whether both engines produced the same tokens; None with one engine."""


# ---- envelope --------------------------------------------------------------------------


class ErrorReply(BaseModel):
    code: str
    message: str
    hint: str | None = None

    @classmethod
    def of(cls, err: BackpropError) -> ErrorReply:
        return cls(code=err.code, message=err.message, hint=err.hint)

    def error(self) -> BackpropError:
        return BackpropError(self.code, self.message, self.hint)


class Ping(BaseModel):
    """Asks the helper for its pid: a cheap liveness check."""


class Pong(BaseModel):
    pid: int
    chat_loads: int = 0
    """Chat models this helper has loaded so far: answers for a loaded source reuse it."""


Kind = Literal["report", "plan", "chat", "ping"]

REQUESTS: dict[str, type[BaseModel]] = {"report": ReportRequest, "plan": PlanRequest,
                                        "chat": ChatRequest, "ping": Ping}
RESPONSES: dict[str, type[BaseModel]] = {"report": DatasetReport, "plan": Plan,
                                         "chat": ChatAnswer, "ping": Pong}
KINDS: dict[type[BaseModel], str] = {model: kind for kind, model in REQUESTS.items()}
