#!/usr/bin/env bash
# The GPU check (README "GPU check"): on a machine with one CUDA GPU, within a 9-minute budget,
# the CUDA tests, overhead.py at ~99M parameters / sequence 512 / bf16 (tokens/s, MFU) and, when
# benchmarks/hf_steps.py exists, its Hugging Face steps; one table at the end, and a JSON.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out PATH] [--parts tests,overhead,hf]
#
# --dry-run: tiny sizes on the CPU (the test suite runs it). The logic is benchmarks/gpu_check.py;
# this script only picks the Python: $MASKDIFF_PYTHON as it is when set; else .venv/bin/python,
# then python3 -- the first that imports torch and maskdiff's dependencies, preferring one whose
# torch sees CUDA (unless --dry-run) -- and else it builds .venv with `make setup`, as the
# Makefile does (that needs PyPI).
set -uo pipefail
start=$(date +%s)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

dry=0
for arg in "$@"; do [ "$arg" = "--dry-run" ] && dry=1; done

# 0: usable and sees CUDA; 3: usable, no CUDA; anything else: not usable.
probe() {
    [ -n "$1" ] && [ -x "$(command -v "$1" 2>/dev/null)" ] || return 1
    timeout 120 "$1" -c 'import sys, numpy, scipy, tokenizers, tqdm, safetensors, torch, maskdiff
sys.exit(0 if torch.cuda.is_available() else 3)' >/dev/null 2>&1
}

py="${MASKDIFF_PYTHON:-}" fallback=""
[ -n "$py" ] || for candidate in .venv/bin/python python3; do
    probe "$candidate"
    code=$?
    if [ $code -eq 0 ] || { [ $code -eq 3 ] && [ $dry -eq 1 ]; }; then py=$candidate; break; fi
    if [ $code -eq 3 ] && [ -z "$fallback" ]; then fallback=$candidate; fi
done
py=${py:-$fallback}
if [ -z "$py" ]; then
    echo "gpu_check: no Python with torch and maskdiff's dependencies; running make setup" >&2
    if ! timeout 420 make setup; then
        echo "gpu_check: make setup failed (no network?); set MASKDIFF_PYTHON to a Python with torch" >&2
        exit 1
    fi
    py=.venv/bin/python
fi
echo "gpu_check: $py ($(command -v "$py")), chosen in $(( $(date +%s) - start )) s"
exec timeout -k 10 900 "$py" benchmarks/gpu_check.py --started-at "$start" "$@"
