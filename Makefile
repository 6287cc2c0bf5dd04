# Two entry points, each self-installing on a fresh machine:
#   make demo   train a tiny VLM2Vec on the bundled synthetic data offline, then evaluate it
#   make test   run the test suite offline
VENV ?= .venv
PYTHON ?= python3
# CPU build of torch for the offline demo and tests; set TORCH_SPEC to use another build.
TORCH_SPEC ?= torch==2.13.*
OFFLINE = HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet "$(TORCH_SPEC)"
	$(VENV)/bin/pip install --quiet "$(TORCH_SPEC)" -e ".[test]"
	touch $@

.PHONY: demo test
demo: $(VENV)/.installed
	HF_HOME=$$(mktemp -d) $(OFFLINE) $(VENV)/bin/python train.py configs/demo.yaml

test: $(VENV)/.installed
	HF_HOME=$$(mktemp -d) $(OFFLINE) $(VENV)/bin/python -m pytest -q
