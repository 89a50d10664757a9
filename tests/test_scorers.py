import pytest
import torch

import salience_bench as sb
from salience_bench.scorers import registry

from .conftest import tiny_batches, tiny_bert
from .reference import block_linear_weights, example_squared_gradient, mean_gradient

GRADIENT_FORMULAS = {
    "grad": lambda w, g: g.abs(),
    "snip": lambda w, g: (w * g).abs(),
    "plain": lambda w, g: w * g,
    "skeletonization": lambda w, g: -(w * g),
    "taylor_fo": lambda w, g: (w * g) ** 2,
    "grad_norm": lambda w, g: torch.full_like(w, float(torch.sqrt((g.double() ** 2).sum()))),
}


def assert_close_dicts(actual, expected, rtol=1e-4):
    """Close entry by entry, with the absolute slack scaled to each tensor's largest value."""
    assert list(actual) == list(expected)
    for name in expected:
        assert actual[name].dtype == torch.float32
        scale = float(expected[name].abs().max())
        assert scale > 0, name
        torch.testing.assert_close(actual[name], expected[name], rtol=rtol, atol=rtol * scale, msg=name)


def test_gradient_metrics_match_autograd_reference(model, batches):
    names = block_linear_weights(model)
    ref_grad = mean_gradient(model, batches, names)
    weights = {n: p.detach() for n, p in model.named_parameters() if n in names}
    scores = sb.score(model, batches, list(GRADIENT_FORMULAS))
    for metric, formula in GRADIENT_FORMULAS.items():
        expected = {n: formula(weights[n], ref_grad[n]) for n in names}
        assert_close_dicts(scores[metric], expected)


def test_fisher_matches_per_example_loop(model, batches):
    names = block_linear_weights(model)
    expected = example_squared_gradient(model, batches, names)
    scores = sb.score(model, batches, ["fisher"])
    # Looser: batched padded attention vs unpadded single runs differ by float rounding.
    assert_close_dicts(scores["fisher"], expected, rtol=2e-3)


def test_fisher_is_not_the_square_of_the_mean_gradient(model, batches):
    # Guards against a per-batch (instead of per-example) implementation.
    names = block_linear_weights(model)
    batch_sq = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n in names}
    for b in batches:
        g = mean_gradient(model, [b], names)
        for n in names:
            batch_sq[n] += g[n] ** 2 / len(batches)
    fisher = sb.score(model, batches, ["fisher"])["fisher"]
    name = names[0]
    assert not torch.allclose(fisher[name], batch_sq[name], rtol=0.1, atol=0)


def test_magnitude_and_random(model):
    names = block_linear_weights(model)
    params = dict(model.named_parameters())
    scores = sb.score(model, None, ["magnitude", "random"], seed=3)
    for n in names:
        assert torch.equal(scores["magnitude"][n], params[n].detach().abs())
        r = scores["random"][n]
        assert r.shape == params[n].shape and 0 <= r.min() and r.max() < 1
    again = sb.score(model, None, ["random"], seed=3)["random"]
    other = sb.score(model, None, ["random"], seed=4)["random"]
    assert all(torch.equal(again[n], scores["random"][n]) for n in names)
    assert not torch.equal(other[names[0]], scores["random"][names[0]])
    # A tensor's random scores do not depend on which other tensors are scored.
    alone = sb.score(model, None, ["random"], seed=3, include=[names[-1]])["random"]
    assert torch.equal(alone[names[-1]], scores["random"][names[-1]])


def test_all_gradient_metrics_share_one_pass(model, batches):
    forwards = []
    handle = model.register_forward_hook(lambda *a: forwards.append(1))
    sb.score(model, batches, ["grad", "snip", "plain", "taylor_fo", "magnitude", "fisher"])
    handle.remove()
    assert len(forwards) == len(batches)


def test_scoring_restores_model_state(model, batches):
    model.train()
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sb.score(model, batches, ["grad", "fisher"])
    assert model.training
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if "word_embeddings" not in n)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_bf16_model_gives_float32_scores_close_to_fp32():
    batches = tiny_batches()
    fp32 = sb.score(tiny_bert(), batches, ["grad", "fisher", "magnitude"])
    bf16 = sb.score(tiny_bert(dtype=torch.bfloat16), batches, ["grad", "fisher", "magnitude"])
    for metric in fp32:
        for n in fp32[metric]:
            assert bf16[metric][n].dtype == torch.float32
        a = torch.cat([t.reshape(-1) for t in fp32[metric].values()])
        b = torch.cat([t.reshape(-1) for t in bf16[metric].values()])
        assert sb.spearman(a, b) > 0.8, metric


def test_registry_names_aliases_and_errors():
    names = sb.list_metrics()
    assert names == sorted(names)
    for expected in ["random", "magnitude", "grad", "snip", "plain", "skeletonization", "taylor_fo", "fisher", "grad_norm"]:
        assert expected in names
    assert sb.resolve_metrics("gradient,saliency,fisher_info,Taylor-FO") == ["grad", "snip", "fisher", "taylor_fo"]
    assert sb.resolve_metrics("grad*") == ["grad", "grad_norm"]
    assert sb.resolve_metrics("all") == names
    with pytest.raises(sb.SalienceBenchError, match="Did you mean 'snip'"):
        sb.resolve_metrics("snp")
    with pytest.raises(sb.SalienceBenchError, match="matches no metric"):
        sb.resolve_metrics("zzz*")
    with pytest.raises(ValueError, match="already registered"):
        sb.register("grad")(lambda t: t.weight)


def test_register_a_new_metric_and_nan_scores_are_rejected(model, batches, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", registry._Registry(dict(registry._REGISTRY.scorers), dict(registry._REGISTRY.aliases)))

    @sb.register("grad_squared", needs={registry.MEAN_GRAD})
    def grad_squared(t):
        """ḡ²."""
        return t.mean_grad.square()

    @sb.register("broken")
    def broken(t):
        """always NaN."""
        return torch.full_like(t.weight, float("nan"))

    scores = sb.score(model, batches, ["grad", "grad_squared"])
    for n, s in scores["grad"].items():
        torch.testing.assert_close(scores["grad_squared"][n], s**2)
    assert ("grad_squared", "", "ḡ².") in sb.describe_metrics()
    with pytest.raises(sb.SalienceBenchError, match="NaN/inf"):
        sb.score(model, None, ["broken"])


def test_bad_inputs(model, batches):
    with pytest.raises(sb.SalienceBenchError, match="empty"):
        sb.score(model, [], ["grad"])
    with pytest.raises(sb.SalienceBenchError, match="need scoring batches"):
        sb.score(model, None, ["grad"])
    unlabeled = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    with pytest.raises(sb.SalienceBenchError, match="no .loss"):
        sb.score(model, unlabeled, ["grad"])
    with pytest.raises(sb.SalienceBenchError, match="not one"):
        sb.score(model, batches, ["fisher"], include=["*LayerNorm.weight"])
