#!/usr/bin/env bash
# One prepared GPU session (one NVIDIA GPU and its host; ~6 minutes): every CUDA path of hetsim's
# torch backend once, and the part measurements the simulator's GPU and copy costs stand on.
#   env          nvidia-smi (GPU, PCIe link), lscpu, torch
#   calibrate    hetsim calibrate --device cuda --quick -> OUT/gpu.yaml (CPU + GPU microbenchmarks;
#                the full CPU set takes minutes)
#   gpu-only-*   hetsim validate --strategy gpu-only on OUT/gpu.yaml (dense and GQA models, batches)
#   accelerate, hetegen, flexgen
#                the offloading runners, plans searched on OUT/gpu-10g.yaml (the same profile with a
#                10 GiB GPU, so that the plans offload; the runs place weights as the plans say)
#   issue-probe  python -m validate.issue_probe: the host's pace issuing kernels, three regimes, two widths
#   split-parts  python -m validate.split_parts: one HeteGen split module's parts on CUDA
#   split-parts-opt-13b  the same for the session-19 OPT-13B plan's fc1 and fc2 in prefill
#   hetegen-opt-13b-s19-plan  session 19's OPT-13B HeteGen plan on today's runner (pinned activations)
#   step-profile python -m validate.step_profile: a decode step's kernels and the host's pace
#   packed-hop   python -m validate.packed_hop: FlexGen's relay of 4-bit packed data, part by part
#   ho-*         held-out validate runs (shapes no earlier H200 run measured)
#   pytest-cuda  the tests marked cuda
#   dram-read    the host's DRAM read rate per thread count (2 GiB arrays, beyond any L3)
#   kquant       only on a Sapphire/Emerald Rapids host with ggml's source at GGML_SRC (issue 18)
# Each step has its own time limit inside BUDGET seconds (default 420); a step that fails leaves
# its log and the next one runs. STEPS="a b" runs only the steps named.
# Usage: [STEPS="..."] bash validate/gpu_session.sh OUT_DIR [BUDGET]
set -uo pipefail
OUT=${1:?usage: validate/gpu_session.sh OUT_DIR [BUDGET_SECONDS]}
BUDGET=${2:-420}
H=${HETSIM:-hetsim}
PY=${PYTHON:-python}
mkdir -p "$OUT/validate"
start=$(date +%s)

step() {  # step NAME MAX_SECONDS COMMAND...: runs COMMAND within min(MAX, what is left), logs it
  local name=$1 max=$2 left
  shift 2
  if [[ -n ${STEPS:-} && " $STEPS " != *" $name "* ]]; then
    return
  fi
  left=$((BUDGET - ($(date +%s) - start) - 10))
  if ((left < 10)); then
    echo "== $name: skipped (session budget spent)"
    return
  fi
  ((max > left)) && max=$left
  echo "== $name (limit ${max}s, at $(($(date +%s) - start))s)"
  local t0=$(date +%s)
  timeout -k 5 "$max" bash -c '"$@"' _ "$@" >"$OUT/$name.log" 2>&1
  echo "== $name: exit $? in $(($(date +%s) - t0))s"
  tail -n 30 "$OUT/$name.log"
}

env_info() {
  nvidia-smi
  nvidia-smi -q | grep -E -A2 -i "product name|pcie generation|link width|max clocks|bar1"
  lscpu
  free -g
  $PY -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
}

small_gpu() {  # the calibrated profile with a 10 GiB GPU: the searches must offload
  $PY - "$OUT/gpu.yaml" "$OUT/gpu-10g.yaml" <<'EOF'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
gpu = doc["nodes"][0]["gpus"][0]
gpu["memory"] = {"value": "10 GiB", "source": "validate/gpu_session.sh: a budget that makes plans offload",
                 "grade": "assumed"}
doc["name"] = doc["name"] + "-10g"
open(sys.argv[2], "w").write(yaml.safe_dump(doc, sort_keys=False))
EOF
}

val() {  # val STEM ARGS...: one hetsim validate run into OUT/validate
  local stem=$1
  shift
  $H validate --out "$OUT/validate" --stem "$stem" "$@"
}

dram_read() {  # the host's DRAM read rate per thread count, arrays far beyond any L3 (2 GiB)
  $PY - <<'PYEOF'
import time, torch
x = torch.ones(2**29)  # 2 GiB of fp32, written
for t in (1, 2, 4, 8, 16):
    torch.set_num_threads(t)
    x.sum()
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        x.sum()
        runs.append(time.perf_counter() - t0)
    print(f"threads {t:2d}: {x.numel() * 4 / min(runs) / 1e9:7.2f} GB/s read (sum over 2 GiB, best of 5)")
PYEOF
}

split_parts_13b() {  # the session-19 OPT-13B HeteGen plan's prefill modules, part by part (its shapes)
  local m
  for m in fc1 fc2; do
    $PY -m validate.split_parts --report validate/results/h200/s19/hetegen-opt-13b.json \
      --hw validate/results/h200/s19/gpu-10g.yaml --module $m --phases prefill --out "$OUT/split_parts-opt-13b-$m.json"
  done
}

kquant() {
  grep -q -E "Xeon" /proc/cpuinfo || { echo "not a Xeon host: skipped"; return 0; }
  local model
  model=$(awk '/^model\t/ {print $3; exit}' /proc/cpuinfo)
  case $model in 143 | 207) ;; *) echo "CPU model $model is not Sapphire/Emerald Rapids: skipped" && return 0 ;; esac
  [ -f "${GGML_SRC:-}" ] || { echo "GGML_SRC (ggml source tarball) not given: skipped"; return 0; }
  rm -rf /tmp/ggml && mkdir -p /tmp/ggml && tar xzf "$GGML_SRC" -C /tmp/ggml
  cmake -S /tmp/ggml/ggml -B /tmp/ggml/build -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=ON -DCMAKE_BUILD_TYPE=Release \
    -DGGML_BUILD_EXAMPLES=OFF -DGGML_BUILD_TESTS=OFF >/dev/null && cmake --build /tmp/ggml/build -j "$(nproc)" \
    --target ggml-cpu >/dev/null || return 1
  GGML_LIB_DIR=/tmp/ggml/build/src $PY -m validate.kquant --out "$OUT/kquant.json" --threads 1,2,4,8,16 \
    --calls "${KQUANT_CALLS:-10}" --dram-mb "${KQUANT_DRAM_MB:-1024}"
}

export OUT H PY
export -f env_info small_gpu val kquant dram_read split_parts_13b
step env 30 env_info
step calibrate 120 $H calibrate --device cuda --quick --out "$OUT/gpu.yaml"
step small-gpu 20 small_gpu
step issue-probe 90 $PY -m validate.issue_probe --out "$OUT/issue_probe.json"
step gpu-only-llama2-7b-b1 60 val gpu-only-llama2-7b-b1 --hw "$OUT/gpu.yaml" --strategy gpu-only \
  --model llama2-7b --batch 1 --prompt-len 512 --gen-len 32 --repeats 3
step gpu-only-llama2-7b-b32 60 val gpu-only-llama2-7b-b32 --hw "$OUT/gpu.yaml" --strategy gpu-only \
  --model llama2-7b --batch 32 --prompt-len 512 --gen-len 32 --repeats 3
step gpu-only-llama3-8b-b8 60 val gpu-only-llama3-8b-b8 --hw "$OUT/gpu.yaml" --strategy gpu-only \
  --model llama3-8b --batch 8 --prompt-len 1024 --gen-len 32 --repeats 3
step accelerate 90 val accelerate-llama2-7b --hw "$OUT/gpu-10g.yaml" --strategy accelerate \
  --model llama2-7b --batch 1 --prompt-len 128 --gen-len 8 --repeats 2
step hetegen 90 val hetegen-opt-6.7b --hw "$OUT/gpu-10g.yaml" --strategy hetegen \
  --model opt-6.7b --batch 1 --prompt-len 128 --gen-len 8 --repeats 2
step flexgen 90 val flexgen-opt-6.7b --hw "$OUT/gpu-10g.yaml" --strategy flexgen \
  --model opt-6.7b --batch 16 --prompt-len 128 --gen-len 8 --repeats 2
step gpu-only-opt-6.7b-b4 60 val gpu-only-opt-6.7b-b4 --hw "$OUT/gpu.yaml" --strategy gpu-only \
  --model opt-6.7b --batch 4 --prompt-len 256 --gen-len 32 --repeats 3
step hetegen-llama2-7b 90 val hetegen-llama2-7b --hw "$OUT/gpu-10g.yaml" --strategy hetegen \
  --model llama2-7b --batch 1 --prompt-len 128 --gen-len 8 --repeats 3
step flexgen-opt-13b 90 val flexgen-opt-13b --hw "$OUT/gpu-10g.yaml" --strategy flexgen \
  --model opt-13b --batch 8 --prompt-len 128 --gen-len 8 --repeats 2
# Held out (session 19): shapes no earlier H200 run measured: other models, batches and prompt lengths.
step ho-gpu-only-llama2-13b-b2 60 val gpu-only-llama2-13b-b2 --hw "$OUT/gpu.yaml" --strategy gpu-only \
  --model llama2-13b --batch 2 --prompt-len 1024 --gen-len 32 --repeats 3
step ho-gpu-only-opt-13b-b16 60 val gpu-only-opt-13b-b16 --hw "$OUT/gpu.yaml" --strategy gpu-only \
  --model opt-13b --batch 16 --prompt-len 128 --gen-len 32 --repeats 3
step ho-gpu-only-llama3-8b-b1 60 val gpu-only-llama3-8b-b1 --hw "$OUT/gpu.yaml" --strategy gpu-only \
  --model llama3-8b --batch 1 --prompt-len 2048 --gen-len 32 --repeats 3
step ho-gpu-only-llama2-7b-b4 60 val gpu-only-llama2-7b-b4 --hw "$OUT/gpu.yaml" --strategy gpu-only \
  --model llama2-7b --batch 4 --prompt-len 2048 --gen-len 32 --repeats 3
step ho-accelerate-opt-6.7b 90 val accelerate-opt-6.7b --hw "$OUT/gpu-10g.yaml" --strategy accelerate \
  --model opt-6.7b --batch 1 --prompt-len 128 --gen-len 8 --repeats 2
step ho-hetegen-opt-13b 90 val hetegen-opt-13b --hw "$OUT/gpu-10g.yaml" --strategy hetegen \
  --model opt-13b --batch 1 --prompt-len 128 --gen-len 8 --repeats 2
# session 19's OPT-13B HeteGen plan again, as planned then (its report's plan), on the runner that stages
# activations in pinned memory and starts the weights' copy with its module (session 20): TTFT 452.3 ms then
step hetegen-opt-13b-s19-plan 90 val hetegen-opt-13b-s19-plan --hw validate/results/h200/s19/gpu-10g.yaml \
  --plan validate/results/h200/s19/hetegen-opt-13b.plan.json --repeats 2
step ho-flexgen-opt-6.7b-b32 90 val flexgen-opt-6.7b-b32 --hw "$OUT/gpu-10g.yaml" --strategy flexgen \
  --model opt-6.7b --batch 32 --prompt-len 256 --gen-len 8 --repeats 2
step split-parts 60 $PY -m validate.split_parts --out "$OUT/split_parts.json"
# HeteGen's CPU share at a prompt's 128 rows, as the session-19 OPT-13B run split it (TTFT -44 %: its
# fp16 curve was fitted on m <= 32); calibrate above now times 128 rows on the same host.
step split-parts-opt-13b 120 split_parts_13b
step step-profile 90 $PY -m validate.step_profile --out "$OUT/step_profile.json" --model llama2-7b --batch 1,32
step packed-hop 60 $PY -m validate.packed_hop --out "$OUT/packed_hop.json" --mib 128 --threads 1,4,16
step pytest-cuda 60 $PY -m pytest -p no:cacheprovider -m cuda tests/test_validate.py tests/test_split_parts.py \
  tests/test_hetegen_runner.py
step dram-read 40 dram_read
step kquant 150 kquant
echo "== done in $(($(date +%s) - start))s"
