# Every target installs into .venv from the repo's own files first, so a fresh clone just works.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The offline demo profile: a small teacher built from the sample corpus, a 3-layer student,
# few epochs. The same pipeline code as the GPU run, only params differ (README: Laptop profile).
# It runs as a temporary DVC experiment (`--temp`: in a scratch copy, kept as an experiment), so
# the checked-out params.yaml stays as shipped; the teacher path is absolute for that reason.
DEMO_TEACHER := models/demo_teacher
DEMO_OVERRIDES := -S teacher.model_name=$(abspath $(DEMO_TEACHER)) \
	-S 'student.num_layers=3' -S 'student.teacher_layers=[1,2,4]' \
	-S 'train.layer_map.teacher=[2,4]' -S 'train.layer_map.student=[2,3]' \
	-S distill.epochs=3 -S distill.learning_rate=0.0005 \
	-S finetune.epochs=2 -S finetune.learning_rate=0.0003 \
	-S pruning.num_batches=8 -S bench.repeats=10

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-fast demo sweep real real-clone ui clean-demo

$(BIN)/nerdistill: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(BIN)/nerdistill

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

$(DEMO_TEACHER): | install
	$(BIN)/nerdistill demo-teacher --out $(DEMO_TEACHER)

# One row per experiment, under 200 characters: the gate's decision and the figures it rests on
# (gate.variant: the int8 ONNX export by default), then the head ratio. `--keep` patterns match a
# column name from its start only (Python's re.match), so each ends in $ (`f1` alone would keep
# `f1_drop_points.*` and more); a key two files share is named `metrics/gate.json:f1`, hence the prefix.
DEMO_COLUMNS := 'Experiment$$|(metrics/gate\.json:)?(decision|basis|variant|f1|f1_drop_points|latency_ratio_vs_teacher_fp32|size_ratio_vs_teacher_fp32)$$|(params\.yaml:)?pruning\.ratio$$'

demo: install $(DEMO_TEACHER)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc exp run --temp $(DEMO_OVERRIDES)
	$(BIN)/dvc exp show --no-pager --md --drop '.*' --keep $(DEMO_COLUMNS)

# A grid of DVC experiments and their Pareto front (README: Sweep). The demo grid names the demo
# teacher's folder, so it is built first for that grid; SWEEP_ARGS passes more options (--jobs 1).
SWEEP ?= sweeps/demo.yaml
SWEEP_ARGS ?=

sweep: install $(if $(filter sweeps/demo.yaml,$(SWEEP)),$(DEMO_TEACHER))
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/nerdistill sweep --grid $(SWEEP) $(SWEEP_ARGS)

# Real French data with the real pretrained stand-in teacher (docs/results.md): neither is
# shipped, so this target checks for both and runs in a scratch clone, leaving the sample corpus alone.
REAL_CONLLU ?= ../shared/data/wikineural-fr-val.conllu
REAL_TEACHER ?= /tmp/real_teacher
REAL_RUN ?= /tmp/nerdistill-real
REAL_CORPUS_SENTENCES ?= 2000
REAL_OVERRIDES := -S teacher.model_name=$(REAL_TEACHER) \
	-S 'student.num_layers=4' -S 'student.teacher_layers=[1,2,4,6]' \
	-S 'train.layer_map.teacher=[2,4,6]' -S 'train.layer_map.student=[2,3,4]' \
	-S train.batch_size=32 -S distill.epochs=2 -S distill.learning_rate=0.0001 \
	-S finetune.epochs=1 -S finetune.learning_rate=0.0001 \
	-S pruning.num_batches=8 -S bench.repeats=10 -S evaluate.gold_path=$(REAL_RUN)-data/gold_test.conll

# A teacher folder is loadable once its build has finished: config.json with a model_type, and weights.
# The folder alone says nothing (the build creates it as it starts, and training takes ~30 minutes).
REAL_TEACHER_CHECK := import json, pathlib, sys; folder = pathlib.Path(sys.argv[1]); config = folder / 'config.json'; \
	sys.exit(0 if config.is_file() and json.loads(config.read_text(encoding='utf-8')).get('model_type') \
	and any((folder / name).is_file() for name in ('model.safetensors', 'model.safetensors.index.json', \
	'pytorch_model.bin')) else 1)

# real-clone only prepares the scratch clone (the real sweep runs there: sweeps/real.yaml).
real-clone: install
	@test -f $(REAL_CONLLU) || { echo "$(REAL_CONLLU) not found (not shipped; see docs/results.md)"; exit 1; }
	@$(BIN)/python -c "$(REAL_TEACHER_CHECK)" $(REAL_TEACHER) || { echo "$(REAL_TEACHER) is not a loadable \
	teacher (config.json with a model_type, and model.safetensors): build it, or let its build finish \
	(docs/results.md, step 1)"; exit 1; }
	$(BIN)/python scripts/real_data.py $(REAL_CONLLU) $(REAL_RUN)-data --max-sentences 10000 --corpus-sentences $(REAL_CORPUS_SENTENCES)
	rm -rf $(REAL_RUN) && git clone -q . $(REAL_RUN) && ln -s $(abspath $(VENV)) $(REAL_RUN)/.venv
	cp $(REAL_RUN)-data/corpus.txt $(REAL_RUN)/data/raw/corpus.txt

real: real-clone
	cd $(REAL_RUN) && PATH=$(abspath $(BIN)):$$PATH $(abspath $(BIN))/dvc exp run $(REAL_OVERRIDES)
	cd $(REAL_RUN) && $(abspath $(BIN))/dvc metrics show

# A viewer for one person: one worker, no job runner (MLflow's default starts 4 workers and a job
# consumer per job kind, a load a 2-core laptop feels while the pipeline runs).
UI_PORT ?= 5000
ui: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server --backend-store-uri sqlite:///$(abspath mlflow.db) \
		--host 127.0.0.1 --port $(UI_PORT) --workers 1

clean-demo:
	rm -rf $(DEMO_TEACHER) checkpoints
