import csv
from pathlib import Path

import pytest

import salience_bench as sb

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.parametrize(
    "name, split, rows, classes",
    [("sst2", "train", 67_349, 2), ("sst2", "validation", 872, 2), ("ag_news", "train", 10_001, 4), ("ag_news", "test", 7_600, 4)],
)
def test_bundled_splits_have_the_documented_sizes(name, split, rows, classes):
    data = sb.load_dataset(name, split)
    assert len(data) == len(data.labels) == rows
    assert data.num_labels == classes
    assert all(isinstance(t, str) and t for t in data.texts[:100])


@pytest.mark.skipif(not SHARED.exists(), reason="the shared data folder is not beside this checkout")
def test_bundled_copy_equals_the_shared_source():
    with open(SHARED / "sst2" / "validation.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    data = sb.load_dataset("sst2", "validation")
    assert data.texts == [r["sentence"] for r in rows]
    assert data.labels == [int(r["label"]) for r in rows]


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
