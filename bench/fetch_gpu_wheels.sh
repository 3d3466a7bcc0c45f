#!/bin/sh
# Fetch into .whl/ (git-ignored) the wheels that bench/gpu.sh installs on the GPU machine, which has no network.
# That machine (nvidia-h200: Python 3.12, x86_64) already has torch 2.11 (cu130), transformers, accelerate,
# safetensors, sentencepiece, protobuf, huggingface_hub, tokenizers, numpy, pillow, regex, requests, filelock, pytest
# and psutil; it lacks diffusers and torchao, and pytest-asyncio (pytest comes along so the versions agree with
# pyproject's pins). Only tests/test_local.py and bench/ run there: the app's own dependencies (fastapi, nc_py_api, ...)
# are not needed (pytest runs with --noconftest). diffusers' importlib_metadata is only imported on Python < 3.8.
# Run from the repository root: sh bench/fetch_gpu_wheels.sh   (PYTHON=... picks the pip)
set -eu
PYTHON=${PYTHON:-python3}
WHEELS="diffusers==0.42.1 torchao==0.17.0 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pytest-asyncio==1.5.0"
mkdir -p .whl
rm -f .whl/*.whl
# shellcheck disable=SC2086 # one word per wheel
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $WHEELS
ls -l .whl
du -sh .whl
