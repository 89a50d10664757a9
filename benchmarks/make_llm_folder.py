"""A random-initialised causal LM of a real shape saved as a model folder, with an offline byte-level
tokenizer and a GSM8K JSON-lines file, for running the CLI end to end on a GPU machine where nothing
can be downloaded: ``python -m benchmarks.make_llm_folder OUT_DIR [--shape 0.95b]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import salience_bench as sb
from salience_bench.synthetic import byte_level_tokenizer, save_random_causal_lm

from .llm_scale import SHAPES


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.95b")
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args(argv)
    data = sb.load_dataset("gsm8k", "train")
    tokenizer = byte_level_tokenizer(data.texts, vocab_size=args.vocab)
    shape = {k: v for k, v in SHAPES[args.shape].items() if k not in ("batches", "batch_size")}
    save_random_causal_lm(args.out / "model", "llama", tokenizer, dtype=torch.bfloat16, max_position_embeddings=1024,
                          **shape)
    with open(args.out / "gsm8k.jsonl", "w") as f:
        for prompt, completion in zip(data.prompts, data.completions):
            f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    print(f"wrote {args.out / 'model'} (vocab {len(tokenizer)}) and {args.out / 'gsm8k.jsonl'}")


if __name__ == "__main__":
    main()
