#!/usr/bin/env bash
# Where the reference model's GPU time goes, and what the fast options buy, in one lease:
#   rewrites: inference images/s and MFU with the inference-only rewrites (folded BatchNorm,
#      bf16 frozen ViT) against each switched off, the fused RoPE against timm's, predict
#      overlapping batches against waiting after each, cuDNN's fused convolution + ReLU
#      (opt-in) against separate ReLUs, and their logits against fp32;
#   train_rewrites: training images/s, MFU and memory with the frozen ViT stored in bf16
#      against it kept in fp32, the fused RoPE against timm's, and the VGG's BatchNorm
#      frozen (cnn.freeze_norm, opt-in) against live;
#   conv_relu: inference with cuDNN's fused convolution + ReLU against separate ReLUs,
#      eager and compiled per block with CUDA graphs (the fastest inference measured);
#   predict: a folder of 512 px JPEGs end to end against the model alone (issue 16);
#   profile: each stage of a training step and an inference batch timed alone (forward,
#      backward), the ViT's blocks, kernel classes, FLOPs and MFU;
#   speed: compare=gpu_speed (torch.compile, batch 16): train and infer images/s and MFU;
#   graphs: compare=gpu_graphs: inference under torch.compile's modes (CUDA graphs,
#      max-autotune) against eager;
#   regional: compare=gpu_regional: training and inference with each ViT block compiled on
#      its own (compile_scope=blocks) and with whole parts, with and without CUDA graphs,
#      each variant's compile time beside its speed;
#   profile_compiled: the profile step with torch.compile (each ViT block on its own): the
#      whole steps compiled, their kernel classes and top kernels: what is left after fusion
#      (PROFILE_STAGES=true also compiles and times each stage alone: over 282 s on an H100);
#   cpu_policy: the host CPU's inference (ViT-B/16, 256 px, batch 2) with its chosen
#      precision and memory format against each taken away and the original's way.
# Usage: scripts/profile_gpu.sh OUTPUT_DIR; writes <step>.json and profile_gpu.log there.
# PYTHON picks the interpreter; COMMON replaces the shared overrides; STEPS picks steps;
# BUDGET (seconds) ends the whole script in time: each step's limit is cut to what is left,
# and a step with under 30 s left is skipped, so a lease's call never runs past its limit.
set -u
out=$(mkdir -p "${1:?usage: scripts/profile_gpu.sh OUTPUT_DIR}" && cd "$1" && pwd)
work=$(mktemp -d)
py=${PYTHON:-python}
read -r -a common <<< "${COMMON:-trainer=gpu data.image_size=512 data.batch_size=8}"
log="$out/profile_gpu.log"
deadline=$((SECONDS + ${BUDGET:-86400}))
: > "$log"

bench() {  # bench NAME SECONDS OVERRIDES...: one faceparse.bench run under a time limit
    local name=$1 limit=$2 start=$SECONDS status
    local -a base=("${common[@]}")
    shift 2
    [[ " ${STEPS:-$name} " == *" $name "* ]] || return 0
    [[ $name == cpu* ]] && base=()  # a CPU step names its own settings
    (( deadline - SECONDS < limit )) && limit=$((deadline - SECONDS))
    if (( limit < 30 )); then
        echo "== $name: skipped, ${limit}s of BUDGET left" | tee -a "$log"
        return 0
    fi
    echo "== $name (limit ${limit}s)" | tee -a "$log"
    timeout "$limit" "$py" -m faceparse.bench "${base[@]}" "$@" "hydra.run.dir=$work/$name" \
        > "$work/$name.out" 2>&1
    status=$?
    cat "$work/$name.out" >> "$log"
    cp "$work/$name/bench.json" "$out/$name.json" 2>/dev/null
    [ "$status" -eq 0 ] || tail -n 30 "$work/$name.out"
    echo "== $name: exit $status after $((SECONDS - start))s" | tee -a "$log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$py" -c "import torch; print('torch', torch.__version__)"; } | tee -a "$log"
bench rewrites 270 "bench.sections=[infer]" bench.warmup=3 bench.steps=10 \
    compare=inference_rewrites
bench train_rewrites 240 "bench.sections=[train]" bench.warmup=3 bench.steps=10 \
    compare=training_rewrites
bench conv_relu 240 "bench.sections=[infer]" bench.warmup=3 bench.steps=10 compare=gpu_conv_relu
bench predict 120 "bench.sections=[predict]" bench.predict.images=128 bench.predict.workers=8
bench cpu_policy 150 trainer=cpu bench.device=cpu vit.size=base data.image_size=256 \
    data.batch_size=2 "bench.sections=[infer]" bench.warmup=2 bench.steps=10 compare=cpu_policy
bench profile 150 "bench.sections=[profile]" bench.steps=5
bench profile_compiled 540 "bench.sections=[profile]" bench.steps=5 fast_path.compile=true \
    fast_path.compile_scope=blocks "bench.profile.stages=${PROFILE_STAGES:-false}"
bench speed 300 "bench.sections=[train,infer]" bench.warmup=3 bench.steps=10 compare=gpu_speed \
    ${SPEED_EXTRA:-}
bench regional 540 "bench.sections=[train,infer]" bench.warmup=3 bench.steps=10 \
    compare=gpu_regional
bench graphs 420 "bench.sections=[infer]" bench.warmup=3 bench.steps=10 compare=gpu_graphs
rm -rf "$work"
