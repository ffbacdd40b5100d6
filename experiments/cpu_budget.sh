#!/usr/bin/env bash
# The CPU-budget experiments behind results/: every run at the same short budget, resumable.
# Re-running the script continues unfinished runs (psconv train --resume) and skips finished
# ones, so it can be stopped at any time. Checkpoints stay in the run folders (git-ignored);
# config.json, metrics.csv and summary.json are the results.
#
#   bash experiments/cpu_budget.sh            # all runs, in priority order
#   ONLY=vgg16 bash experiments/cpu_budget.sh # runs whose name contains "vgg16"
set -uo pipefail
cd "$(dirname "$0")/.."
PSCONV=${PSCONV:-.venv/bin/psconv}
DATA=${DATA:-../shared/data}
OUT=${OUT:-results}
# Same budget for every CIFAR-10 run (what a shared 2-core CPU affords in one session):
# 5000 training images of the JPEG copy, 2 epochs (78 steps of 128), one-cycle schedule peaking
# at the paper's lr 0.1, paper momentum and weight decay; evaluated every epoch on a fixed
# 2000-image subset of the test set.
CIFAR_BUDGET=(--dataset cifar10 --data-dir "$DATA/cifar10-jpeg.tar.gz" --train-subset 5000 --test-subset 2000
  --epochs 2 --schedule onecycle --lr 0.1 --batch-size 128 --seed 0)
# Tiny ImageNet on the real sample: 2000 training images (10 a class), 1 epoch; the full 10k val.
TINY_BUDGET=(--dataset tinyimagenet --data-dir "$DATA/tiny-imagenet-200-sample.tar.gz" --train-subset 2000
  --epochs 1 --schedule onecycle --lr 0.1 --batch-size 128 --seed 0)

RUNS=(
  "cifar10 vgg16 dense" "cifar10 vgg16 PSD1_P16" "cifar10 resnet18 dense" "cifar10 resnet18 PSD1_P16"
  "cifar10 vgg16 PSD4_P8" "cifar10 vgg16 PSD2_P8" "cifar10 vgg16 PS1_P9"
  "cifar10 resnet18 PSD4_P8" "cifar10 resnet18 PSD2_P8" "cifar10 resnet18 PS1_P9"
  "cifar10 mobilenetv2 dense" "cifar10 shufflenet dense"
  "tinyimagenet vgg16 dense" "tinyimagenet vgg16 PSD1_P16"
  "tinyimagenet resnet18 dense" "tinyimagenet resnet18 PSD1_P16"
)

for spec in "${RUNS[@]}"; do
  read -r dataset model pattern <<<"$spec"
  name="$model-$pattern"
  dir="$OUT/$dataset/$name"
  [[ -n "${ONLY:-}" && "$dataset/$name" != *"$ONLY"* ]] && continue
  if [[ -f "$dir/summary.json" ]]; then echo "== $dataset/$name: done"; continue; fi
  if [[ "$dataset" == cifar10 ]]; then budget=("${CIFAR_BUDGET[@]}"); else budget=("${TINY_BUDGET[@]}"); fi
  echo "== $dataset/$name: $(date -u +%H:%M:%S)"
  if [[ -f "$dir/config.json" ]]; then
    "$PSCONV" train --out "$dir" --resume || exit $?
  else
    "$PSCONV" train --model "$model" --pattern "$pattern" "${budget[@]}" --out "$dir" || exit $?
  fi
done
