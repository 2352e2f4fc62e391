"""Export a trained run: LoRA adapter, merged weights, or a verified GGUF for llama.cpp/Ollama.

    from backpropagate_core.export import export_model, register_with_ollama
    result = export_model(run_id, format="gguf", quantization="q4_k_m")
    print(result.path, result.verification["max_logit_diff"])
    register_with_ollama(result.path, "my-model")

Modules: `merged` (sources, merging), `gguf_vocab` + `gguf_writer` (our HF → GGUF writer),
`llama_cpp_convert` (llama.cpp's converter, for the architectures ours does not know),
`quantize` (llama.cpp's quantizer), `verify`, `exporter` (the pipeline), `ollama`,
`hub`, `chat`, `jobs` (an export as a run of its own, kind "export"). Everything
heavy is imported inside functions.
"""

from backpropagate_core.runs.events import ExportProgress
from backpropagate_core.export.exporter import (FORMATS, MERGED_DTYPES, ExportResult,
                                                export_model)
from backpropagate_core.export.gguf_writer import SUPPORTED_ARCHITECTURES
from backpropagate_core.export.hub import PushResult, push_to_hub
from backpropagate_core.export.ollama import Registration, modelfile, register_with_ollama
from backpropagate_core.export.quantize import QUANTIZATIONS, estimated_size_bytes

__all__ = [
    "FORMATS", "MERGED_DTYPES", "QUANTIZATIONS", "SUPPORTED_ARCHITECTURES", "ExportProgress",
    "ExportResult", "PushResult", "Registration", "estimated_size_bytes", "export_model",
    "modelfile", "push_to_hub", "register_with_ollama",
]
