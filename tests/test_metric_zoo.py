"""The related-method metrics against slow, independent references."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import salience_bench as sb
from salience_bench.scorers.lowrank import low_rank_approximation

from .conftest import tiny_batches, tiny_bert
from .reference import block_linear_weights, mean_gradient


def per_batch_gradients(model, batches, names):
    return [mean_gradient(model, [b], names) for b in batches]


def test_spiel_grad_movement_and_smt_block(model, batches):
    names = block_linear_weights(model)
    weights = {n: p.detach() for n, p in model.named_parameters() if n in names}
    per_batch = per_batch_gradients(model, batches, names)
    scores = sb.score(model, batches, ["spiel_grad", "movement", "smt_block"], options={"block_size": 5})
    for n in names:
        abs_mean = sum(g[n].abs() for g in per_batch) / len(batches)
        torch.testing.assert_close(scores["spiel_grad"][n], abs_mean, rtol=1e-4, atol=1e-4 * float(abs_mean.max()))
        move = -sum(weights[n] * g[n] for g in per_batch)
        torch.testing.assert_close(scores["movement"][n], move, rtol=1e-4, atol=1e-4 * float(move.abs().max()))
        gbar = sum(g[n] for g in per_batch) / len(batches)
        expected = torch.empty_like(gbar)
        rows, cols = gbar.shape
        for r0 in range(0, rows, 5):  # plain loops over every tile, edge tiles included
            for c0 in range(0, cols, 5):
                expected[r0:r0 + 5, c0:c0 + 5] = gbar[r0:r0 + 5, c0:c0 + 5].abs().sum()
        torch.testing.assert_close(scores["smt_block"][n], expected, rtol=1e-4, atol=1e-4 * float(expected.max()))


def test_grasp_matches_finite_difference_hessian_vector_products():
    model = tiny_bert(dtype=torch.float64)
    batches = tiny_batches(num_batches=2)
    names = block_linear_weights(model)[:3]
    params = dict(model.named_parameters())
    gbar = mean_gradient(model, batches, names)
    eps = 1e-4

    def grads_at(sign):
        with torch.no_grad():
            for n in names:
                params[n].add_(sign * eps * gbar[n].double())
        g = mean_gradient(model, batches, names)
        with torch.no_grad():
            for n in names:
                params[n].sub_(sign * eps * gbar[n].double())
        return g

    plus, minus = grads_at(+1), grads_at(-1)
    scores = sb.score(model, batches, ["grasp"], include=names)["grasp"]
    for n in names:
        hv = (plus[n].double() - minus[n].double()) / (2 * eps)
        expected = (-(params[n].detach() * hv)).float()
        torch.testing.assert_close(scores[n], expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))


def linearised_copy(model):
    """Independent construction: a float64 copy with |W|, and its nonlinear modules swapped for nn.Identity."""
    twin = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in twin.parameters():
            p.abs_()
    bert = twin.bert
    bert.embeddings.LayerNorm = nn.Identity()
    for layer in bert.encoder.layer:
        layer.attention.output.LayerNorm = nn.Identity()
        layer.intermediate.intermediate_act_fn = nn.Identity()
        layer.output.LayerNorm = nn.Identity()
    bert.pooler.activation = nn.Identity()
    return twin


def test_synflow_matches_finite_differences_and_restores_the_model_exactly(model):
    model.eval()
    batch = tiny_batches()[0]
    before_out = model(**batch).logits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = sb.score(model, None, ["synflow"])["synflow"]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert torch.equal(model(**batch).logits, before_out)

    twin = linearised_copy(model)
    ones = torch.ones(1, 8, model.config.hidden_size, dtype=torch.float64)

    def total():
        return twin(inputs_embeds=ones, attention_mask=torch.ones(1, 8, dtype=torch.long)).logits.sum().item()

    g = torch.Generator().manual_seed(0)
    twin_params = dict(twin.named_parameters())
    raw = {n: torch.exp(s.double()) for n, s in scores.items()}  # synflow is reported as a log
    # Saturated attention makes some scores ~1e-7 of the largest: below what differences resolve.
    resolution = 1e-7 * max(float(s.max()) for s in raw.values())
    for name in block_linear_weights(model)[::3]:
        w = twin_params[name]
        for flat in torch.randint(0, w.numel(), (4,), generator=g).tolist():
            h = 1e-6 * max(1.0, w.view(-1)[flat].item())
            with torch.no_grad():
                w.view(-1)[flat] += h
                up = total()
                w.view(-1)[flat] -= 2 * h
                down = total()
                w.view(-1)[flat] += h
            expected = abs(w.view(-1)[flat].item() * (up - down) / (2 * h))
            assert raw[name].view(-1)[flat].item() == pytest.approx(expected, rel=1e-4, abs=resolution), (name, flat)


def test_wanda_matches_unpadded_per_example_activations(model, batches):
    names = block_linear_weights(model)
    modules = {n: m for n, m in model.named_modules() if n + ".weight" in names}
    sums = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in modules.items()}

    def record(name):
        def hook(module, inputs, output):  # returns None: a returned value would replace the output
            sums[name].add_(inputs[0].double().pow(2).sum(dim=(0, 1)))

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in modules.items()]
    model.eval()
    with torch.no_grad():
        for batch in batches:
            for i in range(batch["labels"].shape[0]):
                length = int(batch["attention_mask"][i].sum())
                model(**{k: v[i : i + 1, :length] for k, v in batch.items() if k != "labels"})
    for h in handles:
        h.remove()
    scores = sb.score(model, batches, ["wanda"])["wanda"]
    params = dict(model.named_parameters())
    for n, m in modules.items():
        expected = (params[n + ".weight"].detach().double().abs() * sums[n].sqrt()).float()
        torch.testing.assert_close(scores[n + ".weight"], expected, rtol=1e-4, atol=1e-6 * float(expected.max()))


def test_jacob_cov_matches_a_per_example_numpy_reference(model, batches):
    model.eval()
    values = []
    for batch in batches:
        rows = []
        for i in range(batch["labels"].shape[0]):
            ids = batch["input_ids"][i : i + 1]
            emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            out = model(inputs_embeds=emb, attention_mask=batch["attention_mask"][i : i + 1],
                        token_type_ids=batch["token_type_ids"][i : i + 1]).logits.sum()
            (g,) = torch.autograd.grad(out, [emb])
            rows.append(g.reshape(-1).double().numpy())
        eig = np.linalg.eigvalsh(np.corrcoef(np.stack(rows)))
        values.append(-np.sum(np.log(eig + 1e-5) + 1.0 / (eig + 1e-5)))
    result = sb.score(model, batches, ["jacob_cov"])["jacob_cov"]
    assert list(result) == ["network"]
    assert float(result["network"]) == pytest.approx(np.mean(values), rel=1e-4)
    assert not sb.get_scorer("jacob_cov").maskable


def test_lift_equals_numpy_truncated_svd(model):
    scores = sb.score(model, None, ["lift"], options={"lift_rank": 4})["lift"]
    for n, p in model.named_parameters():
        if n in scores:
            u, s, vh = np.linalg.svd(p.detach().double().numpy(), full_matrices=False)
            expected = np.abs((u[:, :4] * s[:4]) @ vh[:4])
            np.testing.assert_allclose(scores[n].numpy(), expected, rtol=1e-4, atol=1e-5 * expected.max())
    # The randomized route for large matrices recovers a low-rank matrix.
    g = torch.Generator().manual_seed(0)
    low = torch.randn(5000, 3, generator=g) @ torch.randn(3, 40, generator=g)
    torch.testing.assert_close(low_rank_approximation(low, 3), low, rtol=1e-3, atol=1e-3)


def test_every_metric_gives_float32_scores_for_a_bf16_model():
    model = tiny_bert(dtype=torch.bfloat16)
    scores = sb.score(model, tiny_batches(), "all")
    params = dict(model.named_parameters())
    for metric, per in scores.items():
        for n, s in per.items():
            assert s.dtype == torch.float32, metric
            if n != "network":
                assert s.shape == params[n].shape
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
