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
	$(BIN)/mrsynth synthesize --in t1=examples/cstar_stroke/T1.nii.gz t2=examples/cstar_stroke/T2.nii.gz \
		--target flair --out $(DEMO_OUT)/FLAIR_synth.nii.gz
	$(BIN)/mrsynth evaluate --pred $(DEMO_OUT)/FLAIR_synth.nii.gz --ref examples/cstar_stroke/FLAIR.nii.gz \
		--json --out $(DEMO_OUT)/FLAIR_synth_metrics.json

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
