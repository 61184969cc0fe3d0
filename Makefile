# Setup in two commands on a fresh machine:
#   make demo   - create .venv, install mrsynth, run the main job on the bundled example
#   make test   - create .venv, install mrsynth with test extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-output

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU wheel first, so that nothing pulls a multi-GB CUDA build of torch.
	$(BIN)/python -m pip install --quiet torch==2.13.0

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	rm -rf $(DEMO_OUT)
	$(BIN)/mrsynth phantom $(DEMO_OUT)/phantom --subjects 1 --seed 0 --resolution 2
	$(BIN)/mrsynth evaluate --ref examples/cstar_stroke/T2.nii.gz --pred examples/cstar_stroke/FLAIR.nii.gz
	$(BIN)/mrsynth evaluate --ref $(DEMO_OUT)/phantom/sub-01/anat/sub-01_T2w.nii.gz \
		--pred $(DEMO_OUT)/phantom/sub-01/anat/sub-01_PDw.nii.gz --json --out $(DEMO_OUT)/phantom_T2w_vs_PDw.json

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
