import csv
from pathlib import Path

import pytest

import salience_bench as sb

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.parametrize(
    "name, split, rows, classes",
    [("sst2", "train", 67_349, 2), ("sst2", "validation", 872, 2), ("ag_news", "train", 10_001, 4), ("ag_news", "test", 7_600, 4),
     ("cola", "train", 8_551, 2), ("cola", "validation", 1_043, 2), ("mrpc", "train", 3_667, 2),
     ("mrpc", "validation", 408, 2), ("rte", "train", 2_490, 2), ("rte", "validation", 277, 2),
     ("stsb", "train", 5_749, 1), ("stsb", "validation", 1_500, 1)],
)
def test_bundled_splits_have_the_documented_sizes(name, split, rows, classes):
    data = sb.load_dataset(name, split)
    assert len(data) == len(data.labels) == rows
    assert data.num_labels == classes
    assert all(isinstance(t, str) and t for t in data.texts[:100])


@pytest.mark.skipif(not SHARED.exists(), reason="the shared data folder is not beside this checkout")
@pytest.mark.parametrize("name, split", [("sst2", "validation"), ("cola", "train"), ("mrpc", "validation"),
                                         ("rte", "train"), ("stsb", "validation")])
def test_bundled_copy_equals_the_shared_source(name, split):
    with open(SHARED / name / f"{split}.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    data = sb.load_dataset(name, split)
    first = "sentence" if "sentence" in rows[0] else "sentence1"
    assert data.texts == [r[first] for r in rows]
    assert data.second == ([r["sentence2"] for r in rows] if "sentence2" in rows[0] else None)
    convert = float if name == "stsb" else int
    assert data.labels == [convert(r["label"]) for r in rows]


def test_bad_dataset_names():
    with pytest.raises(sb.SalienceBenchError, match="unknown dataset 'imdb'.*sst2"):
        sb.load_dataset("imdb")
    with pytest.raises(sb.SalienceBenchError, match="no split 'test'"):
        sb.load_dataset("sst2", "test")


def test_batches_are_seeded_sized_and_labelled():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(sb.models.bundled_model_path()))
    data = sb.load_dataset("sst2", "validation")
    a = sb.make_batches(data, tok, batch_size=8, num_batches=3, max_length=16, seed=1)
    b = sb.make_batches(data, tok, batch_size=8, num_batches=3, max_length=16, seed=1)
    c = sb.make_batches(data, tok, batch_size=8, num_batches=3, max_length=16, seed=2)
    assert len(a) == 3
    for x, y in zip(a, b):
        assert set(x) >= {"input_ids", "attention_mask", "labels"}
        assert x["input_ids"].shape[0] == 8 and x["input_ids"].shape[1] <= 16
        assert all((x[k] == y[k]).all() for k in x)
    assert not all((x["labels"] == z["labels"]).all() and x["input_ids"].shape == z["input_ids"].shape
                   and (x["input_ids"] == z["input_ids"]).all() for x, z in zip(a, c))
    with pytest.raises(sb.SalienceBenchError, match="batch size"):
        sb.make_batches(data, tok, batch_size=0)


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(sb.models.bundled_model_path()))


def test_sentence_pairs_are_encoded_as_pairs():
    tok = _tokenizer()
    data = sb.load_dataset("mrpc", "validation")
    batch = sb.make_batches(data, tok, batch_size=4, num_batches=1, max_length=128, shuffle=False)[0]
    for row in range(4):
        expected = tok(data.texts[row], data.second[row], truncation=True, max_length=128)["input_ids"]
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        assert ids == expected
        assert ids.count(tok.sep_token_id) == 2  # [CLS] a [SEP] b [SEP]


def test_stsb_is_a_regression_with_float_targets():
    from transformers import AutoModelForSequenceClassification

    tok = _tokenizer()
    data = sb.load_dataset("stsb", "train")
    assert data.regression and data.num_labels == 1 and 0.0 <= min(data.labels) < max(data.labels) <= 5.0
    batch = sb.make_batches(data, tok, batch_size=4, num_batches=1, max_length=32)[0]
    assert batch["labels"].dtype.is_floating_point
    model = AutoModelForSequenceClassification.from_pretrained(str(sb.models.bundled_model_path()), num_labels=1)
    out = model(**batch)
    expected = ((out.logits.squeeze(-1) - batch["labels"]) ** 2).mean()  # Hugging Face: MSE for one output
    assert abs(float(out.loss) - float(expected)) < 1e-6


def test_task_metrics_against_independent_formulas():
    import numpy as np
    import torch
    from scipy import stats

    from salience_bench.tasks import task_metrics

    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 2, (200,), generator=g).float()
    predictions = torch.where(torch.rand(200, generator=g) < 0.7, targets, 1 - targets)
    got = task_metrics(predictions, targets, regression=False)
    # Matthews correlation is Pearson's r of the two binary vectors; F1 counted one example at a time.
    assert got["eval_mcc"] == pytest.approx(stats.pearsonr(predictions.double().numpy(), targets.double().numpy()).statistic, abs=1e-12)
    tp = sum(1 for p, t in zip(predictions.tolist(), targets.tolist()) if p == t == 1)
    fp = sum(1 for p, t in zip(predictions.tolist(), targets.tolist()) if p == 1 and t == 0)
    fn = sum(1 for p, t in zip(predictions.tolist(), targets.tolist()) if p == 0 and t == 1)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert got["eval_f1"] == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-12)
    assert got["eval_accuracy"] == pytest.approx(float((predictions == targets).float().mean()))
    values = torch.randn(50, generator=g).double()
    scores = values + 0.5 * torch.randn(50, generator=g).double()
    reg = task_metrics(scores, values, regression=True)
    assert reg["eval_pearson"] == pytest.approx(float(np.corrcoef(scores.numpy(), values.numpy())[0, 1]), abs=1e-12)
    ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731  (no ties in continuous data)
    assert reg["eval_spearman"] == pytest.approx(float(np.corrcoef(ranks(scores.numpy()), ranks(values.numpy()))[0, 1]),
                                                 abs=1e-12)


def test_hold_out_is_a_seeded_disjoint_split_that_keeps_pairs():
    data = sb.load_dataset("mrpc", "train")
    rest, held = sb.data.hold_out(data, 0.1, seed=3)
    assert len(held) == round(0.1 * len(data)) and len(rest) + len(held) == len(data)
    rows = lambda d: list(zip(d.texts, d.second, d.labels))  # noqa: E731
    assert sorted(rows(rest) + rows(held)) == sorted(rows(data))  # every example once, pairs kept together
    again, _ = sb.data.hold_out(data, 0.1, seed=3)
    other, _ = sb.data.hold_out(data, 0.1, seed=4)
    assert rows(again) == rows(rest) and rows(other) != rows(rest)
    assert held.split == "train-heldout" and rest.split == "train-rest" and not held.regression
    with pytest.raises(sb.SalienceBenchError, match="held-out fraction"):
        sb.data.hold_out(data, 1.0)
