# text2image_hub — `make run` starts the app, `make test` runs every check. `make help` lists the rest.
APP_ID      := $(shell sed -n 's:.*<id>\(.*\)</id>.*:\1:p' appinfo/info.xml | head -1)
APP_VERSION := $(shell sed -n 's:.*<version>\(.*\)</version>.*:\1:p' appinfo/info.xml | head -1)
IMAGE       ?= ghcr.io/text2image-hub/$(APP_ID)
PYTHON      ?= python3.11
VENV        := .venv
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed
OCC         ?= php occ
APP_PORT    ?= 9033
# `make lock`: uv, pinned, in its own venv; where it finds PyTorch's CPU build (a folder holding the wheel works too).
UV_VERSION      := 0.13.9
LOCK_VENV       := .venv-lock
UV_STAMP        := $(LOCK_VENV)/.uv-$(UV_VERSION)
TORCH_CPU_LINKS ?= https://download.pytorch.org/whl/cpu/torch/
LOCK_ARGS       ?=
LOCK_FLAGS      := --extra local --generate-hashes --only-binary :all: --python-version 3.11 \
                   --python-platform x86_64-manylinux_2_28 --quiet $(LOCK_ARGS) \
                   --custom-compile-command "make lock (uv $(UV_VERSION); CPython 3.11, linux x86_64 only)"

.DEFAULT_GOAL := help
.PHONY: help install run test check lint format bench lock docker-build docker-push register unregister e2e tiny-model translations

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0  # first: a CPU wheel; a plain `torch` would pull CUDA packages
	$(BIN)/pip install --quiet -e ".[local,dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv with the app, the local backend and the dev tools

run: $(STAMP) ## run the app (standalone without NEXTCLOUD_URL; as an ExApp with NEXTCLOUD_URL + APP_SECRET)
	APP_PORT=$(APP_PORT) $(BIN)/python -m text2image_hub

translations: $(STAMP) ## bring the catalogues in translationfiles/ up to date with the code and compile them (.mo)
	$(BIN)/python scripts/translations.py extract
	$(BIN)/python scripts/translations.py compile

tiny-model: $(STAMP) ## create a tiny random-weights model in models/tiny-sdxl (smoke test only, not a real model)
	$(BIN)/python -m tests.tiny_models models/tiny-sdxl
	@echo "try it: T2I_MODEL_PATH=models/tiny-sdxl make run   (the folder says it is SDXL-Turbo-shaped)"

lint: $(STAMP) ## ruff lint + format check
	$(BIN)/ruff check lib tests bench scripts
	$(BIN)/ruff format --check lib tests bench scripts

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix lib tests bench scripts
	$(BIN)/ruff format lib tests bench scripts

check: lint ## lint + mypy --strict
	$(BIN)/mypy lib/text2image_hub tests bench scripts/translations.py

test: check ## all checks: ruff, mypy --strict, pytest
	$(BIN)/pytest

bench: $(STAMP) ## run the benchmarks and print their figures (bench/local.py --device cuda on a GPU)
	PYTHONPATH=. $(BIN)/python bench/core.py
	PYTHONPATH=. $(BIN)/python bench/remote.py --check
	PYTHONPATH=. $(BIN)/python bench/api.py
	PYTHONPATH=. $(BIN)/python bench/footprint.py --check
	PYTHONPATH=. $(BIN)/python bench/first_run.py
	PYTHONPATH=. $(BIN)/python bench/recovery.py
	PYTHONPATH=. $(BIN)/python bench/faults.py
	PYTHONPATH=. $(BIN)/python bench/local.py --quick

$(UV_STAMP):
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet uv==$(UV_VERSION)
	touch $(UV_STAMP)

lock: $(UV_STAMP) ## regenerate the image's hash-pinned locks requirements/image-{cpu,cuda}.txt (LOCK_ARGS=--upgrade: newest)
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml requirements/image-cpu.in $(LOCK_FLAGS) \
		--find-links $(TORCH_CPU_LINKS) -o requirements/image-cpu.txt
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml requirements/image-cuda.in $(LOCK_FLAGS) -o requirements/image-cuda.txt

docker-build: ## build the CPU and CUDA images, tagged <version>-cpu / <version>-cuda
	docker build --build-arg FLAVOUR=cpu --build-arg VERSION=$(APP_VERSION) -t $(IMAGE):$(APP_VERSION)-cpu -t $(IMAGE):$(APP_VERSION) .
	docker build --build-arg FLAVOUR=cuda --build-arg VERSION=$(APP_VERSION) -t $(IMAGE):$(APP_VERSION)-cuda .

docker-push: ## push both images
	docker push $(IMAGE):$(APP_VERSION)-cpu
	docker push $(IMAGE):$(APP_VERSION)
	docker push $(IMAGE):$(APP_VERSION)-cuda

register: ## register the running app with Nextcloud via a manual_install daemon (OCC="…" to change occ)
	OCC="$(OCC)" APP_PORT=$(APP_PORT) sh scripts/register.sh register

unregister: ## unregister the app from Nextcloud
	OCC="$(OCC)" sh scripts/register.sh unregister

e2e: $(STAMP) ## schedule a core:text2image task on NEXTCLOUD_URL (NC_USER/NC_PASSWORD) and wait until SUCCESSFUL
	$(BIN)/python scripts/e2e.py
