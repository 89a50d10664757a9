"""The options of ``python -m salience_bench.compare``: argparse types that name the bad value, and the parser."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re

import salience_bench as sb
from salience_bench.sources import describe_sources
from salience_bench.tasks import get_task, list_tasks
from salience_bench.masks import MASK_SCOPES, MASK_STRUCTURES, get_scope, get_structure
from salience_bench.training.loop import LR_SCHEDULES

# Every default is the library's own (a dataclass field's), so the CLI and the Python API cannot drift apart.
_COMPARE, _PLAN = sb.CompareConfig, sb.TrainingPlan
DEFAULT_DENSITY = sb.CompareConfig.mask.density


def _number(kind: type, what: str, check, requirement: str, label: str = ""):
    """An argparse type: ``kind(text)`` that must pass ``check``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{label}{text} must be {requirement}")
        return value

    return parse


_positive_int = _number(int, "an integer", lambda v: v >= 1, "≥ 1")
_positive_float = _number(float, "a number", lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
_non_negative_float = _number(float, "a number", lambda v: math.isfinite(v) and v >= 0, "a finite number ≥ 0")
_density = _number(float, "a number", lambda v: 0 < v <= 1 and not math.isnan(v), "in (0, 1]", "density ")


def _seed(text: str) -> int:
    """A seed: an integer in [0, 2^63 − 1] (torch's generators take a signed 64-bit one)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(text) from None  # _listed and argparse name the text
    if not 0 <= value < sb.errors.SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"seed {text} must be an integer in [0, 2^63 − 1]")
    return value


_seed.__name__ = "seed"  # argparse: "invalid seed value: 'x'"


def _count_or_all(text: str) -> int | None:
    """A count ≥ 0, or ``all`` (None)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer ≥ 0 or 'all'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be ≥ 0 or 'all'")
    return value


def _listed(kind: type, what: str):
    def parse(text: str) -> list:
        try:
            items = [kind(s.strip()) for s in text.split(",") if s.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}") from None
        if not items:
            raise argparse.ArgumentTypeError(f"give at least one of {what}")
        return list(dict.fromkeys(items))

    return parse


def _size(text: str) -> int:
    """Bytes from '40GB', '512MiB', '1e9' …"""
    match = re.fullmatch(r"\s*([\d.eE+]+)\s*(?:([KMGT])(i?)B?|B)?\s*", text, flags=re.IGNORECASE)
    try:
        power = "KMGT".index(match.group(2).upper()) + 1 if match and match.group(2) else 0
        value = int(float(match.group(1)) * ((1024 if match.group(3) else 1000) ** power))
    except (AttributeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 40GB, 512MiB or 1e9") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least one byte")
    return value


def _nm(text: str) -> tuple[int, int]:
    try:
        n, m = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form N:M (e.g. 2:4)") from None
    return n, m


def _option_type(name: str, option: "sb.scorers.Option"):
    """An argparse type from a scorer's typed option: its type, and its minimum where it has one."""
    if option.type is str:
        return str
    what = "an integer" if option.type is int else "a number"
    floor = option.minimum
    return _number(option.type, what, lambda v: floor is None or v >= floor, f"≥ {floor}", f"{name} ")


def _add_scorer_options(group, taken: set[str]) -> None:
    """One ``--flag`` per option the registered scorers declare (``lift_rank`` → ``--lift-rank``), so a metric's
    settings reach the command line with no code here; ``taken`` are defined elsewhere in the parser."""
    for name, option in sb.scorers.scorer_options().items():
        if name in taken:
            continue
        flag = "--" + name.replace("_", "-")
        group.add_argument(flag, type=_option_type(flag, option), default=option.default,
                           help=f"{option.help} (default: {option.default!r})")


def _method_flags() -> dict[tuple[str, str], str]:
    """(method, option) → its flag, ``--<method>-<option>`` (LoRA's ``alpha_ratio`` → ``--lora-alpha-ratio``)."""
    from salience_bench.training.methods import method_options

    return {(method, spec.name): f"--{method}-{spec.name}".replace("_", "-")
            for method, options in method_options().items() for spec in dataclasses.fields(options)}


def _add_method_options(group) -> None:
    """One flag per option a registered training method declares (its ``Options`` dataclass), checked by it."""
    from salience_bench.training.methods import method_options

    for (method, option), flag in _method_flags().items():
        spec = next(f for f in dataclasses.fields(method_options()[method]) if f.name == option)
        kind = {"float": float, "int": int, "str": str, "bool": str}.get(str(getattr(spec.type, "__name__", spec.type)), str)
        group.add_argument(flag, type=kind, default=None, metavar=option.upper(),
                           help=f"{spec.metadata.get('help', option)} (default: {spec.default!r})")


def method_option_values(args: argparse.Namespace) -> dict[str, dict]:
    """The training methods' options given on the command line, as ``{method: {option: value}}``."""
    values: dict[str, dict] = {}
    for (method, option), flag in _method_flags().items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            values.setdefault(method, {})[option] = value
    return values


def scorer_option_values(args: argparse.Namespace) -> dict:
    """The scorer options as parsed, by option name."""
    return {name: getattr(args, name) for name in sb.scorers.scorer_options()}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the 24-line usage block
        self.exit(2, f"error: {message} (python -m salience_bench.compare --help lists every option)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m salience_bench.compare",
        description=(
            "Score a model's weights with several salience metrics, turn each into a top-k mask, and "
            "compare the masks (Jaccard, overlap coefficient) and the scores (Spearman, Kendall), "
            "globally and per layer. Runs offline with the bundled all-MiniLM-L6-v2 and SST-2."
        ),
        epilog=(
            "Example: python -m salience_bench.compare --metrics grad,snip,fisher --density 0.01\n"
            "Outputs: overlap.csv, rank_correlation.csv, allocation.csv, manifest.json and figures/ (PNG + PDF)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to compare")
    what.add_argument("--metrics", default=",".join(_COMPARE.metrics), help="comma-separated metric names, aliases or "
                      "glob patterns, or 'all' (default: %(default)s; see --list-metrics)")
    what.add_argument("--list-metrics", action="store_true", help="print every registered metric with a description and exit")
    what.add_argument("--model", default=_COMPARE.model,
                      help=f"{describe_sources()} (default: %(default)s)")
    what.add_argument("--dataset", default=_COMPARE.dataset,
                      help="classification: 'sst2', 'ag_news', GLUE's 'cola', 'mrpc', 'rte' (sentence pairs) and "
                           "'stsb' (pairs, regression) — all bundled — or 'hf:<name>[/<config>]'; causal LM "
                           "(prompt → completion, loss on the completion): 'gsm8k' (bundled) or 'jsonl:PATH' with "
                           "prompt/completion, question/answer or instruction/output fields (default: %(default)s)")
    what.add_argument("--task", choices=("auto", *list_tasks()), default=_COMPARE.task, help="auto: from the checkpoint "
                      "(a next-token head is a causal LM, else a new classification head); "
                      + "; ".join(f"{name}: {get_task(name).help}" for name in list_tasks()) + " (default: %(default)s)")
    what.add_argument("--no-chat-template", action="store_true",
                      help="prompt/completion data: plain 'prompt\\n' instead of the tokenizer's chat template")
    what.add_argument("--include", type=_listed(str, "glob patterns"), default=None, metavar="GLOBS",
                      help="comma-separated glob patterns over parameter names selecting the tensors to score; "
                           "default: the weights of the linear layers inside the transformer blocks")
    what.add_argument("--exclude", type=_listed(str, "glob patterns"), default=None, metavar="GLOBS",
                      help="comma-separated glob patterns over parameter names to leave out")

    mask = parser.add_argument_group("masks")
    size = mask.add_mutually_exclusive_group()
    size.add_argument("--density", type=_density, default=None,
                      help=f"fraction of eligible weights to select, in (0, 1] (default: {DEFAULT_DENSITY})")
    size.add_argument("--k", type=_positive_int, default=None, help="absolute number of weights to select (global scope)")
    scopes, structures = list(MASK_SCOPES.entries), list(MASK_STRUCTURES.entries)  # what is registered now
    mask.add_argument("--scope", choices=scopes, default=sb.MaskSpec.scope,
                      help="; ".join(f"{n}: {get_scope(n).help}" for n in scopes) + " (default: %(default)s)")
    mask.add_argument("--rank", type=_positive_int, default=None, metavar="R",
                      help="the r of --scope lora (and of --export-peft's SHiRA adapters)")
    mask.add_argument("--save-masks", action="store_true",
                      help="write each metric's mask to masks/<metric>.safetensors in the results folder")
    mask.add_argument("--load-mask", action="append", default=[], metavar="FILE",
                      help="compare (and with --train, train) a mask saved by --save-masks as metric 'file:<name>'; "
                           "checked against the model's tensors and weights (repeatable)")
    mask.add_argument("--export-peft", default=None, metavar="DIR",
                      help="write a peft SHiRA adapter per metric to DIR/<metric> whose trainable entries are the "
                           "mask (needs --scope lora --rank R)")
    mask.add_argument("--structure", choices=structures, default=sb.MaskSpec.structure,
                      help="; ".join(f"{n}: {get_structure(n).help}" for n in structures) + " (default: %(default)s)")
    mask.add_argument("--block-size", type=_positive_int, default=64,
                      help="tile side for --structure block and the smt_block metric (default: %(default)s)")
    mask.add_argument("--nm", type=_nm, default=(2, 4), metavar="N:M", help="N:M pattern for --structure nm (default: 2:4)")

    _add_scorer_options(parser.add_argument_group(
        "metric options", "Settings the registered metrics declare (each applies to the metrics named in its help)."),
        taken={"block_size"})  # --block-size above: the tile side of block masks and of smt_block alike

    data = parser.add_argument_group("scoring data")
    data.add_argument("--batches", type=_positive_int, default=_COMPARE.batches, help="number of scoring batches (default: %(default)s)")
    data.add_argument("--batch-size", type=_positive_int, default=_COMPARE.batch_size, help="examples per scoring batch (default: %(default)s)")
    data.add_argument("--max-length", type=_positive_int, default=None,
                      help="tokens per example after truncation (default: 64; 512 for prompt/completion data)")
    data.add_argument("--seed", type=_seed, default=_COMPARE.seed,
                      help="seeds the head initialisation, the sample of scoring sentences, 'random' and the "
                           "Kendall subsample (default: %(default)s)")

    train = parser.add_argument_group(
        "downstream training (--train)",
        "Fine-tune with each metric's mask (sparse FT: only the selected weights, plus the task head) and with "
        "the baselines, then report accuracy, peak memory, FLOPs and time per run in downstream.csv.")
    train.add_argument("--train", action="store_true", help="add the downstream runs")
    train.add_argument("--baselines", type=_listed(str.lower, "method names"), default=list(_PLAN.baselines),
                       metavar="LIST", help=f"comma-separated from {', '.join(sb.list_baselines())}, or 'none' "
                       "(default: full,lora,pissa); LoRA, PiSSA and SHiRA get the rank whose trainable count is closest "
                       "to the sparse k, Super-Tuning the same density per layer")
    train.add_argument("--steps", type=_positive_int, default=_PLAN.steps, help="training steps per run (default: %(default)s)")
    train.add_argument("--lr", type=_positive_float, default=_PLAN.lr,
                       help="learning rate of sparse FT, LoRA and PiSSA (default: %(default)s)")
    train.add_argument("--full-lr", type=_positive_float, default=_PLAN.full_lr,
                       help="learning rate of full fine-tuning (default: %(default)s)")
    train.add_argument("--head-lr", type=_positive_float, default=None,
                       help="one learning rate for the task head of every method (default: each method's own rate)")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=_PLAN.lr_schedule,
                       help="constant, or linear decay to 0 at the last step (default: %(default)s)")
    train.add_argument("--warmup-ratio", type=_non_negative_float, default=_PLAN.warmup_ratio,
                       help="fraction of the steps over which the rate warms up linearly from 0 (default: %(default)s)")
    _add_method_options(train)
    train.add_argument("--train-batch-size", type=_positive_int, default=_PLAN.batch_size, help="default: %(default)s")
    train.add_argument("--no-group-by-length", action="store_true",
                       help="plain random batches (default: batches of similar-length examples, shuffled, as Hugging "
                            "Face Trainer's group_by_length: far less padding)")
    train.add_argument("--weight-decay", type=_non_negative_float, default=_PLAN.weight_decay, help="AdamW weight decay (default: %(default)s)")
    train.add_argument("--mask-update-every", type=_positive_int, default=None, metavar="U",
                       help="dynamic masks: re-score on the most recent batches and re-select every U steps "
                            "(drift.csv and a drift figure); default: static mask")
    train.add_argument("--eval-every", type=_positive_int, default=None, metavar="N",
                       help="also evaluate every N steps (eval_curve.csv); default: only at the end")
    train.add_argument("--eval-examples", type=_count_or_all, default=None, metavar="N|all",
                       help="causal LMs: exact match of the final number (GSM8K '#### n') in greedy completions of the "
                            "first N evaluation prompts, with a 95%% Wilson interval; 0 skips it (default: all, e.g. "
                            "GSM8K's 1,319 test prompts; the untrained model is evaluated too, as method 'base')")
    train.add_argument("--seeds", type=_listed(_seed, "integers in [0, 2^63 − 1]"), default=None, metavar="LIST",
                       help="comma-separated seeds, one run per seed and method, for error bars (default: --seed)")

    run = parser.add_argument_group("run")
    run.add_argument("--device", default=_COMPARE.device, help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    run.add_argument("--dtype", choices=sb.DTYPES, default=_COMPARE.dtype,
                     help="model weights' dtype; scores are always float32 (default: %(default)s)")
    run.add_argument("--shard", action="store_true",
                     help="under torchrun: shard the weights and the accumulators over the processes with FSDP2 (for "
                          "models one GPU cannot hold); each process scores its share of --batches (a multiple of the "
                          "process count), rank 0 builds masks and tables one tensor at a time. Scoring and comparing "
                          "only (no --train, mask files or adapters); not grasp, synflow, jacob_cov, spiel_grad")
    run.add_argument("--nondeterministic", action="store_true",
                     help="let the scoring pass use the fastest GPU kernels, some of which (fused attention backward) "
                          "add in a varying order: masks may then differ from run to run in near-ties (default: "
                          "deterministic kernels, bitwise-repeatable masks)")
    run.add_argument("--sum-dtype", choices=sorted(sb.SUM_DTYPES), default=_COMPARE.sum_dtype,
                     help="dtype the scoring sums accumulate in: float64 gives bitwise the same scores and masks on 1 or "
                          "N processes; float32 halves the accumulators' memory, but the last bits (and near-ties at "
                          "the mask threshold) then depend on how the batches were split (default: %(default)s)")
    run.add_argument("--kendall-sample", type=_positive_int, default=_COMPARE.kendall_sample, metavar="N",
                     help="Kendall τ exact on a seeded subsample of at most N entries per layer, the same for every "
                          "pair (kendall_n in rank_correlation.csv; SE about 0.005 at the default %(default)s)")
    run.add_argument("--max-memory", type=_size, default=None, metavar="BYTES",
                     help="memory for the global rank statistics, e.g. 40GB; beyond it global Spearman runs on a "
                          "seeded sample and states its standard error (default: 80%% of the device's free memory)")
    run.add_argument("--out", default=None, help="results folder (default: results/compare-<UTC timestamp>)")
    run.add_argument("--overwrite", action="store_true", help="allow writing into a folder that holds a finished run")
    run.add_argument("--no-figures", action="store_true", help="write tables and manifest only")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser
