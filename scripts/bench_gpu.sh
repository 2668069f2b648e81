#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one go, most important first, each step under its own
# time limit so a slow step cannot cost the others:
#   1. tests/test_cuda.py (the fast path really acts on a GPU);
#   2. the reference model at 512 px, batch 8: loader scaling, train, infer, and each
#      fast-path option switched off on its own (compare=fast_path, torch.compile aside);
#   3. loader with prefetch_factor 4;  4. batch 32 (utilisation at a larger batch);
#   5. torch.compile for train and infer (minutes of compilation first).
# Usage: scripts/bench_gpu.sh [OUTPUT_DIR]; writes bench_gpu.json (every step's figures)
# and bench_gpu.log there. PYTHON picks the interpreter; COMMON replaces the shared overrides;
# STEPS (e.g. "fast_path compiled") runs only the steps it names.
set -u
out=$(mkdir -p "${1:-outputs/bench_gpu}" && cd "${1:-outputs/bench_gpu}" && pwd)
work=$(mktemp -d)
py=${PYTHON:-python}
read -r -a common <<< "${COMMON:-trainer=gpu data.image_size=512 data.batch_size=8 bench.warmup=3 bench.steps=10}"
log="$out/bench_gpu.log"
: > "$log"

step() {  # step NAME SECONDS COMMAND...: run, keep its log, show its last lines
    local name=$1 limit=$2
    shift 2
    [[ " ${STEPS:-$name} " == *" $name "* ]] || return 0  # STEPS="a b": only those steps
    echo "== $name (limit ${limit}s): $*" | tee -a "$log"
    local start=$SECONDS status
    timeout "$limit" "$@" > "$work/$name.out" 2>&1
    status=$?
    cat "$work/$name.out" >> "$log"
    [ "$status" -eq 0 ] || tail -n 30 "$work/$name.out"
    echo "== $name: exit $status after $((SECONDS - start))s" | tee -a "$log"
}

bench() {  # bench NAME SECONDS OVERRIDES...: faceparse.bench, its bench.json kept per step
    local name=$1 limit=$2
    shift 2
    step "$name" "$limit" "$py" -m faceparse.bench "${common[@]}" "$@" "hydra.run.dir=$work/$name"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
    --format=csv 2>&1; "$py" -c "import torch, timm, lightning; print('torch', \
torch.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__)"; } \
    | tee -a "$log"

step cuda_tests 150 "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py
bench fast_path 330 compare=fast_path "~bench.compare.compiled" \
    "bench.data.workers=[0,4,8,16]" bench.data.batches=24 bench.data.write_faces=192
bench prefetch 90 "bench.sections=[data]" +data.prefetch_factor=4 \
    "bench.data.workers=[4,8,16]" bench.data.batches=24 bench.data.write_faces=192
bench batch32 120 "bench.sections=[train,infer]" data.batch_size=32 bench.steps=5
bench compiled 240 "bench.sections=[train,infer]" fast_path.compile=true

"$py" - "$work" "$out/bench_gpu.json" <<'EOF'
import json, sys
from pathlib import Path
from faceparse.bench.report import format_comparison, format_table
work, target = Path(sys.argv[1]), Path(sys.argv[2])
found = {p.parent.name: json.loads(p.read_text()) for p in sorted(work.glob("*/bench.json"))}
target.write_text(json.dumps(found, indent=2) + "\n")
for name, results in found.items():
    print(f"\n## {name}")
    print(format_comparison(results) if "compare" in results else format_table(results))
print(f"\n{len(found)} bench results in {target}")
EOF
rm -rf "$work"
