# The two commands people need: `make run` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

VLM_VENV := .venv-vlm
VLM_STAMP := $(VLM_VENV)/.installed

.PHONY: install install-vlm run test test-vlm test-image lint fmt typecheck unit bench soak clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	# torch is pinned in constraints.txt: 2.13.0 is the CPU build these machines carry.
	# ray: `captioner bulk --engine ray` and its tests (~1 min more, ~600 MB).
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,ray]'
	touch $(STAMP)

# torchvision for SmolVLM and Qwen2-VL / Qwen2.5-VL, in a venv of its own: its torch is a
# ~5.5 GB CUDA build (measured: ~5 min more to install), too much for every `make install`.
install-vlm: $(VLM_STAMP)

$(VLM_STAMP): pyproject.toml constraints-vlm.txt
	test -x $(VLM_VENV)/bin/python || $(PYTHON) -m venv $(VLM_VENV)
	$(VLM_VENV)/bin/python -m pip install --quiet --upgrade "pip>=24"
	$(VLM_VENV)/bin/python -m pip install --quiet -c constraints-vlm.txt -e '.[dev,vlm]'
	touch $(VLM_STAMP)

run: $(STAMP)
	$(BIN)/captioner serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict src tests

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

test: lint typecheck
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/pytest -q

# The model-family tests again where torchvision is installed (SmolVLM and Qwen2-VL caption).
test-vlm: $(VLM_STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VLM_VENV)/bin/pytest -q tests/integration/captioners/test_model_families.py

# The Containerfile built with buildah on a Debian base from mmdebstrap and run as compose.yaml
# runs it (needs buildah, podman, mmdebstrap and PostgreSQL 15; measured: docs/deployment.md).
test-image: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/pytest -q -m image tests/integration/packaging/test_container_image.py

# The service side by side with bare baselines (docs/performance.md), then real-sized
# photos (12 and 48 MP JPEG, HEIC, AVIF, a PNG screenshot): each stage of one
# upload, the model thread's share, and decode/preprocess on 1 and 2 threads.
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench.py $(BENCH_ARGS)
	HF_HUB_OFFLINE=1 PYTHONPATH=src $(BIN)/python bench/preprocess.py

# Mixed load for 20 minutes a backend (SOAK_ARGS="--minutes 3" for a short one); a bench.
soak: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) $(VLM_VENV) .mypy_cache .ruff_cache .pytest_cache
