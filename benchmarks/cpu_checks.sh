#!/usr/bin/env bash
# The speed checks still open on CPUs we could not time (issues 11 and 12), in one command:
#
#   bash benchmarks/cpu_checks.sh [OUT_DIR]      # default: results/bench/checks-<isa>-<date>
#
# 1. `psconv bench` on the model table (VGG16/ResNet18, five patterns); on an AVX-512 CPU it is
#    compared cell by cell with the committed results/bench/bench_models.json (compare_bench.py:
#    no cell more than 10% slower relative to its own run's dense model).
# 2. The deployment table (optimize_for_inference against ONNX Runtime / compiled / eager dense,
#    batch 1 and 32): the issue's bar is 1.3x over ORT in every cell.
# 3. The small-map forward on and off (bench_small_maps.py): where "off/on" is clearly above 1,
#    define PSC_SMALL_MAPS_ON in that ISA's csrc/kernels_<isa>.cpp.
# 4. check_bars.py: each issue's bar on tables 1 and 2, PASS or FAIL with the cells below it.
# Stop other work on the machine first (a training run beside a benchmark measures nothing).
# About 20 minutes on two cores of a Zen 3; each step writes its table (.txt) and its JSON to OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PSCONV=.venv/bin/psconv
THREADS=${THREADS:-2}
ISA=$("$PY" -c "from psconv.kernels import binding; print(binding.isa())")
OUT=${1:-results/bench/checks-$ISA-$(date +%Y%m%d)}
mkdir -p "$OUT"
echo "kernel ISA: $ISA; threads: $THREADS; results in $OUT"

PATTERNS=(PS4_P4 PSD4_P8 PSD2_P8 PSD1_P16 PS1_P9)
"$PSCONV" bench --models vgg16 resnet18 --patterns "${PATTERNS[@]}" --repeats 3 \
    --threads "$THREADS" --output "$OUT/bench_models.json" | tee "$OUT/bench_models.txt"
if [ "$ISA" = avx512 ]; then
    # Exit status 1 flags a slower cell; the table says which, and the script goes on.
    "$PY" benchmarks/compare_bench.py results/bench/bench_models.json "$OUT/bench_models.json" \
        | tee "$OUT/compare.txt" || true
fi

"$PSCONV" bench --deploy --models vgg16 resnet18 --patterns PSD4_P8 PSD2_P8 PSD1_P16 PS1_P9 \
    --threads "$THREADS" --repeats 7 --deploy-batches 1 32 \
    --output "$OUT/deploy.json" | tee "$OUT/deploy.txt"

"$PY" benchmarks/bench_small_maps.py --threads "$THREADS" --json "$OUT/small_maps.json" \
    | tee "$OUT/small_maps.txt"

# The issues' bars on these tables, one verdict line each (exit status 1 flags a miss).
"$PY" benchmarks/check_bars.py --models "$OUT/bench_models.json" --deploy "$OUT/deploy.json" \
    | tee "$OUT/verdict.txt" || true
echo "done: $OUT"
