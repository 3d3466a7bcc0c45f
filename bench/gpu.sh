#!/bin/sh
# Issue 14's one GPU call (run from the repository root):
#   sh bench/gpu.sh                  on the GPU machine, through the device tool (carry .whl, OUT set by the tool)
#   sh bench/gpu.sh --cpu-dry-run    here: the same steps at tiny sizes on the CPU (OUT defaults to a new temp dir)
# It installs the wheels carried in .whl/ (bench/fetch_gpu_wheels.sh) into a folder on PYTHONPATH, then runs
# bench/gpu.py: the gpu-marked tests, then the benchmark, within T2I_BUDGET_S seconds (default 450; with the grace
# given to a step that overruns its deadline, all of it ends within 8 minutes).
# PYTHON picks the interpreter (default python3; here e.g. PYTHON=/work/main/.venv/bin/python).
set -eu
started=$(date +%s)
PYTHON=${PYTHON:-python3}
BUDGET=${T2I_BUDGET_S:-450}
case "${1:-}" in
  --cpu-dry-run) flags="--device cpu --tiny"; OUT=${OUT:-$(mktemp -d -t t2i-gpu-dry-run-XXXXXX)}; SITE=${T2I_SITE:-$(mktemp -d -t t2i-site-XXXXXX)} ;;
  "") flags="--device cuda"; SITE=${T2I_SITE:-/tmp/site} ;;
  *) echo "usage: sh bench/gpu.sh [--cpu-dry-run]" >&2; exit 2 ;;
esac
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      .whl/*.whl >"$OUT/install.log" 2>&1; then
    cat "$OUT/install.log" >&2
    exit 1
  fi
  # byte-compile now, as a plain pip install does: compiled at import instead, under pytest's filterwarnings=error,
  # torchao's invalid escape sequences (SyntaxWarning) fail the collection of tests/test_local.py
  "$PYTHON" -m compileall -q -j 0 "$SITE" >>"$OUT/install.log" 2>&1 || true
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed $(ls .whl | wc -l) wheels into $SITE in $(( $(date +%s) - started )) s"
else
  echo "no wheels in .whl/ (bench/fetch_gpu_wheels.sh fetches them): using what $PYTHON has"
fi
"$PYTHON" -c 'import diffusers, torch, transformers, pytest_asyncio; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "diffusers", diffusers.__version__, "transformers", transformers.__version__)'
echo "results: $OUT/results.md and $OUT/results.json"
# shellcheck disable=SC2086 # $flags is two words on purpose
exec "$PYTHON" bench/gpu.py --out "$OUT" --started "$started" --budget-s "$BUDGET" $flags
