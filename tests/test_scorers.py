import pytest
import torch

import salience_bench as sb
from salience_bench.accumulators import base as accumulator_base
from salience_bench.scorers import registry

from .conftest import tiny_batches, tiny_bert
from .reference import block_linear_weights, mean_gradient
from .scorer_tester import check_scorer


@pytest.fixture
def fresh_registry(monkeypatch):
    """Registrations made by a test vanish with it."""
    monkeypatch.setattr(registry, "_REGISTRY", registry._REGISTRY.copy())
    monkeypatch.setattr(accumulator_base, "_ACCUMULATORS", accumulator_base._ACCUMULATORS.copy())


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


def test_all_gradient_metrics_share_one_pass(model, batches):
    forwards = []
    handle = model.register_forward_hook(lambda *a: forwards.append(1))
    sb.score(model, batches, ["grad", "snip", "plain", "taylor_fo", "magnitude", "fisher", "spiel_grad", "wanda"])
    handle.remove()
    assert len(forwards) == len(batches)


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_gradients_are_folded_in_and_freed_as_they_arrive(model, batches):
    """No full set of .grad tensors exists at once: each is freed as soon as the accumulators have it."""
    params = sb.eligible_parameters(model)
    alive = []

    def watch(module, grad_input, grad_output):
        alive.append(sum(p.grad is not None for p in params.values()))

    handles = [m.register_full_backward_hook(watch) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    sb.score(model, batches, ["grad", "spiel_grad"])
    for h in handles:
        h.remove()
    assert alive and max(alive) <= 1


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
    with pytest.raises(ValueError, match="unknown accumulators"):
        sb.register("needs_nothing_real", needs={"no_such_accumulator"})


def test_scorer_options_are_typed_and_checked(model, batches):
    assert set(sb.scorer_options()) >= {"lift_rank", "block_size", "synflow_tokens"}
    with pytest.raises(sb.SalienceBenchError, match="unknown scorer option 'lift_rnk'. Did you mean 'lift_rank'"):
        sb.score(model, None, ["lift"], options={"lift_rnk": 4})
    with pytest.raises(sb.SalienceBenchError, match="lift_rank=0 must be ≥ 1"):
        sb.score(model, None, ["lift"], options={"lift_rank": 0})
    with pytest.raises(sb.SalienceBenchError, match="block_size='8' must be an integer"):
        sb.score(model, batches, ["smt_block"], options={"block_size": "8"})
    forwards = []
    model.register_forward_hook(lambda *a: forwards.append(1))
    with pytest.raises(sb.SalienceBenchError, match=r"block size 100000 \(smt_block\) is larger than every eligible tensor"):
        sb.score(model, batches, ["smt_block"], options={"block_size": 100_000})
    assert not forwards  # refused before the scoring pass


def register_grad_squared():
    """A new metric, registered at module level so that the tester's spawned processes can register it too."""

    @sb.register("grad_squared", needs={"mean_grad"})
    def grad_squared(t):
        """ḡ²."""
        return t.mean_grad.square()


def test_a_new_metric_is_one_registration_and_one_tester_call(fresh_registry):
    register_grad_squared()
    check_scorer("grad_squared", lambda model, batches, names: {n: g**2 for n, g in mean_gradient(model, batches, names).items()},
                 registrar=register_grad_squared)
    assert ("grad_squared", "", "ḡ².") in sb.describe_metrics()


def test_a_new_accumulator_is_one_class(fresh_registry, model, batches):
    @sb.register_accumulator
    class GradientSquares(sb.Accumulator):
        name = "grad_sq_sum"

        def __init__(self, model, params):
            super().__init__(model, params)
            self.sums = {n: self.zeros(p.shape) for n, p in self.params.items()}

        def add_gradient(self, name, grad):
            self.sums[name].add_(grad.square())

        def to_all_reduce(self):
            return list(self.sums.values())

        def finalize(self, num_batches):
            return {n: s / num_batches for n, s in self.sums.items()}

    @sb.register("batch_fisher", needs={"grad_sq_sum"})
    def batch_fisher(t):
        """(1/B) Σ_b g_b²."""
        return t.grad_sq_sum

    names = block_linear_weights(model)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n in names}
    for b in batches:
        for n, g in mean_gradient(model, [b], names).items():
            expected[n] += g**2 / len(batches)
    scores = sb.score(model, batches, ["batch_fisher", "grad"])
    for n in names:
        torch.testing.assert_close(scores["batch_fisher"][n], expected[n], rtol=1e-4, atol=1e-8)


def test_network_level_scores_are_kept_apart(model, batches):
    scores = sb.score(model, batches, ["grad", "jacob_cov"])
    assert list(scores) == ["grad"] and list(scores.network) == ["jacob_cov"]
    assert isinstance(scores.network["jacob_cov"], float)


def test_nan_scores_are_rejected(fresh_registry, model):
    @sb.register("broken")
    def broken(t):
        """always NaN."""
        return torch.full_like(t.weight, float("nan"))

    scores = sb.score(model, None, ["broken"])  # computed when read: refused where consumed
    with pytest.raises(sb.SalienceBenchError, match="contain NaN or inf"):
        sb.make_mask(scores["broken"], density=0.1)
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight[0, 0] = float("nan")
    with pytest.raises(sb.SalienceBenchError, match="the weights hold 1 NaN/inf values in 'bert.encoder.layer.0"):
        sb.score(model, None, ["magnitude"])


def test_bad_inputs(model, batches):
    with pytest.raises(sb.SalienceBenchError, match="empty"):
        sb.score(model, [], ["grad"])
    with pytest.raises(sb.SalienceBenchError, match="need scoring batches"):
        sb.score(model, None, ["grad"])
    unlabeled = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    for metric in ("grad", "grasp"):  # the accumulation pass and a model scorer's own passes alike
        with pytest.raises(sb.SalienceBenchError, match="no .loss"):
            sb.score(model, unlabeled, [metric])
    with pytest.raises(sb.SalienceBenchError, match="scoring batch 0 is a Tensor"):
        sb.score(model, [batches[0]["input_ids"]], ["jacob_cov"])
    with pytest.raises(sb.SalienceBenchError, match="not one"):
        sb.score(model, batches, ["fisher"], include=["*LayerNorm.weight"])


def test_an_accumulator_can_run_after_another(fresh_registry, model, batches):
    """A second pass that needs ḡ first: the centred second moment (1/B) Σ_b (g_b − ḡ)²."""

    # The per-batch mean of a function of the gradient, as the built-in ḡ and mean |g_b| accumulators.
    from salience_bench.accumulators.gradient_means import _BatchGradientMean

    @sb.register_accumulator
    class CentredSquares(_BatchGradientMean):
        name = "centred_sq"
        after = ("mean_grad",)

        def begin(self, earlier):
            self.mean = earlier["mean_grad"]

        def add_gradient(self, name, grad):
            self.sums[name].add_((grad - self.mean[name]).square())

    @sb.register("grad_variance", needs={"centred_sq"})
    def grad_variance(t):
        """(1/B) Σ_b (g_b − ḡ)²."""
        return t.centred_sq

    names = block_linear_weights(model)
    per_batch = [mean_gradient(model, [b], names) for b in batches]
    scores = sb.score(model, batches, ["grad_variance"])["grad_variance"]
    for n in names:
        gbar = sum(g[n] for g in per_batch) / len(batches)
        expected = sum((g[n] - gbar) ** 2 for g in per_batch) / len(batches)
        torch.testing.assert_close(scores[n], expected, rtol=1e-3, atol=1e-3 * float(expected.max()))


@pytest.mark.parametrize("deterministic", [True, False])
def test_scoring_pass_runs_with_deterministic_kernels_and_restores_the_setting(deterministic):
    """Deterministic kernels make each batch's GPU gradient repeat bit for bit (fused attention backward kernels
    add in a varying order otherwise): on for the pass by default, and the caller's setting back afterwards."""
    model = tiny_bert()
    seen = []
    handle = model.register_forward_hook(lambda *_: seen.append(torch.are_deterministic_algorithms_enabled()))
    before = torch.are_deterministic_algorithms_enabled()
    try:
        sb.score(model, tiny_batches(num_batches=2), ["grad"], deterministic=deterministic).materialize()
    finally:
        handle.remove()
    assert seen and all(s == deterministic for s in seen)
    assert torch.are_deterministic_algorithms_enabled() == before


def test_score_cache_computes_each_tensor_once_within_its_byte_bound(fresh_registry, model, batches):
    computed = []

    @sb.register("counted_grad", needs={"mean_grad"})
    def counted_grad(t):
        """|ḡ|, counting its computations."""
        computed.append(t.name)
        return t.mean_grad.abs()

    def run(**kwargs):
        computed.clear()
        scores = sb.score(model, batches, ["counted_grad", "snip"], **kwargs)
        masks = sb.make_mask(scores["counted_grad"], density=0.1)  # reads every tensor (twice: finite check, top-k)
        table = sb.analysis.rank_correlation_frame(scores)  # per layer, globally, and Kendall's sample
        return scores, masks, table, list(computed)

    scores, masks, table, cached = run()
    names = list(scores["counted_grad"])
    assert sorted(cached) == sorted(names)  # the default cache holds a tiny model's scores: each computed once
    _, masks_again, table_again, uncached = run(cache_bytes=0)
    assert len(uncached) >= 4 * len(names)  # without it every read computes
    assert all(torch.equal(masks[n], masks_again[n]) for n in names) and table.equals(table_again)
    one_tensor = max(p.numel() for n, p in model.named_parameters() if n in names) * 4
    bounded, _, _, counted = run(cache_bytes=one_tensor)
    assert len(cached) < len(counted) < len(uncached)
    cache = bounded["counted_grad"].cache
    assert 0 < cache.bytes <= one_tensor and cache.computed > len(counted)  # snip's computations counted too
    weight = dict(model.named_parameters())[names[0]]
    before = scores["snip"][names[0]]
    with torch.no_grad():
        weight.mul_(2)  # an in-place change of the weight: snip = |W ⊙ ḡ| is computed again
    torch.testing.assert_close(scores["snip"][names[0]], 2 * before)
