#!/usr/bin/env bash
# Merge engine on a CUDA machine: the merge tests on the GPU, the full bench, then the
# merge service's bench (bench/merge_service.py) with its workers on the GPU.
#
#   bash bench/gpu_check.sh            # from the repo root; results under $OUT (default ./out)
#   SERVICE=0 bash bench/gpu_check.sh  # without the service bench
#
# No virtualenv is expected there: the machine's own torch is used and never replaced.
# Missing pure-Python packages are installed with pip (from $WHEELHOUSE when that folder
# exists, for machines without network), constrained to the installed torch version.
# Everything is bounded so the script finishes in under 6 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
LOG="$OUT/gpu_check.log"
exec > >(tee "$LOG") 2>&1
start=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export LORASTACK_TEST_DEVICE=cuda
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "FATAL: no torch on this machine; install a CUDA build of torch first (not done here)"
  exit 2
fi
"$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0))
EOF
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "FATAL: torch sees no CUDA device"
  exit 2
fi

# Install what is missing, pinning torch to the installed build so pip never swaps it.
missing=()
for spec in "safetensors:safetensors>=0.4" "peft:peft>=0.13" "transformers:transformers>=4.45" \
            "hypothesis:hypothesis>=6.100" "pytest:pytest>=8" "click:click>=8.1" "psutil:psutil>=5.9"; do
  mod="${spec%%:*}"
  "$PY" -c "import $mod" 2>/dev/null || missing+=("${spec#*:}")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  constraints="$(mktemp)"
  "$PY" -c 'import torch; print("torch==" + torch.__version__)' > "$constraints"
  source_args=(--timeout 20 --retries 1)
  if [[ -d "${WHEELHOUSE:-bench/wheelhouse}" ]]; then
    source_args=(--no-index --find-links "${WHEELHOUSE:-bench/wheelhouse}")
  fi
  timeout 150 "$PY" -m pip install -q -c "$constraints" "${source_args[@]}" "${missing[@]}" \
    || echo "WARNING: pip install failed (no network or wheelhouse?); tests needing them will error"
  rm -f "$constraints"
fi

echo "== merge tests on cuda ($(( $(date +%s) - start ))s elapsed)"
# --confcutdir keeps the hub-wide conftest (databases, S3 mocks) out of this run.
timeout 120 "$PY" -m pytest -q -p no:cacheprovider --confcutdir=tests/unit/merge tests/unit/merge \
  2>&1 | tail -n 25 | tee "$OUT/merge_tests_cuda_unit.txt"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider --confcutdir=tests/integration/merge \
  tests/integration/merge 2>&1 | tail -n 25 | tee "$OUT/merge_tests_cuda_integration.txt"

# The service bench gets its own budget after the engine's.
service_budget=0
if [[ "${SERVICE:-1}" != 0 ]]; then service_budget=${SERVICE_BUDGET:-150}; fi
left=$(( 340 - service_budget - ($(date +%s) - start) ))
if (( left < 60 )); then left=60; fi
echo "== bench (cuda, 32 layers; ${left}s budget)"
# BENCH_ARGS overrides the rows (e.g. "--repeat 3 --dense-configs none" for the linear rows alone);
# --core-ab times the 3 x r16 and 8 x r16 linear rows again with every R x R step on the GPU
# (HOST_CORE_MAX_RANK = 0); the dense rows run on 3 x r16 only, to leave time for it.
# shellcheck disable=SC2086
timeout "$left" "$PY" bench/merge.py --device cuda ${BENCH_ARGS:---repeat 2 --dense-configs 3x16 --core-ab --profile} \
  --tmp "${BENCH_TMP:-/tmp}" \
  | tee "$OUT/bench_merge_cuda.txt"

if (( service_budget > 0 )); then
  echo "== service bench (cuda; ${service_budget}s budget)"
  # The hub itself (flask, gunicorn, sqlalchemy, celery...) with torch pinned to the installed
  # build; the bench runs `lorastack` through this Python when no console script was made.
  if ! "$PY" -c 'import flask, gunicorn, sqlalchemy, alembic, celery, redis, prometheus_client' \
      2>/dev/null; then
    constraints="$(mktemp)"
    "$PY" -c 'import torch; print("torch==" + torch.__version__)' > "$constraints"
    source_args=(--timeout 20 --retries 1)
    if [[ -d "${WHEELHOUSE:-bench/wheelhouse}" ]]; then
      source_args=(--no-index --find-links "${WHEELHOUSE:-bench/wheelhouse}")
    fi
    timeout 120 "$PY" -m pip install -q -c "$constraints" "${source_args[@]}" -e . \
      || echo "WARNING: installing the hub's dependencies failed; the service bench may fail"
    rm -f "$constraints"
  fi
  # SERVICE_ARGS overrides the sizes; without redis-server the throughput row uses the
  # inline queue (the table says so).
  service_args=(${SERVICE_ARGS:---repeat 2 --queued 10})
  command -v redis-server >/dev/null || [[ -x /usr/bin/redis-server ]] || service_args+=(--no-celery)
  LORASTACK_DEVICE=cuda timeout "$service_budget" "$PY" bench/merge_service.py "${service_args[@]}" \
    --tmp "${BENCH_TMP:-/tmp}" | tee "$OUT/bench_merge_service_cuda.txt"
fi
echo "== done in $(( $(date +%s) - start ))s"
