#!/usr/bin/env bash
# The reference validation protocol on a CPU machine (about 6 minutes on 2 cores):
#   1. hetsim calibrate                       -> OUT/profile.yaml (microbenchmarks only)
#   2. validate two training widths (1536, 3072; 2 layers; 1 and 2 ranks)
#   3. hetsim calibrate --fit on those runs   -> OUT/profile-fitted.yaml
#   4. validate three held-out llama-style widths (1024, 2048 = TinyLlama, 4096 = Llama-2-7B)
#      against the fitted profile, and print them against the microbenchmark-only profile too.
# Usage: bash validate/reference.sh OUT_DIR   (keep the machine otherwise idle while it runs)
set -euo pipefail
OUT=${1:?usage: validate/reference.sh OUT_DIR}
H=${HETSIM:-hetsim}
PY=${PYTHON:-python}
mkdir -p "$OUT"
$H calibrate --threads 1 --ranks 2 --out "$OUT/profile.yaml"
for h in 1536 3072; do
  $H validate --hw "$OUT/profile.yaml" --model llama2-7b --hidden $h --layers 2 --ranks 1,2 \
    --out "$OUT" --stem "train-h$h"
done
$H calibrate --fit --profile "$OUT/profile.yaml" --out "$OUT/profile-fitted.yaml" \
  "$OUT/train-h1536.json" "$OUT/train-h3072.json"
for m in validate/shapes/llama-h1024.json validate/shapes/tinyllama-1.1b.json llama2-7b; do
  $H validate --hw "$OUT/profile-fitted.yaml" --model "$m" --layers 2 --ranks 1,2 \
    --out "$OUT" --stem "cpu-$(basename "$m" .json)"
done
echo "== held-out shapes on the microbenchmark-only profile"
$PY -m validate.summary "$OUT/profile.yaml" "$OUT"/cpu-*.json
echo "== held-out shapes after --fit on the training widths"
$PY -m validate.summary "$OUT/profile-fitted.yaml" "$OUT"/cpu-*.json
