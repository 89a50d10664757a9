"""The real pretrained GGUF decoders: load, scoring and evaluation times against same-run baselines, and the
untrained model's own GSM8K exact match (the zero point of every fine-tuned number).

``python -m benchmarks.real_llms --model smollm2-135m-instruct --device cuda --json out.json`` measures, in one
process:

- **load**: transformers reading the GGUF file itself (``from_pretrained(folder, gguf_file=…)``, the baseline);
  the first salience_bench load, which converts it into an empty cache; then the cached load (median of 3);
- **scoring**: ``score`` with grad, snip, fisher, wanda and magnitude over the CLI's default scoring batches of
  GSM8K (8 × 32 prompts, ≤ 512 tokens), against a bare forward+backward over the same batches under the same
  deterministic kernels (weight gradients dropped as they arrive);
- **base**: the untrained model as the ``base`` method: perplexity of the reference answers and greedy exact
  match with its 95% Wilson interval on every GSM8K test prompt (``--eval-examples``, default all 1,319).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import salience_bench as sb
from salience_bench import gguf_models
from salience_bench.runtime import quiet_transformers

METRICS = ("grad", "snip", "fisher", "wanda", "magnitude")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - start


def gguf_direct_load(model: str, scratch: Path) -> float:
    """Seconds for transformers to read the GGUF file itself, dequantizing every tensor (the baseline)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_models.PACKAGED_MODELS[model].gguf_file(scratch) if model in gguf_models.PACKAGED_MODELS else Path(model)
    start = time.perf_counter()
    AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return time.perf_counter() - start


def bare_forward_backward(model, batches, params, device) -> None:
    """Forward+backward over the batches in the scoring pass's mode, each weight gradient dropped on arrival."""
    from salience_bench.model_state import ScoringMode

    handles = [p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None)) for p in params.values()]
    try:
        with ScoringMode(model, params, deterministic=True):
            for batch in batches:
                model(**{k: v.to(device) for k, v in batch.items()}).loss.backward()
    finally:
        for h in handles:
            h.remove()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a packaged model's name or a .gguf file")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--eval-examples", default="all", help="GSM8K test prompts for the base exact match, or all")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: load, scoring, base")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    quiet_transformers()
    device = sb.resolve_device(args.device)
    skip = set(filter(None, args.skip.split(",")))
    out: dict = {"model": args.model, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
                 "torch": torch.__version__, "threads": torch.get_num_threads()}
    import transformers

    out["transformers"] = transformers.__version__

    if "load" not in skip:
        with tempfile.TemporaryDirectory() as scratch:
            out["gguf_direct_load_s"] = gguf_direct_load(args.model, Path(scratch))
            os.environ["SALIENCE_BENCH_CACHE"] = str(Path(scratch) / "cache")  # an empty cache: the first load converts
            _, out["first_load_s"] = timed(lambda: sb.load_model_and_tokenizer(args.model, task="causal-lm"), device)
            out["cached_load_s"] = statistics.median(
                timed(lambda: sb.load_model_and_tokenizer(args.model, task="causal-lm"), device)[1] for _ in range(3))
            os.environ.pop("SALIENCE_BENCH_CACHE")
        print(f"load: GGUF read by transformers {out['gguf_direct_load_s']:.1f} s; first salience_bench load "
              f"(conversion) {out['first_load_s']:.1f} s; cached {out['cached_load_s']:.2f} s", flush=True)

    model, tokenizer = sb.load_model_and_tokenizer(args.model, task="causal-lm")
    model.to(device)
    if "scoring" not in skip:
        batches = sb.make_batches(sb.load_dataset("gsm8k", "train"), tokenizer, batch_size=args.batch_size,
                                  num_batches=args.batches, max_length=args.max_length, seed=0)
        params = sb.eligible_parameters(model)
        out["scoring_tokens"] = int(sum(int(b["attention_mask"].sum()) for b in batches))
        bare_forward_backward(model, batches[:1], params, device)  # warm-up (kernels, allocator)
        _, out["forward_backward_s"] = timed(lambda: bare_forward_backward(model, batches, params, device), device)
        scores, out["scoring_s"] = timed(lambda: sb.score(model, [{k: v.to(device) for k, v in b.items()} for b in batches],
                                                          list(METRICS), params=params), device)
        _, out["scores_read_s"] = timed(lambda: [s.sum() for m in METRICS for s in scores[m].values()], device)
        out["scoring_vs_forward_backward"] = out["scoring_s"] / out["forward_backward_s"]
        print(f"scoring {', '.join(METRICS)} over {args.batches} × {args.batch_size} ({out['scoring_tokens']:,} tokens): "
              f"{out['scoring_s']:.2f} s = {out['scoring_vs_forward_backward']:.2f}× a bare forward+backward "
              f"({out['forward_backward_s']:.2f} s); reading every score {out['scores_read_s']:.2f} s", flush=True)
        del scores

    if "base" not in skip:
        from salience_bench.training.loop import RunInputs, TrainConfig, run_one

        examples = None if args.eval_examples == "all" else int(args.eval_examples)
        config = TrainConfig(max_length=args.max_length, eval_examples=examples)
        inputs = RunInputs(lambda seed: (model, tokenizer), sb.load_dataset("gsm8k", "train"),
                           sb.load_dataset("gsm8k", "test"), device)
        result, out["base_eval_s"] = timed(lambda: run_one("base", None, 0, config, inputs, progress=True), device)
        row = result.row
        out.update({k: row[k] for k in ("eval_accuracy", "exact_match_n", "exact_match_low", "exact_match_high",
                                         "eval_loss", "eval_perplexity")})
        print(f"base: exact match {row['eval_accuracy']:.4f} [{row['exact_match_low']:.4f}, {row['exact_match_high']:.4f}] "
              f"on {row['exact_match_n']} GSM8K test prompts; answer perplexity {row['eval_perplexity']:.3f}; "
              f"{out['base_eval_s']:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
