#!/usr/bin/env bash
# The 2-GPU figures of benchmarks/README.md ("Past one GPU"), in one call on a 2-GPU machine:
#   bash benchmarks/multi_gpu.sh OUT_DIR
# NVLink multicast stays off (see the device notes).
set -u
out=${1:-/tmp/multi_gpu}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True HF_HUB_OFFLINE=1
run1() { python -m benchmarks.multi_gpu "$@"; }
run2() { torchrun --nproc_per_node=2 --master_port=29700 -m benchmarks.multi_gpu "$@" 2>&1 | grep -v '^W[0-9]'; }
nvidia-smi -L
for dtype in float64 float32; do   # 0.95B, replicated: the same 8 batches on 1 and 2 GPUs, masks compared
  run1 --shape 0.95b --sum-dtype $dtype --analysis masks --save /tmp/m095-$dtype-1.pt
  run2 --shape 0.95b --sum-dtype $dtype --analysis masks --save /tmp/m095-$dtype-2.pt
  run1 --compare /tmp/m095-$dtype-1.pt /tmp/m095-$dtype-2.pt
done
run2 --shape 13b --shard --sum-dtype float32      # sharded: one 80 GB GPU cannot hold its weights + accumulators
run1 --shape 7b --sum-dtype float32 --analysis masks --save /tmp/m7-1.pt
run2 --shape 7b --sum-dtype float32 --analysis masks --save /tmp/m7-2.pt
run1 --compare /tmp/m7-1.pt /tmp/m7-2.pt
