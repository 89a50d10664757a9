"""Peak memory and step time of sparse fine-tuning vs full FT, LoRA and the naive dense-masked route.

    python -m benchmarks.gpu_memory            # on a GPU: ~0.95B Llama-style model, bf16, batch 4 x 512

A random-initialised decoder (Llama-style config from transformers; no weights needed) and
synthetic token batches. Each method gets a fresh model; peak memory is
``torch.cuda.max_memory_allocated`` over the timed steps (weights included, PyTorch's
allocator only), reset after the model and the mask are built. Methods:

- full: AdamW on every weight;
- lora: peft LoRA r=8 on every linear layer of the blocks;
- dense-masked: dense gradients multiplied by a mask, AdamW on the masked tensors (what a naive
  implementation does; same trainable count as LoRA);
- sparse: salience_bench's SparseDeltaEngine on the same count, mask from ``grad`` over one batch.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

import salience_bench as sb
from salience_bench.training import (
    SparseDeltaEngine,
    freeze_all_but,
    lora_parameters_per_rank,
    optimizer_state_bytes,
    wrap_lora,
)

from .common import dense_masked_gradients_


def build_model(args, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.heads, vocab_size=args.vocab,
        max_position_embeddings=max(args.seq, 1024), attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    return model


def batch_for(args, device, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device)
    return {"input_ids": ids, "labels": ids}


def run_method(method: str, args, device) -> dict:
    model = build_model(args, device)
    params = sb.eligible_parameters(model)
    k = args.lora_rank * lora_parameters_per_rank(params)
    engine = masks = None
    if method == "full":
        opt_params = list(model.parameters())
    elif method == "lora":
        freeze_all_but(model, {})
        model = wrap_lora(model, params, rank=args.lora_rank, head_patterns=())
        opt_params = [p for p in model.parameters() if p.requires_grad]
    else:
        scores = sb.score(model, [batch_for(args, device, 999)], ["grad"], params=params)["grad"]
        masks = sb.make_mask(scores, k=k)
        del scores
        if method == "sparse":
            freeze_all_but(model, {})
            engine = SparseDeltaEngine(model, masks)
            opt_params = engine.parameters()
        else:  # dense-masked
            freeze_all_but(model, params)
            opt_params = list(params.values())
    trainable = sum(p.numel() for p in opt_params) if method != "dense-masked" else sum(int(m.sum()) for m in masks.values())
    gc.collect()
    torch.cuda.empty_cache()
    optimizer = torch.optim.AdamW(opt_params, lr=1e-5)
    model.train()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.warmup + args.steps):
        batch = batch_for(args, device, step)
        torch.cuda.synchronize()
        t = time.perf_counter()
        model(**batch).loss.backward()
        if method == "dense-masked":
            dense_masked_gradients_(model, masks)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if engine is not None:
            engine.sync_weights()
        torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
    result = dict(method=method, trainable=trainable, peak_bytes=torch.cuda.max_memory_allocated(),
                  seconds_per_step=statistics.median(times), optimizer_state_bytes=optimizer_state_bytes(optimizer))
    del model, optimizer, engine, masks, opt_params
    gc.collect()
    torch.cuda.empty_cache()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--methods", default="full,lora,dense-masked,sparse")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu_memory needs a CUDA device")
    device = torch.device("cuda")
    results = [run_method(m, args, device) for m in args.methods.split(",")]
    by = {r["method"]: r for r in results}
    n_params = sum(p.numel() for p in build_model(args, "meta").parameters())
    print(f"{torch.cuda.get_device_name()} torch={torch.__version__} model={n_params / 1e9:.2f}B params bf16 "
          f"hidden={args.hidden} layers={args.layers} batch={args.batch}x{args.seq} median of {args.steps} steps")
    print("| method | trainable | optimizer state | peak memory | s/step | memory / LoRA | memory / full | time / full |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        mem_lora = r["peak_bytes"] / by["lora"]["peak_bytes"] if "lora" in by else float("nan")
        mem_full = r["peak_bytes"] / by["full"]["peak_bytes"] if "full" in by else float("nan")
        t_full = r["seconds_per_step"] / by["full"]["seconds_per_step"] if "full" in by else float("nan")
        print(f"| {r['method']} | {r['trainable'] / 1e6:.2f}M | {r['optimizer_state_bytes'] / 2**20:.1f} MiB | "
              f"{r['peak_bytes'] / 1e9:.2f} GB | {r['seconds_per_step']:.4f} | {mem_lora:.3f} | {mem_full:.3f} | {t_full:.3f} |")


if __name__ == "__main__":
    main()
