#!/usr/bin/env bash
# Where the reference model's GPU time goes, and what the fast options buy, in one lease:
#   1. bench.sections=[profile]: each stage of a training step and an inference batch timed
#      alone (forward, backward), the ViT's blocks, kernel classes, FLOPs and MFU;
#   2. compare=gpu_speed: train and infer images/s and MFU, baseline against each variant.
# Usage: scripts/profile_gpu.sh OUTPUT_DIR; writes <step>.json and profile_gpu.log there.
# PYTHON picks the interpreter; COMMON replaces the shared overrides; STEPS picks steps.
set -u
out=$(mkdir -p "${1:?usage: scripts/profile_gpu.sh OUTPUT_DIR}" && cd "$1" && pwd)
work=$(mktemp -d)
py=${PYTHON:-python}
read -r -a common <<< "${COMMON:-trainer=gpu data.image_size=512 data.batch_size=8}"
log="$out/profile_gpu.log"
: > "$log"

bench() {  # bench NAME SECONDS OVERRIDES...: one faceparse.bench run under a time limit
    local name=$1 limit=$2 start=$SECONDS status
    shift 2
    [[ " ${STEPS:-$name} " == *" $name "* ]] || return 0
    echo "== $name (limit ${limit}s)" | tee -a "$log"
    timeout "$limit" "$py" -m faceparse.bench "${common[@]}" "$@" "hydra.run.dir=$work/$name" \
        > "$work/$name.out" 2>&1
    status=$?
    cat "$work/$name.out" >> "$log"
    cp "$work/$name/bench.json" "$out/$name.json" 2>/dev/null
    [ "$status" -eq 0 ] || tail -n 30 "$work/$name.out"
    echo "== $name: exit $status after $((SECONDS - start))s" | tee -a "$log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$py" -c "import torch; print('torch', torch.__version__)"; } | tee -a "$log"
bench profile 150 "bench.sections=[profile]" bench.steps=5
bench speed 300 "bench.sections=[train,infer]" bench.warmup=3 bench.steps=10 compare=gpu_speed \
    ${SPEED_EXTRA:-}
rm -rf "$work"
