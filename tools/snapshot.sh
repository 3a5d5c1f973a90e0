#!/usr/bin/env bash
# Behaviour snapshot: the outputs of the main commands on every shipped rig, one file each, so a
# refactor can show "every number the same" with `diff -r BEFORE AFTER`.
#
#   bash tools/snapshot.sh OUT_DIR [--paper-figs]     # --paper-figs adds paper_figs/all.py (~4 min)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: tools/snapshot.sh OUT_DIR [--paper-figs]}
mkdir -p "$OUT"
H=${HETSIM:-.venv/bin/hetsim}
PY=${PYTHON:-.venv/bin/python}

run() {  # run NAME ARGS... : stdout+stderr and exit code into OUT/NAME.txt
  local name=$1; shift
  { "$H" "$@" 2>&1; echo "exit=$?"; } > "$OUT/$name.txt" || true
}

declare -A MODEL=(
  [cputp-4x8575c]=qwen-72b [flexgen-t4]=opt-30b [hetegen-a10]=opt-13b [hexgen-full-budget]=llama2-70b
  [hexgen-half-budget]=llama2-70b [hexgen-homogeneous]=llama2-70b [mixed-lab]=llama2-70b
)
for rig in "${!MODEL[@]}"; do
  m=${MODEL[$rig]}
  run "compare-$rig-$m" compare --model "$m" --hw "$rig" --format json
  run "compare-$rig-$m-thr" compare --model "$m" --hw "$rig" --objective throughput --batch 8 \
      --prompt-len 256 --gen-len 16 --format csv
  run "compare-$rig-$m-nosearch" compare --model "$m" --hw "$rig" --no-search --format json
  run "compare-$rig-llama2-7b" compare --model llama2-7b --hw "$rig" --format json
done
run compare-mixed-lab-budget compare --model llama2-13b --hw mixed-lab --gpu-mem-budget 6GB --format json
run plan-mixed-lab plan --model llama2-70b --hw mixed-lab --strategy all --out "$OUT/plan.json"
run simulate-mixed-lab simulate --plan "$OUT/plan.json" --format json
for s in gpu-only accelerate deepspeed flexgen hetegen hexgen cpu-tp; do
  run "plan-$s" plan --model opt-13b --hw mixed-lab --strategy "$s" --out "$OUT/plan-$s.json"
done
run serve-full serve --model llama2-70b --hw hexgen-full-budget --rate 1 --num-requests 60 --format json
run serve-homog serve --model llama2-70b --hw hexgen-homogeneous --rate 0.5 --num-requests 40 \
    --slo-scale 5 --format json
run serve-maxrate serve --model llama2-7b --hw hexgen-half-budget --rate 1 --num-requests 40 --max-rate \
    --slo-scale 5 --dispatch round-robin --format json
run serve-a100 serve --model llama2-7b --hw mixed-lab --rate 2 --num-requests 50 --max-batch 4 --format json
run hw-show hw show mixed-lab --format json
run model-show model show llama2-70b --format json
run err-model compare --model nope --hw mixed-lab
if [ "${2:-}" = "--paper-figs" ]; then
  "$PY" paper_figs/all.py "$OUT/paper_figs" > /dev/null 2>&1 || echo "paper_figs failed" > "$OUT/paper_figs.failed"
  rm -f "$OUT"/paper_figs/*.log "$OUT"/paper_figs/*.png   # logs carry timings; PNGs carry dates
fi
