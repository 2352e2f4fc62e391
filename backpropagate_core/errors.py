"""One error type with a code, a message, a hint and whether a retry can help.

Every failure a user can cause or meet is raised as a `BackpropError` whose code is
listed in `CATALOG`. The CLI turns it into a one-line message and an exit code
(1 input/config, 3 runtime); the UI shows the code and the hint. Tracebacks are
only printed with `--verbose`.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from backpropagate_core.redact import redact


@dataclass(frozen=True)
class ErrorSpec:
    code: str
    summary: str
    """What the user sees happen."""
    hint: str
    """What to do about it, when the raise site has nothing more specific."""
    retryable: bool = False


def _spec(code: str, summary: str, hint: str, retryable: bool = False) -> tuple[str, ErrorSpec]:
    return code, ErrorSpec(code, summary, hint, retryable)


CATALOG: dict[str, ErrorSpec] = dict(
    [
        # Input: the user's files, ids and arguments.
        _spec("INPUT_DATASET_NOT_FOUND", "The dataset path does not exist.",
              "Check the path; relative paths are resolved from the current directory."),
        _spec("INPUT_DATASET_INVALID", "A dataset line or record is malformed.",
              "Fix the line named in the message, or pass --skip-bad-lines to drop bad lines and list them in the report."),
        _spec("INPUT_DATASET_EMPTY", "The dataset has no usable examples.",
              "Make sure the file has at least one example with an assistant reply."),
        _spec("INPUT_DATASET_FORMAT_UNKNOWN", "No supported dataset format was recognised.",
              "Use ShareGPT (conversations), OpenAI (messages), Alpaca (instruction/output), prompt/completion or text records."),
        _spec("INPUT_FEEDBACK_INVALID", "A chat feedback record is not usable.",
              "Send the conversation ending with the user's turn, the model's answer, a verdict "
              "of up, down or edit, and for edit the answer you wanted."),
        _spec("INPUT_FEEDBACK_TOO_FEW", "There are too few preference pairs to train on.",
              "Rate or correct more answers in the chat; `backprop feedback RUN` shows the pairs so far."),
        _spec("INPUT_FILE_EXISTS", "The output file already exists and holds something else.",
              "Choose another path, or pass --force to replace it."),
        _spec("INPUT_MODEL_NOT_FOUND", "The model spec is not a preset, a local folder, a .gguf file or a reachable hub id.",
              "Run `backprop presets` for the built-in names, or pass a local path or a hub id like Qwen/Qwen2.5-0.5B-Instruct."),
        _spec("INPUT_PATH_FORBIDDEN", "A path points outside the allowed folder.",
              "Use a path inside the workspace folder."),
        _spec("INPUT_AUTH_REQUIRED", "Sharing the UI publicly needs a login.",
              "Add --auth USER:PASSWORD (or --auth-file / BACKPROPAGATE_UI_PASSWORD)."),
        _spec("INPUT_UPLOAD_INVALID", "The uploaded file is not a dataset file the app accepts.",
              "Upload a non-empty .jsonl, .json, .csv or .parquet file."),
        _spec("INPUT_UPLOAD_TOO_LARGE", "The uploaded file is larger than the upload limit.",
              "Split the file, or raise BACKPROPAGATE_UI__MAX_UPLOAD_MB."),
        _spec("UI_START_FAILED", "The web app did not start.",
              "Read the output above; `make install` sets up bun and the Python packages the app needs."),
        _spec("INPUT_AUTH_INVALID", "The login given to the UI is not usable.",
              "Pass --auth USER:PASSWORD with a password of at least 8 characters, or --auth-file with one USER:PASSWORD line."),
        _spec("UI_OUTPUT_DIR_FORBIDDEN", "The UI output folder points at a system or credential location.",
              "Set BACKPROPAGATE_UI__OUTPUT_DIR to a folder of its own, e.g. ~/.backpropagate/ui-outputs."),
        _spec("UI_UPLOAD_REJECTED", "The uploaded file's content does not match its extension.",
              "Upload real JSON lines, JSON, CSV or parquet data; the file is checked by content, not by name."),
        _spec("UI_RATE_LIMITED", "Too many requests of this kind in a short time.",
              "Wait the number of seconds given in the message, then try again.", retryable=True),
        _spec("SHARE_NO_PROVIDER", "No tunnel provider is installed, so the UI cannot be shared.",
              "Install cloudflared (https://developers.cloudflare.com/cloudflare-one/connections/connect-networks/downloads/) "
              "or `pip install ngrok` and set NGROK_AUTHTOKEN; or share on your LAN with --host 0.0.0.0 --auth."),
        _spec("SHARE_TUNNEL_FAILED", "The tunnel did not come up.",
              "Read the tunnel output in the message; check the network, then retry.", retryable=True),
        # Configuration.
        _spec("CONFIG_INVALID", "The configuration has invalid values.",
              "Fix every value listed in the message; env vars use the BACKPROPAGATE_ prefix with __ for nesting."),
        _spec("CONFIG_GPU_REQUIRED", "An option that needs a CUDA GPU was asked for on a machine without one.",
              "Drop the GPU-only option (e.g. --load-in-4bit) or run on a machine with a CUDA GPU."),
        # Runtime: the training itself.
        _spec("RUNTIME_TRAINING_FAILED", "Training stopped with an unexpected error.",
              "Re-run with --verbose for the full traceback; the last checkpoint is kept and `backprop resume` continues from it.",
              retryable=True),
        _spec("RUNTIME_LOSS_NONFINITE", "The training loss became NaN or infinite.",
              "Lower the learning rate, or check the data for empty or extremely long examples.",
              retryable=True),
        _spec("RUNTIME_OOM_RECOVERY_EXHAUSTED", "The GPU ran out of memory even after the batch was halved three times.",
              "Lower --max-seq-len, enable gradient checkpointing or 4-bit loading, or use a smaller model; "
              "`backprop estimate-vram` shows what fits."),
        _spec("RUNTIME_GPU_OVERHEAT", "Training stopped because the GPU reached its abort temperature.",
              "Improve cooling or airflow, or lower the power limit; `backprop resume RUN` continues from the last checkpoint.",
              retryable=True),
        _spec("RUNTIME_UNEXPECTED", "Something failed that has no more specific code.",
              "Re-run with --verbose and include the output and `backprop info --json` in a bug report."),
        _spec("RUNTIME_WORKER_DIED", "The training worker process ended without reporting.",
              "It was killed or crashed (often out of memory); `backprop resume RUN` continues from the last checkpoint.",
              retryable=True),
        _spec("RUNTIME_MEMORY_LIMIT", "An engine process the UI started reached its memory limit and stopped.",
              "The input needs more memory than the limit allows: a very large or malformed model, dataset or "
              "file. If it is one you trust, raise BACKPROPAGATE_SECURITY__ENGINE_MEMORY_GB (0 turns the limit "
              "off) and restart the UI."),
        _spec("RUNTIME_CANCELLED", "The run was stopped by the user.",
              "`backprop resume RUN` continues from the checkpoint written at stop."),
        # State: the run store, run folders and checkpoints.
        _spec("STATE_RUN_NOT_FOUND", "No run matches that id or prefix.",
              "List runs with `backprop list-runs`."),
        _spec("STATE_RUN_AMBIGUOUS", "More than one run matches that id prefix.",
              "Type more characters of the run id."),
        _spec("STATE_RUN_ACTIVE", "The run is still running.",
              "Stop it first (`backprop cancel RUN` or the Stop button)."),
        _spec("STATE_CHECKPOINT_INVALID", "No complete checkpoint was found to resume from.",
              "Start a new run; incomplete .partial checkpoint folders are ignored."),
        _spec("STATE_DISK_FULL", "The disk filled up while a checkpoint, adapter or log was being written.",
              "Free disk space, then `backprop resume RUN`: it continues from the last complete checkpoint "
              "(named in the message) and removes the incomplete .partial folder.",
              retryable=True),
        _spec("STATE_CAMPAIGN_UNFINISHED", "A multi-run campaign with these settings stopped before its last run.",
              "Continue it with `backprop multi-run --resume RUN`, or start a new campaign with --fresh."),
        _spec("MERGE_NONFINITE", "Merging the LoRA adapters after a run gave NaN or infinite weights.",
              "The previous merge is kept in the campaign state; lower the learning rate or the merge step (--schedule inv) and resume.",
              retryable=True),
        # Export: adapter, merged weights, GGUF, Ollama, hub.
        _spec("INPUT_EXPORT_SOURCE_INVALID", "The export source is not a run, an adapter folder or a model folder.",
              "Pass a run id (see `backprop list-runs`), a folder with adapter_config.json, or a folder with config.json and safetensors weights."),
        _spec("INPUT_EXPORT_OPTION_INVALID", "An export option has a value that is not supported.",
              "Run `backprop export --help` for the formats and quantizations."),
        _spec("INPUT_OLLAMA_NAME_INVALID", "The Ollama model name is not valid.",
              "Use letters, digits, '.', '_' and '-', optionally `namespace/name:tag`, e.g. my-model:q4_k_m."),
        _spec("INPUT_HUB_REPO_INVALID", "The hub repository id is not valid.",
              "Use `user/name` (letters, digits, '.', '_' and '-')."),
        _spec("EXPORT_ARCH_UNSUPPORTED", "This model's architecture or tokenizer cannot be converted to GGUF.",
              "Export the adapter or merged weights instead (--format adapter|merged), or use a Llama, Mistral, SmolLM2 or Qwen2 model; "
              "for another architecture, set BACKPROPAGATE_LLAMA_CPP_DIR to a llama.cpp checkout and its "
              "convert_hf_to_gguf.py writes the GGUF."),
        _spec("EXPORT_CONVERTER_FAILED", "llama.cpp's convert_hf_to_gguf.py failed on the merged model.",
              "The message ends with the converter's last lines. A newer llama.cpp checkout may convert this "
              "model (git pull in BACKPROPAGATE_LLAMA_CPP_DIR); else export --format merged and convert that "
              "folder by hand. Nothing was replaced."),
        _spec("EXPORT_VERIFY_FAILED", "The exported model does not behave like the trained model within the allowed bound.",
              "Nothing was replaced; try a higher-precision format (q8_0 or f16) and include the figures in a bug report."),
        _spec("EXPORT_FAILED", "Writing the export failed.",
              "Check free disk space and write permission on the output folder, then run the export again.",
              retryable=True),
        # Dependencies: optional packages and outside services.
        _spec("DEP_MISSING", "An optional package needed for this feature is not installed.",
              "Install the extra named in the message, e.g. pip install 'backpropagate[export]'."),
        _spec("DEP_OLLAMA_REGISTRATION_FAILED", "Registering the model with Ollama failed.",
              "Make sure Ollama is running (`ollama serve`) and reachable at the host given (--ollama-host or BACKPROPAGATE_OLLAMA_HOST), then retry; `backprop ollama-register FILE.gguf --name NAME` registers an existing export.",
              retryable=True),
        _spec("DEP_HUB_PUSH_FAILED", "Uploading to the Hugging Face Hub failed.",
              "Check your token (`hf auth login` or HF_TOKEN) and network, then retry.",
              retryable=True),
    ]
)

_EXIT_BY_PREFIX = {"INPUT": 1, "CONFIG": 1, "UI": 1, "SHARE": 1}


class BackpropError(Exception):
    """The one error type users see. `code` must be a key of CATALOG."""

    def __init__(self, code: str, message: str, hint: str | None = None,
                 retryable: bool | None = None) -> None:
        spec = CATALOG.get(code)
        if spec is None:
            raise ValueError(f"unknown error code {code!r}; add it to errors.CATALOG")
        self.code = code
        self.message = redact(message)
        self.hint = redact(hint) if hint else spec.hint
        self.retryable = spec.retryable if retryable is None else retryable
        super().__init__(f"[{code}] {self.message}")

    @property
    def exit_code(self) -> int:
        """1 for input/config problems the user can fix, 3 for runtime failures."""
        return _EXIT_BY_PREFIX.get(self.code.split("_", 1)[0], 3)

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "hint": self.hint,
                "retryable": self.retryable}


# What a full disk looks like through Python, safetensors (Rust), torch.save, SQLite and Windows.
_DISK_FULL_TEXT = ("no space left on device", "storagefull", "not enough space on the disk",
                   "disk quota exceeded", "file write failed", "database or disk is full")


def is_disk_full(err: BaseException | None) -> bool:
    """Whether `err`, or an error it was raised from, means the disk (or quota) is full."""
    full = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    while err is not None:
        if isinstance(err, OSError) and err.errno in full:
            return True
        if any(text in str(err).lower() for text in _DISK_FULL_TEXT):
            return True
        err = err.__cause__ or err.__context__
    return False

