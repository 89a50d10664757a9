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


def single_examples(batches):
    """Each example alone, unpadded (only its real tokens, positions from 0), with its batch's index."""
    for b, batch in enumerate(batches):
        for n in range(batch["input_ids"].shape[0]):
            keep = batch["attention_mask"][n].bool()
            length = int(keep.sum())
            yield b, {"input_ids": batch["input_ids"][n, keep][None],
                      "attention_mask": torch.ones(1, length, dtype=torch.long), "labels": batch["labels"][n, keep][None]}


def causal_lm_per_example_reference(model, batches, names):
    """grad, fisher and wanda of a causal LM from one example at a time, unpadded, in float64 sums.

    Example n's own loss is the mean over its Tₙ target tokens and gₙ its gradient. A batch's loss is the mean over
    all its T target tokens, so its gradient is Σₙ (Tₙ/T)·gₙ; grad is |the mean of those over the batches|, fisher
    the mean of gₙ² over the examples, wanda |W| times the norm of each input over every real token."""
    from salience_bench.data import IGNORE_INDEX
    from salience_bench.models import weight_is_transposed

    params = dict(model.named_parameters())
    modules = {n: m for n, m in model.named_modules() if n + ".weight" in names}
    mean_grad = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    fisher = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    norms = {n: torch.zeros(params[n + ".weight"].shape, dtype=torch.float64) for n in modules}
    transposed = {n: weight_is_transposed(m) for n, m in modules.items()}
    batch_targets = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches]

    def record(name):
        def hook(module, inputs, output):
            column = inputs[0].detach().double().pow(2).sum(dim=(0, 1))  # Σ over this example's real tokens, per input
            norms[name] += column[:, None] if transposed[name] else column[None, :]

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in modules.items()]
    count = 0
    try:
        for b, single in single_examples(batches):
            targets = int((single["labels"][0, 1:] != IGNORE_INDEX).sum())
            if targets == 0:
                continue
            loss = model(**single).loss  # the mean over this example's own target tokens
            grads = torch.autograd.grad(loss, [params[n] for n in names])
            for n, g in zip(names, grads):
                fisher[n] += g.double() ** 2
                mean_grad[n] += g.double() * (targets / batch_targets[b]) / len(batches)
            count += 1
    finally:
        for h in handles:
            h.remove()
    wanda = {n + ".weight": params[n + ".weight"].detach().double().abs() * norms[n].detach().sqrt() for n in modules}
    return {"grad": {n: g.abs() for n, g in mean_grad.items()}, "fisher": {n: f / count for n, f in fisher.items()},
            "wanda": wanda}


def input_squared_norms(model, batches, names):
    """Σ x_j² over every real token, each example run alone and unpadded, the inputs read by forward hooks."""
    modules = {n: model.get_submodule(n.rsplit(".", 1)[0]) for n in names}
    sums = {n: torch.zeros(1, m.weight.shape[1], dtype=torch.float64) for n, m in modules.items()}

    def record(name):
        def hook(module, inputs, output):
            sums[name] += inputs[0].double().reshape(-1, inputs[0].shape[-1]).square().sum(0)

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in modules.items()]
    model.eval()
    with torch.no_grad():
        for batch in batches:
            for i in range(batch["input_ids"].shape[0]):
                length = int(batch["attention_mask"][i].sum())
                model(**{k: v[i:i + 1, :length] for k, v in batch.items() if k != "labels"})
    for handle in handles:
        handle.remove()
    return sums
