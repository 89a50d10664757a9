#!/usr/bin/env bash
# The 2-GPU figures of benchmarks/README.md ("Past one GPU") on a 2-GPU machine:
#   bash benchmarks/multi_gpu.sh OUT_DIR [scoring|scoring-0.95b|scoring-7b|sharded|training|all]
# NVLink multicast stays off (see the device notes).
set -u
out=${1:-/tmp/multi_gpu}
part=${2:-all}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True HF_HUB_OFFLINE=1
run1() { python -m benchmarks.multi_gpu "$@"; }
run2() { torchrun --nproc_per_node=2 --master_port=29700 -m benchmarks.multi_gpu "$@" 2>&1 | grep -v '^W[0-9]'; }
nvidia-smi -L
if [[ $part == scoring || $part == scoring-0.95b || $part == all ]]; then
  for dtype in float64 float32; do   # 0.95B, replicated: the same batches on 1 and 2 GPUs, masks compared
    run1 --shape 0.95b --sum-dtype $dtype --analysis masks --save /tmp/m095-$dtype-1.pt
    run2 --shape 0.95b --sum-dtype $dtype --analysis masks --save /tmp/m095-$dtype-2.pt
    run1 --compare /tmp/m095-$dtype-1.pt /tmp/m095-$dtype-2.pt
  done
fi
if [[ $part == scoring || $part == scoring-7b || $part == all ]]; then
  run1 --shape 7b --sum-dtype float32 --analysis masks --save /tmp/m7-1.pt   # float64 sums of 7B do not fit one GPU
  run2 --shape 7b --sum-dtype float32 --analysis masks --save /tmp/m7-2.pt
  run1 --compare /tmp/m7-1.pt /tmp/m7-2.pt
fi
if [[ $part == sharded || $part == all ]]; then
  run2 --shape 13b --shard --sum-dtype float32      # one 80 GB GPU cannot hold its weights + accumulators
fi
if [[ $part == training || $part == all ]]; then   # sparse FT and LoRA at matched counts, data-parallel
  python -m benchmarks.make_llm_folder /tmp/llm --shape 0.95b > /dev/null
  common="--model /tmp/llm/model --dataset jsonl:/tmp/llm/gsm8k.jsonl --metrics grad --dtype bfloat16 --batches 4
          --batch-size 4 --max-length 512 --train --steps 30 --baselines lora --train-batch-size 8 --no-figures --quiet"
  python -m salience_bench.compare $common --out /tmp/train1 > /dev/null
  torchrun --nproc_per_node=2 --master_port=29701 -m salience_bench.compare $common --out /tmp/train2 2>&1 | grep -v '^W[0-9]' > /dev/null
  for n in 1 2; do
    python -c "import pandas as pd; d = pd.read_csv('/tmp/train$n/downstream.csv');
print('$n GPU(s):', d[['method', 'metric', 'trainable_params', 'seconds_per_step', 'peak_memory_bytes']].to_dict('records'))"
    cp /tmp/train$n/downstream.csv "$out/train_${n}gpu_downstream.csv"
  done
fi
