"""Every registered metric through the one shared contract tester, each against an independent reference."""

import copy
import functools
import zlib

import numpy as np
import pytest
import torch
from torch import nn

import salience_bench as sb

from .conftest import tiny_bert
from .reference import example_squared_gradient, input_squared_norms, mean_gradient, per_batch_gradients
from .scorer_tester import check_scorer


def weights(model, names):
    params = dict(model.named_parameters())
    return {n: params[n].detach() for n in names}


def from_mean_gradient(formula):
    def reference(model, batches, names):
        g, w = mean_gradient(model, batches, names), weights(model, names)
        return {n: formula(w[n], g[n]) for n in names}

    return reference


GRADIENT_FORMULAS = {
    "grad": lambda w, g: g.abs(),
    "snip": lambda w, g: (w * g).abs(),
    "plain": lambda w, g: w * g,
    "skeletonization": lambda w, g: -(w * g),
    "taylor_fo": lambda w, g: (w * g) ** 2,
    "grad_norm": lambda w, g: torch.full_like(w, float(torch.sqrt((g.double() ** 2).sum()))),
}


@pytest.mark.parametrize("metric", sorted(GRADIENT_FORMULAS))
def test_mean_gradient_metrics(metric):
    check_scorer(metric, from_mean_gradient(GRADIENT_FORMULAS[metric]),
                 bf16_min_spearman=0.8 if metric == "grad" else None)


def test_fisher_equals_a_one_example_at_a_time_loop():
    # Looser: batched padded attention vs unpadded single runs differ by float rounding.
    check_scorer("fisher", example_squared_gradient, rtol=2e-3, bf16_min_spearman=0.8)


def test_magnitude():
    check_scorer("magnitude", lambda model, batches, names: {n: w.abs() for n, w in weights(model, names).items()},
                 bf16_min_spearman=0.8)


def test_random_is_seeded_by_run_seed_and_tensor_name():
    def reference(model, batches, names):
        out = {}
        for n, w in weights(model, names).items():  # seed 0, CPU generator per tensor name
            g = torch.Generator().manual_seed(zlib.crc32(n.encode()) % (2**63))
            out[n] = torch.rand(w.shape, generator=g)
        return out

    check_scorer("random", reference, rtol=0)


def test_spiel_grad_and_movement_from_per_batch_gradients():
    def spiel(model, batches, names):
        per_batch = per_batch_gradients(model, batches, names)
        return {n: sum(g[n].abs() for g in per_batch) / len(batches) for n in names}

    def movement(model, batches, names):
        per_batch, w = per_batch_gradients(model, batches, names), weights(model, names)
        return {n: -sum(w[n] * g[n] for g in per_batch) for n in names}

    check_scorer("spiel_grad", spiel)
    check_scorer("movement", movement)


def test_smt_block_sums_every_tile_by_plain_loops():
    def reference(model, batches, names):
        gbar, out = mean_gradient(model, batches, names), {}
        for n in names:
            expected = torch.empty_like(gbar[n])
            rows, cols = gbar[n].shape
            for r0 in range(0, rows, 5):  # plain loops over every tile, edge tiles included
                for c0 in range(0, cols, 5):
                    expected[r0:r0 + 5, c0:c0 + 5] = gbar[n][r0:r0 + 5, c0:c0 + 5].abs().sum()
            out[n] = expected
        return out

    check_scorer("smt_block", reference, options={"block_size": 5})


def test_grasp_matches_finite_differences_over_every_linear_weight():
    """zero-cost-nas's GraSP: ḡ and H ḡ over every linear weight (head and pooler included), whatever is scored;
    the finite differences perturb all of those weights along ḡ."""

    def reference(model, batches, names):
        params = dict(model.named_parameters())
        linear = [n + ".weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        assert "classifier.weight" in linear and "bert.pooler.dense.weight" in linear
        eps = 1e-4
        gbar = mean_gradient(model, batches, linear)

        def grads_at(sign):
            with torch.no_grad():
                for n in linear:
                    params[n].add_(sign * eps * gbar[n].double())
            g = mean_gradient(model, batches, names)
            with torch.no_grad():
                for n in linear:
                    params[n].sub_(sign * eps * gbar[n].double())
            return g

        plus, minus = grads_at(+1), grads_at(-1)
        return {n: -(params[n].detach() * (plus[n].double() - minus[n].double()) / (2 * eps)) for n in names}

    names = ["bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.0.attention.self.key.weight",
             "bert.encoder.layer.0.attention.self.value.weight"]
    check_scorer("grasp", reference, rtol=1e-3, include=names, model_factory=functools.partial(tiny_bert, dtype=torch.float64))


def test_grasp_scores_do_not_depend_on_the_selection(model, batches):
    names = ["bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.1.output.dense.weight"]
    alone = sb.score(model, batches, ["grasp"], include=names)["grasp"]
    everything = sb.score(model, batches, ["grasp"])["grasp"]
    for n in names:
        torch.testing.assert_close(alone[n], everything[n], rtol=1e-5, atol=1e-9)


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


def synflow_total(twin, tokens=8):
    ones = torch.ones(1, tokens, twin.config.hidden_size, dtype=torch.float64)
    return twin(inputs_embeds=ones, attention_mask=torch.ones(1, tokens, dtype=torch.long)).logits.sum()


def test_synflow_equals_autograd_on_an_independently_linearised_twin():
    def reference(model, batches, names):
        twin = linearised_copy(model)
        params = dict(twin.named_parameters())
        grads = torch.autograd.grad(synflow_total(twin), [params[n] for n in names])
        # synflow is reported as log |W ⊙ ∂R/∂W| (raw values overflow float32); exact zeros as float32's lowest
        lowest = torch.finfo(torch.float32).min
        raw = {n: (params[n].detach() * g).abs() for n, g in zip(names, grads)}
        return {n: torch.where(r > 0, torch.log(r), lowest).float() for n, r in raw.items()}

    check_scorer("synflow", reference, rtol=1e-6, atol_scale=0)


def test_synflow_raw_values_match_finite_differences(model):
    scores = sb.score(model, None, ["synflow"])["synflow"]
    twin = linearised_copy(model)
    g = torch.Generator().manual_seed(0)
    twin_params = dict(twin.named_parameters())
    raw = {n: torch.exp(s.double()) for n, s in scores.items()}
    # Saturated attention makes some scores ~1e-7 of the largest: below what differences resolve.
    resolution = 1e-7 * max(float(s.max()) for s in raw.values())
    for name in list(scores)[::3]:
        w = twin_params[name]
        for flat in torch.randint(0, w.numel(), (4,), generator=g).tolist():
            h = 1e-6 * max(1.0, w.view(-1)[flat].item())
            with torch.no_grad():
                w.view(-1)[flat] += h
                up = synflow_total(twin).item()
                w.view(-1)[flat] -= 2 * h
                down = synflow_total(twin).item()
                w.view(-1)[flat] += h
            expected = abs(w.view(-1)[flat].item() * (up - down) / (2 * h))
            assert raw[name].view(-1)[flat].item() == pytest.approx(expected, rel=1e-4, abs=resolution), (name, flat)


def test_synflow_removes_batchnorm_on_a_cnn():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():  # running statistics far from the identity, so keeping BatchNorm would show
        for bn in (cnn[1], cnn[4]):
            bn.running_mean.uniform_(-2, 2)
            bn.running_var.uniform_(0.1, 5)
    cnn.eval()
    params = {n: p for n, p in cnn.named_parameters() if n in ("0.weight", "3.weight", "8.weight")}
    scores = sb.score(cnn, None, ["synflow"], params=params, options={"synflow_input_shape": "3,8,8"})["synflow"]
    twin = copy.deepcopy(cnn).double()
    with torch.no_grad():
        for p in twin.parameters():
            p.abs_()
    twin[1], twin[2], twin[4], twin[5] = nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity()
    twin_params = dict(twin.named_parameters())
    grads = torch.autograd.grad(twin(torch.ones(1, 3, 8, 8, dtype=torch.float64)).sum(), [twin_params[n] for n in params])
    for (n, _), g in zip(params.items(), grads):
        expected = torch.log((twin_params[n].detach() * g).abs()).float()
        torch.testing.assert_close(scores[n], expected, rtol=1e-6, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(cnn.state_dict().values(), copy.deepcopy(cnn).state_dict().values()))
    with pytest.raises(sb.SalienceBenchError, match="synflow_input_shape"):
        sb.score(cnn, None, ["synflow"], params=params)
    with pytest.raises(sb.SalienceBenchError, match="synflow_input_shape '3,x' must be comma-separated sizes ≥ 1"):
        sb.score(cnn, None, ["synflow"], params=params, options={"synflow_input_shape": "3,x"})


def test_synflow_refuses_more_tokens_than_positions(model):
    with pytest.raises(sb.SalienceBenchError, match="synflow_tokens 65 is longer than the model's 64 positions"):
        sb.score(model, None, ["synflow"], options={"synflow_tokens": 65})


def test_synflow_swaps_modules_instead_of_patching_forward(model):
    from salience_bench.scorers.whole_model import linearised

    layer_norm = model.bert.embeddings.LayerNorm
    with linearised(model) as swapped:
        assert "bert.embeddings.LayerNorm" in swapped
        assert model.bert.embeddings.LayerNorm is not layer_norm
        assert "forward" not in vars(layer_norm)
    assert model.bert.embeddings.LayerNorm is layer_norm


def test_wanda_matches_unpadded_per_example_activations():
    def reference(model, batches, names):
        sums = input_squared_norms(model, batches, names)  # Σ x_j² over real tokens, one example at a time
        return {n: w.double().abs() * sums[n].sqrt() for n, w in weights(model, names).items()}

    check_scorer("wanda", reference, atol_scale=1e-6)


def test_jacob_cov_matches_a_per_example_numpy_reference():
    def reference(model, batches, names):
        model.eval()
        values = []
        for batch in batches:
            rows = []
            for i in range(batch["labels"].shape[0]):
                emb = model.get_input_embeddings()(batch["input_ids"][i : i + 1]).detach().requires_grad_(True)
                out = model(inputs_embeds=emb, attention_mask=batch["attention_mask"][i : i + 1],
                            token_type_ids=batch["token_type_ids"][i : i + 1]).logits.sum()
                (g,) = torch.autograd.grad(out, [emb])
                rows.append(g.reshape(-1).double().numpy())
            eig = np.linalg.eigvalsh(np.corrcoef(np.stack(rows)))
            values.append(-np.sum(np.log(eig + 1e-5) + 1.0 / (eig + 1e-5)))
        return float(np.mean(values))

    check_scorer("jacob_cov", reference)


def test_lift_equals_numpy_truncated_svd():
    def reference(model, batches, names):
        out = {}
        for n, w in weights(model, names).items():
            u, s, vh = np.linalg.svd(w.double().numpy(), full_matrices=False)
            out[n] = torch.from_numpy(np.abs((u[:, :4] * s[:4]) @ vh[:4]))
        return out

    check_scorer("lift", reference, options={"lift_rank": 4}, atol_scale=1e-5)


def test_lift_randomized_route_recovers_a_low_rank_matrix():
    from salience_bench.scorers.lowrank import low_rank_approximation

    g = torch.Generator().manual_seed(0)
    low = torch.randn(5000, 3, generator=g) @ torch.randn(3, 40, generator=g)
    torch.testing.assert_close(low_rank_approximation(low, 3), low, rtol=1e-3, atol=1e-3)


def test_every_registered_metric_has_a_contract_test():
    tested = {*GRADIENT_FORMULAS, "fisher", "magnitude", "random", "spiel_grad", "movement", "smt_block", "grasp",
              "synflow", "wanda", "jacob_cov", "lift"}
    assert set(sb.list_metrics()) == tested
