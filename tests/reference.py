"""Slow, independent references: plain autograd, one example or batch at a time."""

import torch


def block_linear_weights(model):
    """Names of the block linear weights, found by walking modules (not by the package's rule)."""
    names = []
    for mname, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layer." in mname:
            names.append(mname + ".weight")
    return names


def mean_gradient(model, batches, names):
    params = dict(model.named_parameters())
    model.eval()
    total = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    for batch in batches:
        loss = model(**batch).loss
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        for n, g in zip(names, grads):
            total[n] += g.double()
    return {n: (t / len(batches)).float() for n, t in total.items()}


def example_squared_gradient(model, batches, names):
    """(1/N) Σ_n g_n², each example run alone and unpadded (its true length only)."""
    params = dict(model.named_parameters())
    model.eval()
    total = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    count = 0
    for batch in batches:
        for i in range(batch["labels"].shape[0]):
            length = int(batch["attention_mask"][i].sum())
            single = {k: v[i : i + 1, :length] for k, v in batch.items() if k != "labels"}
            single["labels"] = batch["labels"][i : i + 1]
            loss = model(**single).loss
            grads = torch.autograd.grad(loss, [params[n] for n in names])
            for n, g in zip(names, grads):
                total[n] += g.double() ** 2
            count += 1
    return {n: (t / count).float() for n, t in total.items()}


def per_batch_gradients(model, batches, names):
    return [mean_gradient(model, [b], names) for b in batches]

