"""``python -m salience_bench.compare``: score a model with several metrics and compare their masks.

Runs offline out of the box (bundled all-MiniLM-L6-v2 and SST-2). argparse → :class:`CompareConfig`
→ the library pipeline (``run_comparison``, ``run_downstream``, ``write_comparison``) → a console
summary; it uses the public API only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import salience_bench as sb
from salience_bench.masks import get_scope, get_structure
from salience_bench.cli_options import DEFAULT_DENSITY, build_parser, method_option_values, scorer_option_values

def config_from_args(args: argparse.Namespace) -> sb.CompareConfig:
    """The pipeline's configuration; every check of the mask options happens in MaskSpec."""
    sized = (args.density is not None or args.k is not None or get_scope(args.scope).sizes_itself
             or get_structure(args.structure).sizes_itself)  # else the default density
    mask = sb.MaskSpec(density=args.density if sized else DEFAULT_DENSITY, k=args.k, scope=args.scope,
                       structure=args.structure, block_size=args.block_size, nm=args.nm, rank=args.rank)
    training = sb.TrainingPlan(
        baselines=tuple(args.baselines), seeds=tuple(args.seeds) if args.seeds else None, steps=args.steps,
        lr=args.lr, full_lr=args.full_lr, batch_size=args.train_batch_size, weight_decay=args.weight_decay,
        eval_every=args.eval_every or 0, mask_update_every=args.mask_update_every,
        group_by_length=not args.no_group_by_length, eval_examples=args.eval_examples, lr_schedule=args.lr_schedule,
        warmup_ratio=args.warmup_ratio, method_options=method_option_values(args), head_lr=args.head_lr,
    ) if args.train else None
    return sb.CompareConfig(
        metrics=args.metrics, model=args.model, dataset=args.dataset, include=args.include,
        exclude=args.exclude, mask=mask, batches=args.batches, batch_size=args.batch_size, max_length=args.max_length,
        seed=args.seed, device=args.device, dtype=args.dtype, sum_dtype=args.sum_dtype, shard=args.shard,
        deterministic=not args.nondeterministic, kendall_sample=args.kendall_sample,
        score_options=scorer_option_values(args), training=training,
        task=args.task, chat_template=not args.no_chat_template, max_memory=args.max_memory,
        save_masks=args.save_masks, load_masks=tuple(args.load_mask), export_peft=args.export_peft,
    )


def run(args: argparse.Namespace) -> Path:
    """Everything after argument parsing; returns the results folder."""
    config = config_from_args(args)  # every check that needs no model, first: mistakes cost seconds
    quiet = args.quiet or not sb.is_main_process()
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    run = sb.run_and_write(config, args.out, overwrite=args.overwrite, figures=not args.no_figures,
                           command="python -m salience_bench.compare " + " ".join(sys.argv[1:]), progress=not quiet, log=log)
    if sb.is_main_process():
        if run.downstream is not None:
            print(f"\nDownstream ({args.dataset}, {run.downstream.eval_split} split):")
            print(run.downstream.display_table().to_string(index=False))
        print("\n" + run.comparison.summary_text())
        print(f"\nwrote {run.path} in {run.comparison.elapsed_seconds:.1f} s")
    return run.path


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_metrics:
        rows = sb.describe_metrics()
        width = max(len(name) for name, _, _ in rows)
        for name, aliases, description in rows:
            print(f"{name:<{width}}  {description}" + (f" (alias: {aliases})" if aliases else ""))
        return 0
    try:
        with sb.raise_on_sigterm():
            run(args)
    except sb.SalienceBenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, sb.Terminated) as stop:
        print(f"{'terminated' if isinstance(stop, sb.Terminated) else 'interrupted'}; the results folder is unchanged; "
              "finished downstream runs are kept in <out>.partial and the same command resumes them", file=sys.stderr)
        return 143 if isinstance(stop, sb.Terminated) else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
