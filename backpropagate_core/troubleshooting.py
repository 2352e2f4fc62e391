"""The troubleshooting guide: one row per error code, generated so it cannot drift.

`errors.CATALOG` gives each code's summary and fix; `ENTRIES` below adds what the user
notices and why it happens. `python -m backpropagate_core.troubleshooting` rewrites
`docs/troubleshooting.md`; `--check` only reports whether the file is stale or a code
lacks an entry (tests/test_troubleshooting.py runs the same check).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from backpropagate_core.errors import CATALOG, BackpropError

DOC = Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md"


@dataclass(frozen=True)
class Entry:
    symptom: str
    """What the user notices, in their words."""
    cause: str
    """Why it happens."""


ENTRIES: dict[str, Entry] = {
    "INPUT_DATASET_NOT_FOUND": Entry(
        "`backprop train` or the Train page stops at once: the dataset does not exist.",
        "The path is mistyped, relative to a different folder, or the file was moved or deleted."),
    "INPUT_DATASET_INVALID": Entry(
        "Loading the dataset fails and names a line or record.",
        "A line is not valid JSON, a record lacks the fields of its format, or a role or message is malformed."),
    "INPUT_DATASET_EMPTY": Entry(
        "The dataset loads but nothing is left to train on.",
        "The file is empty, or every record was dropped (no assistant reply, or all lines were bad and skipped)."),
    "INPUT_DATASET_FORMAT_UNKNOWN": Entry(
        "The dataset report says the format is unknown.",
        "The records use field names none of the supported formats use."),
    "INPUT_FEEDBACK_INVALID": Entry(
        "Rating or correcting a chat answer is refused.",
        "The conversation does not end with the user's turn, the verdict is not up, down or edit, "
        "or an edit has no corrected answer."),
    "INPUT_FEEDBACK_TOO_FEW": Entry(
        "Training on chat feedback is refused with a count of pairs.",
        "A preference run needs a few (chosen, rejected) pairs; ratings of a single answer, or only "
        "thumbs up, make none."),
    "INPUT_FILE_EXISTS": Entry(
        "A command that writes a file refuses to replace one.",
        "A different file is already at that path, and replacing it would lose it."),
    "INPUT_MODEL_NOT_FOUND": Entry(
        "Training or export stops before loading weights: the model cannot be found or loaded.",
        "The name is not a preset, the folder has no config.json, or a hub id cannot be downloaded (offline, gated, mistyped)."),
    "INPUT_PATH_FORBIDDEN": Entry(
        "The UI refuses a file or folder path.",
        "The path resolves outside the folder the UI may read and write (`BACKPROPAGATE_UI__OUTPUT_DIR`)."),
    "INPUT_AUTH_REQUIRED": Entry(
        "`backprop ui --share` refuses to start.",
        "A public link without a login would let anyone use the machine, so sharing requires one."),
    "INPUT_UPLOAD_INVALID": Entry(
        "The UI rejects an uploaded file.",
        "The file is empty or its extension is not .jsonl, .json, .csv or .parquet."),
    "INPUT_UPLOAD_TOO_LARGE": Entry(
        "The UI rejects an upload as too large.",
        "The file exceeds `BACKPROPAGATE_UI__MAX_UPLOAD_MB` (200 MB by default)."),
    "UI_START_FAILED": Entry(
        "`backprop ui` (or `make run`) exits without serving the page.",
        "bun or the Python UI packages are missing, the port is taken, or the frontend build failed."),
    "INPUT_AUTH_INVALID": Entry(
        "`backprop ui --auth` refuses the login given.",
        "The value is not USER:PASSWORD, the password is shorter than 8 characters, or the auth file is malformed."),
    "UI_OUTPUT_DIR_FORBIDDEN": Entry(
        "`backprop ui` refuses to start because of its output folder.",
        "`BACKPROPAGATE_UI__OUTPUT_DIR` points at a system folder or one holding credentials (e.g. ~/.ssh)."),
    "UI_UPLOAD_REJECTED": Entry(
        "The UI rejects an upload whose name looks right.",
        "The content is not what the extension says (e.g. a renamed binary or HTML page)."),
    "UI_RATE_LIMITED": Entry(
        "The UI says to wait before trying again.",
        "Too many logins, uploads or run starts in a short time, which the UI limits."),
    "SHARE_NO_PROVIDER": Entry(
        "`backprop ui --share` stops: no tunnel.",
        "Neither cloudflared nor ngrok is installed."),
    "SHARE_TUNNEL_FAILED": Entry(
        "`backprop ui --share` stops while opening the public link.",
        "The tunnel program could not reach its service (network, firewall, token) or exited early."),
    "CONFIG_INVALID": Entry(
        "Any command stops at once and lists settings with the env var for each.",
        "A value from a flag, `.env` or a `BACKPROPAGATE_*` variable is out of range or of the wrong type."),
    "CONFIG_GPU_REQUIRED": Entry(
        "Training refuses an option such as `--load-in-4bit`.",
        "The option needs a CUDA GPU and none is visible to PyTorch."),
    "RUNTIME_TRAINING_FAILED": Entry(
        "A run ends as failed during training.",
        "An error inside model loading or the training loop (often out of memory); the message has the details."),
    "RUNTIME_LOSS_NONFINITE": Entry(
        "A run fails with a NaN or infinite loss.",
        "The learning rate is too high for this model and data, or examples are degenerate (empty, extremely long)."),
    "RUNTIME_OOM_RECOVERY_EXHAUSTED": Entry(
        "A GPU run fails with out of memory after the log shows the batch size being halved.",
        "Even the smallest batch does not fit: the model, sequence length and LoRA settings need more memory than the GPU has."),
    "RUNTIME_GPU_OVERHEAT": Entry(
        "A run stops on its own with a temperature warning; a checkpoint was written first.",
        "The GPU reached the abort temperature (`BACKPROPAGATE_GPU__ABORT_C`, 95 °C by default), usually from poor cooling or airflow."),
    "RUNTIME_UNEXPECTED": Entry(
        "A command fails with an error that has no specific code.",
        "A failure the engine does not recognise; likely a bug."),
    "RUNTIME_WORKER_DIED": Entry(
        "A run shows as interrupted; its worker is gone.",
        "The worker process was killed (out of memory, `kill -9`, a reboot) or crashed before it could report."),
    "RUNTIME_MEMORY_LIMIT": Entry(
        "A dataset report, plan or chat answer in the UI fails: the engine reached its memory limit.",
        "Engine processes the UI starts run under an address-space limit (3/4 of the machine's memory, at least "
        "8 GiB, unless `BACKPROPAGATE_SECURITY__ENGINE_MEMORY_GB` sets it), so a memory bomb fails there and not "
        "the machine; the input asked for more."),
    "RUNTIME_CANCELLED": Entry(
        "A run shows as cancelled.",
        "Someone pressed Stop, ran `backprop cancel` or Ctrl-C; a checkpoint was written first."),
    "STATE_RUN_NOT_FOUND": Entry(
        "`show-run`, `resume`, `cancel` or the UI cannot find a run.",
        "No run id starts with the text given, or the run was deleted, or `BACKPROPAGATE_HOME` points elsewhere."),
    "STATE_RUN_AMBIGUOUS": Entry(
        "`show-run` or `resume` says several runs match.",
        "The id prefix given is shared by more than one run."),
    "STATE_RUN_ACTIVE": Entry(
        "Resume or delete is refused: the run is still running.",
        "Its worker is alive; a second one would write the same folder."),
    "STATE_CHECKPOINT_INVALID": Entry(
        "Resume or save finds nothing to continue from.",
        "The run never completed a checkpoint (only `.partial` folders, which are never used), or nothing was trained yet."),
    "STATE_DISK_FULL": Entry(
        "A run fails while saving, and the message says the disk filled up.",
        "No space was left for a checkpoint, the final adapter or the run store; the half-written folder is kept as `.partial` and the previous checkpoint is untouched."),
    "STATE_CAMPAIGN_UNFINISHED": Entry(
        "`backprop multi-run` refuses to start a campaign with the same settings.",
        "A campaign with these settings stopped before its last run; starting over would discard its merges."),
    "MERGE_NONFINITE": Entry(
        "A multi-run campaign stops after a run with NaN or infinite merged weights.",
        "The merge step scaled an unstable adapter (learning rate too high, or a diverged run)."),
    "INPUT_EXPORT_SOURCE_INVALID": Entry(
        "`backprop export` does not accept what it was given.",
        "The argument is not a run id, an adapter folder (adapter_config.json) or a model folder (config.json + safetensors)."),
    "INPUT_EXPORT_OPTION_INVALID": Entry(
        "`backprop export` rejects a format or quantization.",
        "The value is not one of the supported formats or quantization types."),
    "INPUT_OLLAMA_NAME_INVALID": Entry(
        "Export to Ollama rejects the model name.",
        "Ollama names allow only letters, digits, '.', '_', '-', an optional namespace and a tag."),
    "INPUT_HUB_REPO_INVALID": Entry(
        "Pushing to the hub rejects the repository id.",
        "A hub repository id is `user/name` with letters, digits, '.', '_' and '-' only."),
    "EXPORT_ARCH_UNSUPPORTED": Entry(
        "GGUF export stops before writing anything.",
        "The model's architecture or its tokenizer has no GGUF mapping here."),
    "EXPORT_CONVERTER_FAILED": Entry(
        "GGUF export of a model our writer does not convert stops at the write stage, quoting llama.cpp.",
        "llama.cpp's converter (BACKPROPAGATE_LLAMA_CPP_DIR) does not know the architecture or the tokenizer "
        "in this checkout's version, lacks a Python package, or was killed for memory."),
    "EXPORT_VERIFY_FAILED": Entry(
        "An export is written but reported as not matching the trained model.",
        "Quantization changed the outputs more than the allowed bound, or the conversion is wrong for this model."),
    "EXPORT_FAILED": Entry(
        "An export stops part-way.",
        "Writing the output failed: full disk, no write permission, or the quantizer failed."),
    "DEP_MISSING": Entry(
        "A feature says an optional package is missing.",
        "The extra that provides it (ui, export, monitoring, unsloth) is not installed."),
    "DEP_OLLAMA_REGISTRATION_FAILED": Entry(
        "Export with `--ollama` writes the GGUF but registration fails.",
        "The Ollama server is not running or not reachable at the configured host, or it rejected the model."),
    "DEP_HUB_PUSH_FAILED": Entry(
        "Pushing to the Hugging Face Hub fails.",
        "No or wrong token, no write access to the repository, or no network."),
}

_GROUPS = [("INPUT", "Input: files, ids and arguments"), ("CONFIG", "Configuration"),
           ("UI", "The web app"), ("SHARE", "Sharing the web app"), ("RUNTIME", "Training"),
           ("STATE", "Runs, checkpoints and disk"), ("MERGE", "Multi-run merges"),
           ("EXPORT", "Export"), ("DEP", "Optional packages and outside services")]

_HEADER = """# Troubleshooting

Every error backpropagate reports has a code. The terminal prints it as `[CODE] message`
followed by a hint; the UI shows it next to the message; `backprop show-run RUN` shows it
for a failed run. Find the code below. `backprop info --error-codes` lists the same codes.

<!-- Generated by `python -m backpropagate_core.troubleshooting` from errors.CATALOG and
     the ENTRIES table in backpropagate_core/troubleshooting.py. Do not edit by hand. -->

## Reporting a problem

1. `backprop info --json` prints versions, hardware, extras, free disk and memory.
2. Every run has an id (`run_started run_id=...` is the first thing printed). It is on every
   line of the run's logs and events, in each checkpoint's `backpropagate.json` and in the
   adapter's manifest, so `grep -r RUN_ID ~/.backpropagate/runs/RUN_ID` finds all of it.
   `show-run` and `resume` accept any unique prefix of it.
3. The run folder `~/.backpropagate/runs/RUN_ID/` holds `run.log` (everything from DEBUG up)
   and, for background runs, `worker.log` (the worker's own output, including a crash's
   traceback); `backprop show-run RUN_ID --events 100000 --json` prints every event the
   run store recorded. Secrets are masked in all of them.
4. Logging: `BACKPROPAGATE_LOG_LEVEL` (DEBUG, INFO, WARNING, ERROR),
   `BACKPROPAGATE_LOG_JSON` (auto, true, false) and `BACKPROPAGATE_LOG_FILE` (a JSON-lines
   copy of all logs, rotated at 10 MB).

Exit codes: 1 for input and configuration problems, 2 for command-line usage, 3 for
runtime failures.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def missing_entries() -> list[str]:
    return [code for code in CATALOG if code not in ENTRIES]


def render() -> str:
    """The whole document, from the catalog and ENTRIES."""
    lines = [_HEADER]
    known = [prefix for prefix, _ in _GROUPS]
    for prefix, title in _GROUPS + [("", "Other")]:
        codes = [c for c in CATALOG if (c.split("_", 1)[0] == prefix if prefix
                                        else c.split("_", 1)[0] not in known)]
        if not codes:
            continue
        exit_code = BackpropError(codes[0], "").exit_code
        lines += [f"## {title} (exit code {exit_code})", "",
                  "| Symptom | Code | Cause | Fix |", "|---|---|---|---|"]
        for code in codes:
            spec, entry = CATALOG[code], ENTRIES.get(code, Entry(CATALOG[code].summary, "(not described yet)"))
            retry = " Retrying can help." if spec.retryable else ""
            lines.append(f"| {_cell(entry.symptom)} | `{code}` | {_cell(entry.cause)} "
                         f"| {_cell(spec.hint)}{retry} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    check = "--check" in args
    target = Path(next((a for a in args if not a.startswith("--")), DOC))
    missing = missing_entries()
    if missing:
        print(f"error codes without a troubleshooting entry: {', '.join(missing)}\n"
              f"add them to ENTRIES in {Path(__file__).name}", file=sys.stderr)
        return 1
    text = render()
    if check:
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            print(f"{target} is stale; run: python -m backpropagate_core.troubleshooting", file=sys.stderr)
            return 1
        return 0
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target} ({len(CATALOG)} codes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
