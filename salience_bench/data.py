"""Bundled and hub datasets → tokenised batches that ``model(**batch)`` accepts."""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from importlib import resources
import itertools
from typing import Any, Iterator, Mapping

import torch

from .errors import SalienceBenchError


@dataclass(frozen=True)
class TextDataset:
    name: str
    split: str
    texts: list[str]
    labels: list[int]

    @property
    def num_labels(self) -> int:
        return max(self.labels) + 1

    def __len__(self) -> int:
        return len(self.texts)


# Bundled name → (split → gzip file in salience_bench/_data, text column, hub name for the same data)
BUNDLED = {
    "sst2": ({"train": "sst2_train.tsv.gz", "validation": "sst2_validation.tsv.gz"}, "sentence", "glue/sst2"),
    "ag_news": ({"train": "ag_news_train_sample.tsv.gz", "test": "ag_news_test.tsv.gz"}, "text", "ag_news"),
}
DATASET_CHOICES = (*BUNDLED, "hf:<name>[/<config>]")
EVAL_SPLIT = {"sst2": "validation", "ag_news": "test"}  # what papers report (GLUE's test labels are private)


def load_eval_dataset(name: str) -> TextDataset:
    """The split downstream accuracy is reported on: SST-2 validation, AG News test; hub data: validation, else test."""
    if name in EVAL_SPLIT:
        return load_dataset(name, EVAL_SPLIT[name])
    try:
        return load_dataset(name, "validation")
    except SalienceBenchError:
        return load_dataset(name, "test")


def _read_bundled(name: str, split: str) -> TextDataset:
    files, text_column, _ = BUNDLED[name]
    if split not in files:
        raise SalienceBenchError(f"dataset {name!r} has no split {split!r}; bundled splits: {', '.join(files)}")
    raw = resources.files("salience_bench").joinpath("_data", files[split]).read_bytes()
    reader = csv.DictReader(io.StringIO(gzip.decompress(raw).decode("utf-8")), delimiter="\t", quoting=csv.QUOTE_NONE)
    texts, labels = [], []
    for row in reader:
        texts.append(row[text_column])
        labels.append(int(row["label"]))
    return TextDataset(name, split, texts, labels)


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
    text_column = next((c for c in ("sentence", "text", "content") if c in ds.column_names), None)
    if text_column is None or "label" not in ds.column_names:
        raise SalienceBenchError(
            f"dataset {spec!r} needs a text column (sentence/text/content) and a 'label' column; "
            f"it has {ds.column_names}"
        )
    return TextDataset(spec, split, list(ds[text_column]), [int(x) for x in ds["label"]])


def check_dataset_name(name: str) -> str:
    """``name`` if it names a dataset this package can load (no loading yet), else a clear error."""
    if not isinstance(name, str) or (name not in BUNDLED and not (name.startswith("hf:") and len(name) > 3)):
        raise SalienceBenchError(f"unknown dataset {name!r}; valid: {', '.join(DATASET_CHOICES)}")
    return name


def load_dataset(name: str = "sst2", split: str = "train") -> TextDataset:
    """A text-classification split: bundled ``sst2`` / ``ag_news`` (offline), or ``hf:<name>[/<config>]``."""
    check_dataset_name(name)
    data = _read_bundled(name, split) if name in BUNDLED else _read_hub(name[3:], split)
    if not data.texts:
        raise SalienceBenchError(f"dataset {name!r} split {split!r} is empty")
    return data


def make_batches(
    data: TextDataset,
    tokenizer,
    *,
    batch_size: int = 32,
    num_batches: int | None = None,
    max_length: int = 64,
    seed: int = 0,
    shuffle: bool = True,
    sort_by_length: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Tokenised batches (padded to the longest sequence in the batch) with ``labels``.

    With ``shuffle`` the examples are a seeded random sample of the split, so the same
    seed always scores on the same sentences. ``sort_by_length`` orders the chosen examples
    by length first (less padding; for evaluation, where order does not matter).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SalienceBenchError(f"batch size must be an integer ≥ 1, got {batch_size!r}")
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1):
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
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [data.texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        batch = dict(enc)
        batch["labels"] = torch.tensor([data.labels[i] for i in idx], dtype=torch.long)
        batches.append(batch)
    return batches


def check_max_length(tokenizer, max_length: int) -> None:
    """Refuse a ``max_length`` that leaves no token for the text once the special tokens are added."""
    special = tokenizer.num_special_tokens_to_add(pair=False) if hasattr(tokenizer, "num_special_tokens_to_add") else 0
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < special + 1:
        raise SalienceBenchError(
            f"max length {max_length!r} leaves no room for text: the tokenizer adds {special} special token(s) "
            f"per example; use at least {special + 1}")


def batch_examples(batch: Mapping[str, Any]) -> int:
    """Examples in a batch dict: the leading size of its first tensor with a dimension."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise SalienceBenchError("a scoring batch holds no tensors; batches must be dicts accepted by model(**batch)")


def training_stream(
    data: TextDataset, tokenizer, *, batch_size: int, max_length: int, seed: int, group_by_length: bool = True
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
            enc = tokenizer([data.texts[i] for i in idx], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            yield {**enc, "labels": torch.tensor([data.labels[i] for i in idx])}
