"""Small, fixed inputs shared by the asv suites (random but seeded; no downloads)."""

from __future__ import annotations

import torch


def pin_threads(n: int = 1) -> None:
    """Stable timings: one BLAS/OpenMP thread unless a benchmark says otherwise."""
    torch.set_num_threads(n)


def small_bert(hidden: int = 128, layers: int = 2, vocab: int = 1000, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    from salience_bench.runtime import quiet_transformers

    quiet_transformers()
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=4 * hidden, max_position_embeddings=128, num_labels=2)
    return BertForSequenceClassification(config).eval()


def token_batches(num_batches: int = 4, batch_size: int = 16, length: int = 32, vocab: int = 1000, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(1, vocab, (batch_size, length), generator=g),
            "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
            "labels": torch.randint(0, 2, (batch_size,), generator=g),
        }
        for _ in range(num_batches)
    ]


def score_dict(total: int, tensors: int = 20, seed: int = 0) -> dict[str, torch.Tensor]:
    """``total`` float32 scores spread over ``tensors`` tensors of unequal sizes."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(tensors, generator=g) + 0.5
    sizes = (weights / weights.sum() * total).long()
    sizes[-1] += total - int(sizes.sum())
    return {f"t{i}": torch.rand(int(n), generator=g) for i, n in enumerate(sizes)}


def dense_masked_gradients_(model, masks) -> None:
    """The naive route sparse fine-tuning is measured against: dense gradients multiplied by the masks."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if params[name].grad is not None:
            params[name].grad.mul_(mask.to(params[name].grad.dtype))
