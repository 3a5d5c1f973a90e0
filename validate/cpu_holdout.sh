#!/usr/bin/env bash
# Held-out CPU decoders (about 5 minutes on 2 cores; keep the machine otherwise idle):
#   1. hetsim calibrate --threads 1 --ranks 1 -> OUT/profile.yaml (microbenchmarks only: no decoder fits)
#   2. the held-out decoders of validate/cpu_holdout.py timed in plain torch, 1 thread -> OUT/measured.json
#   3. the table: each decoder predicted on BEFORE (default: the profile the previous calibrate wrote on
#      this machine, validate/results/cpu-holdout/before.yaml) and on OUT/profile.yaml
# Usage: bash validate/cpu_holdout.sh OUT_DIR [BEFORE.yaml]
set -euo pipefail
OUT=${1:?usage: validate/cpu_holdout.sh OUT_DIR [BEFORE.yaml]}
BEFORE=${2:-validate/results/cpu-holdout/before.yaml}
H=${HETSIM:-hetsim}
PY=${PYTHON:-python}
mkdir -p "$OUT"
$H calibrate --threads 1 --ranks 1 --out "$OUT/profile.yaml"
$PY -m validate.cpu_holdout measure "$OUT/measured.json" --threads 1
$PY -m validate.cpu_holdout table "$OUT/measured.json" "$BEFORE" "$OUT/profile.yaml" | tee "$OUT/table.md"
