"""Bundled and hub datasets → tokenised batches that ``model(**batch)`` accepts.

Two kinds: text classification (:class:`TextDataset`: sentences and integer labels) and
prompt/completion data for causal language models (:class:`PromptDataset`), whose batches carry
token labels on the completion only (prompt and padding are -100) and position ids that follow the
attention mask, so left and right padding give the same per-token losses.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import itertools
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, NamedTuple, Union

import torch

from .errors import SalienceBenchError, is_int

IGNORE_INDEX = -100  # the Hugging Face label for tokens without a loss


@dataclass(frozen=True)
class TextDataset:
    """Sentences (or sentence pairs: ``second`` holds each pair's second sentence) with integer class labels,
    or float targets when ``regression`` (STS-B: one output, mean squared error)."""

    name: str
    split: str
    texts: list[str]
    labels: list[int] | list[float]
    second: list[str] | None = None
    regression: bool = False
    task: ClassVar[str] = "classification"

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else int(max(self.labels)) + 1

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class PromptDataset:
    """Prompt → completion pairs for causal-LM fine-tuning (the loss covers the completion only)."""

    name: str
    split: str
    prompts: list[str]
    completions: list[str]
    task: ClassVar[str] = "causal-lm"
    num_labels: ClassVar[None] = None

    @functools.cached_property
    def texts(self) -> list[str]:
        """Prompt and completion together (for grouping examples by length)."""
        return [p + " " + c for p, c in zip(self.prompts, self.completions)]

    def __len__(self) -> int:
        return len(self.prompts)


Dataset = Union[TextDataset, PromptDataset]


class BundledText(NamedTuple):
    files: dict[str, str]  # split → gzip TSV in salience_bench/_data
    columns: tuple[str, ...]  # the text column, or a sentence pair's two
    hub: str  # the same data on the hub
    regression: bool = False  # float targets, a one-output head (STS-B)
    headline: str = "accuracy"  # the metric papers report for the task


def _glue(task: str) -> dict[str, str]:
    return {"train": f"{task}_train.tsv.gz", "validation": f"{task}_validation.tsv.gz"}


BUNDLED = {
    "sst2": BundledText({"train": "sst2_train.tsv.gz", "validation": "sst2_validation.tsv.gz"}, ("sentence",), "glue/sst2"),
    "ag_news": BundledText({"train": "ag_news_train_sample.tsv.gz", "test": "ag_news_test.tsv.gz"}, ("text",), "ag_news"),
    "cola": BundledText(_glue("cola"), ("sentence",), "glue/cola", headline="mcc"),
    "mrpc": BundledText(_glue("mrpc"), ("sentence1", "sentence2"), "glue/mrpc"),  # F1 beside accuracy
    "rte": BundledText(_glue("rte"), ("sentence1", "sentence2"), "glue/rte"),
    "stsb": BundledText(_glue("stsb"), ("sentence1", "sentence2"), "glue/stsb", regression=True, headline="pearson"),
}


def headline_metric(name: str) -> str:
    """The metric a dataset's results are reported in (``eval_<it>`` in downstream.csv): accuracy unless the
    task has its own (CoLA: mcc, STS-B: pearson)."""
    return BUNDLED[name].headline if name in BUNDLED else "accuracy"
PROMPT_BUNDLED = {"gsm8k": {"train": "gsm8k_train.jsonl.gz", "test": "gsm8k_test.jsonl.gz"}}
PROMPT_FIELDS = (("prompt", "completion"), ("question", "answer"), ("instruction", "output"))
DATASET_CHOICES = (*BUNDLED, *PROMPT_BUNDLED, "jsonl:PATH", "hf:<name>[/<config>]")
# what papers report (GLUE's test labels are private)
EVAL_SPLIT = {"sst2": "validation", "ag_news": "test", "gsm8k": "test", "cola": "validation", "mrpc": "validation",
              "rte": "validation", "stsb": "validation"}
PAIR_COLUMNS = (("sentence1", "sentence2"), ("question", "sentence"), ("premise", "hypothesis"), ("question1", "question2"))
JSONL_HELD_OUT = 0.05  # jsonl:PATH: the last 5% of the file (at least 1, at most 500 examples) is its "validation" split


def dataset_task(name: str) -> str:
    """``causal-lm`` for prompt/completion data (gsm8k, jsonl:PATH), else ``classification``."""
    return "causal-lm" if name in PROMPT_BUNDLED or name.startswith("jsonl:") else "classification"


def load_eval_dataset(name: str) -> Dataset:
    """The split downstream results are reported on: SST-2 validation, AG News and GSM8K test; a JSONL file's
    held-out tail; hub data: validation, else test."""
    if name in EVAL_SPLIT:
        return load_dataset(name, EVAL_SPLIT[name])
    if name.startswith("jsonl:"):
        return load_dataset(name, "validation")
    try:
        return load_dataset(name, "validation")
    except SalienceBenchError:
        return load_dataset(name, "test")


def _read_bundled(name: str, split: str) -> TextDataset:
    spec = BUNDLED[name]
    if split not in spec.files:
        raise SalienceBenchError(f"dataset {name!r} has no split {split!r}; bundled splits: {', '.join(spec.files)}")
    raw = resources.files("salience_bench").joinpath("_data", spec.files[split]).read_bytes()
    rows = list(csv.DictReader(io.StringIO(gzip.decompress(raw).decode("utf-8")), delimiter="\t", quoting=csv.QUOTE_NONE))
    first, *second = spec.columns
    return TextDataset(name, split, [r[first] for r in rows],
                       [float(r["label"]) if spec.regression else int(r["label"]) for r in rows],
                       second=[r[second[0]] for r in rows] if second else None, regression=spec.regression)


def _read_hub(spec: str, split: str) -> TextDataset:
    try:
        import datasets
    except ImportError as err:
        raise SalienceBenchError(f"dataset {spec!r} needs the 'datasets' package: pip install datasets") from err
    path, _, config = spec.partition("/")
    try:
        ds = datasets.load_dataset(path, config or None, split=split)
    except Exception as err:  # the datasets library raises many types for missing names/network
        raise SalienceBenchError(f"cannot load dataset {spec!r} split {split!r}: {err}") from err
    pair = next((p for p in PAIR_COLUMNS if all(c in ds.column_names for c in p)), None)
    text_column = pair[0] if pair else next((c for c in ("sentence", "text", "content") if c in ds.column_names), None)
    if text_column is None or "label" not in ds.column_names:
        raise SalienceBenchError(
            f"dataset {spec!r} needs a text column (sentence/text/content) or a sentence pair "
            f"({', '.join('/'.join(p) for p in PAIR_COLUMNS)}) and a 'label' column; it has {ds.column_names}"
        )
    labels = list(ds["label"])
    regression = any(isinstance(x, float) for x in labels)
    return TextDataset(spec, split, list(ds[text_column]), [float(x) if regression else int(x) for x in labels],
                       second=list(ds[pair[1]]) if pair else None, regression=regression)


def _prompt_rows(rows: list[dict], source: str) -> tuple[list[str], list[str]]:
    if not rows:
        return [], []
    fields = next((f for f in PROMPT_FIELDS if all(k in rows[0] for k in f)), None)
    if fields is None:
        raise SalienceBenchError(f"{source}: each line needs one of the field pairs "
                                 + ", ".join("/".join(f) for f in PROMPT_FIELDS) + f"; the first has {sorted(rows[0])}")
    prompt_key, completion_key = fields
    try:
        return [str(r[prompt_key]) for r in rows], [str(r[completion_key]) for r in rows]
    except KeyError as err:
        raise SalienceBenchError(f"{source}: a line lacks the field {err.args[0]!r}") from err


def _read_jsonl(text: str, source: str) -> list[dict]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SalienceBenchError(f"{source} line {number} is not JSON: {err.msg}") from err
            if not isinstance(row, dict):
                raise SalienceBenchError(f"{source} line {number} is not a JSON object")
            rows.append(row)
    return rows


def _utf8_text(path: Path) -> str:
    """The file's text, or a one-line error naming the file, the line and the byte that is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise SalienceBenchError(f"{str(path)!r} line {line} is not UTF-8 (byte {raw[err.start]:#04x} at offset "
                                 f"{err.start}); JSON-lines files must be UTF-8") from None


def _read_prompts(name: str, split: str) -> PromptDataset:
    if name in PROMPT_BUNDLED:
        files = PROMPT_BUNDLED[name]
        if split not in files:
            raise SalienceBenchError(f"dataset {name!r} has no split {split!r}; bundled splits: {', '.join(files)}")
        raw = resources.files("salience_bench").joinpath("_data", files[split]).read_bytes()
        prompts, completions = _prompt_rows(_read_jsonl(gzip.decompress(raw).decode("utf-8"), name), name)
        return PromptDataset(name, split, prompts, completions)
    path = Path(name[len("jsonl:"):]).expanduser()
    if not path.is_file():
        raise SalienceBenchError(f"dataset file {str(path)!r} does not exist (jsonl:PATH names a JSON-lines file)")
    if split not in ("train", "validation"):
        raise SalienceBenchError(f"dataset {name!r} has no split {split!r}; valid: train, validation (its last "
                                 f"{JSONL_HELD_OUT:.0%})")
    rows = _read_jsonl(_utf8_text(path), str(path))
    held_out = min(500, max(1, round(JSONL_HELD_OUT * len(rows)))) if len(rows) > 1 else 0
    rows = rows[: len(rows) - held_out] if split == "train" else rows[len(rows) - held_out:]
    prompts, completions = _prompt_rows(rows, str(path))
    return PromptDataset(name, split, prompts, completions)


def hold_out(data: Dataset, fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(the rest, a seeded held-out ``fraction``) of a split: tune on the second, never on the reported split."""
    if not 0 < fraction < 1:
        raise SalienceBenchError(f"held-out fraction must be in (0, 1), got {fraction!r}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    size = max(1, round(fraction * len(data)))
    held, rest = sorted(order[:size]), sorted(order[size:])

    def subset(index: list[int], split: str) -> Dataset:
        if isinstance(data, PromptDataset):
            return PromptDataset(data.name, split, [data.prompts[i] for i in index], [data.completions[i] for i in index])
        return TextDataset(data.name, split, [data.texts[i] for i in index], [data.labels[i] for i in index],
                           second=[data.second[i] for i in index] if data.second is not None else None,
                           regression=data.regression)

    return subset(rest, f"{data.split}-rest"), subset(held, f"{data.split}-heldout")


def check_dataset_name(name: str) -> str:
    """``name`` if it names a dataset this package can load (no loading yet), else a clear error."""
    known = name in BUNDLED or name in PROMPT_BUNDLED if isinstance(name, str) else False
    prefixed = isinstance(name, str) and any(name.startswith(p) and len(name) > len(p) for p in ("hf:", "jsonl:"))
    if not (known or prefixed):
        raise SalienceBenchError(f"unknown dataset {name!r}; valid: {', '.join(DATASET_CHOICES)}")
    return name


def load_dataset(name: str = "sst2", split: str = "train") -> Dataset:
    """A split of a bundled dataset (``sst2``, ``ag_news``: classification; ``gsm8k``: prompt/completion),
    a JSON-lines file (``jsonl:PATH`` with prompt/completion, question/answer or instruction/output fields),
    or ``hf:<name>[/<config>]`` through the datasets library."""
    check_dataset_name(name)
    if dataset_task(name) == "causal-lm":
        data = _read_prompts(name, split)
    else:
        data = _read_bundled(name, split) if name in BUNDLED else _read_hub(name[3:], split)
    if not len(data):
        raise SalienceBenchError(f"dataset {name!r} split {split!r} is empty")
    return data


def _prompt_text(tokenizer, prompt: str, chat_template: bool) -> tuple[str, bool]:
    """(the prompt as the model sees it, whether it already holds the special tokens)."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True), True
    return prompt + "\n", False


def encode_prompts(tokenizer, prompts: list[str], completions: list[str] | None, *, max_length: int,
                   chat_template: bool = True) -> dict[str, torch.Tensor]:
    """A causal-LM batch: prompt then completion (+ eos), labels on the completion only, padded on the
    tokenizer's ``padding_side``, with ``position_ids`` from the attention mask.

    Too long: the completion is cut first, then the prompt from the left, so every example keeps at
    least one target token. Without ``completions`` (generation), prompts only and no labels.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, targets = [], []
    for i, prompt in enumerate(prompts):
        text, templated = _prompt_text(tokenizer, prompt, chat_template)
        prompt_ids = tokenizer(text, add_special_tokens=not templated)["input_ids"]
        if completions is None:
            rows.append(prompt_ids[-max_length:])
            continue
        completion_ids = tokenizer(completions[i], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        keep = min(len(completion_ids), max(1, max_length - len(prompt_ids)))
        prompt_ids = prompt_ids[max(0, len(prompt_ids) - (max_length - keep)):]
        rows.append(prompt_ids + completion_ids[:keep])
        targets.append([IGNORE_INDEX] * len(prompt_ids) + completion_ids[:keep])
    width = max(len(r) for r in rows)
    left = getattr(tokenizer, "padding_side", "right") == "left"

    def pad(row: list[int], value: int) -> list[int]:
        filler = [value] * (width - len(row))
        return filler + row if left else row + filler

    mask = torch.tensor([pad([1] * len(r), 0) for r in rows], dtype=torch.long)
    batch = {"input_ids": torch.tensor([pad(r, pad_id) for r in rows], dtype=torch.long), "attention_mask": mask,
             "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    if completions is not None:
        batch["labels"] = torch.tensor([pad(t, IGNORE_INDEX) for t in targets], dtype=torch.long)
    return batch


def _encode(data: Dataset, tokenizer, idx: list[int], max_length: int, chat_template: bool) -> dict[str, torch.Tensor]:
    if data.task == "causal-lm":
        return encode_prompts(tokenizer, [data.prompts[i] for i in idx], [data.completions[i] for i in idx],
                              max_length=max_length, chat_template=chat_template)
    second = [data.second[i] for i in idx] if data.second is not None else None  # pairs: "[CLS] a [SEP] b [SEP]"
    enc = tokenizer([data.texts[i] for i in idx], second, padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
    return {**enc, "labels": torch.tensor([data.labels[i] for i in idx],
                                          dtype=torch.float32 if data.regression else torch.long)}


_FINAL_NUMBER = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def final_number(text: str) -> str | None:
    """GSM8K's answer: the number after the last ``####`` (commas dropped), or None."""
    found = _FINAL_NUMBER.findall(text)
    return found[-1].replace(",", "").rstrip(".") if found else None


def make_batches(
    data: Dataset,
    tokenizer,
    *,
    batch_size: int = 32,
    num_batches: int | None = None,
    max_length: int = 64,
    seed: int = 0,
    shuffle: bool = True,
    sort_by_length: bool = False,
    chat_template: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Tokenised batches (padded to the longest sequence in the batch) with ``labels`` (class indices, or
    for prompt/completion data token labels on the completion, see :func:`encode_prompts`).

    With ``shuffle`` the examples are a seeded random sample of the split, so the same
    seed always scores on the same sentences. ``sort_by_length`` orders the chosen examples
    by length first (less padding; for evaluation, where order does not matter).
    """
    if not is_int(batch_size) or batch_size < 1:
        raise SalienceBenchError(f"batch size must be an integer ≥ 1, got {batch_size!r}")
    if num_batches is not None and (not is_int(num_batches) or num_batches < 1):
        raise SalienceBenchError(f"number of batches must be an integer ≥ 1, got {num_batches!r}")
    if num_batches is not None and num_batches * batch_size > len(data):
        raise SalienceBenchError(
            f"{num_batches} batches of {batch_size} need {num_batches * batch_size:,} examples, but {data.name} "
            f"{data.split} has {len(data):,}; lower the number of batches or the batch size")
    check_max_length(tokenizer, max_length)
    order = (
        torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
        if shuffle
        else list(range(len(data)))
    )
    if num_batches is not None:
        order = order[: num_batches * batch_size]
    if sort_by_length:
        order = sorted(order, key=lambda i: len(data.texts[i].split()))
    return [_encode(data, tokenizer, order[start : start + batch_size], max_length, chat_template)
            for start in range(0, len(order), batch_size)]


def check_max_length(tokenizer, max_length: int) -> None:
    """Refuse a ``max_length`` that leaves no token for the text once the special tokens are added."""
    special = tokenizer.num_special_tokens_to_add(pair=False) if hasattr(tokenizer, "num_special_tokens_to_add") else 0
    if not is_int(max_length) or max_length < special + 1:
        raise SalienceBenchError(
            f"max length {max_length!r} leaves no room for text: the tokenizer adds {special} special token(s) "
            f"per example; use at least {special + 1}")


def batch_examples(batch: Mapping[str, Any]) -> int:
    """Examples in a batch dict: the leading size of its first tensor with a dimension."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise SalienceBenchError("a scoring batch holds no tensors; batches must be dicts accepted by model(**batch)")


def loss_units(batch: Mapping[str, Any]) -> torch.Tensor | None:
    """Target tokens per example of a causal-LM batch (labels ≠ -100 after the one-token shift the model
    applies), or None for one label per example."""
    labels = batch.get("labels")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
        return None
    return (labels[:, 1:] != IGNORE_INDEX).sum(1)


def training_stream(
    data: Dataset, tokenizer, *, batch_size: int, max_length: int, seed: int, group_by_length: bool = True,
    chat_template: bool = True,
) -> Iterator[dict]:
    """Endless shuffled epochs of tokenised batches (seeded; a new order each epoch).

    With ``group_by_length`` (as Hugging Face Trainer's option of that name), each run of 50
    batches' worth of shuffled examples is sorted by length before it is cut into batches, and
    the batches are then shuffled: every batch is still a random draw of similar-length
    examples, but far less of it is padding.
    """
    check_max_length(tokenizer, max_length)
    lengths = [len(t.split()) for t in data.texts] if group_by_length else None
    for epoch in itertools.count():
        generator = torch.Generator().manual_seed(seed * 7919 + epoch)
        order = torch.randperm(len(data), generator=generator).tolist()
        usable = len(order) - len(order) % batch_size
        batches = []
        span = batch_size * 50
        for start in range(0, usable, span):
            chunk = order[start : min(start + span, usable)]
            if lengths is not None:
                chunk = sorted(chunk, key=lambda i: lengths[i])
            batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
        if lengths is not None:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        for idx in batches:
            yield _encode(data, tokenizer, idx, max_length, chat_template)
