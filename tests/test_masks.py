import math

import pytest
import torch

import salience_bench as sb
from salience_bench.masks import top_k_mask


def random_scores(seed=0, shapes=((40, 30), (17,), (5, 5, 4), (64, 8)), integer=False):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, shape in enumerate(shapes):
        s = torch.randn(shape, generator=g)
        out[f"t{i}"] = (s * 3).round() if integer else s
    return out


def brute_force_top_k(scores, k):
    """Sort (score descending, tensor order, flat index) in plain Python and take the first k."""
    entries = []
    for t, (name, s) in enumerate(scores.items()):
        for i, v in enumerate(s.reshape(-1).tolist()):
            entries.append((-v, t, i, name))
    entries.sort()
    chosen = {name: torch.zeros(s.numel(), dtype=torch.bool) for name, s in scores.items()}
    for _, _, i, name in entries[:k]:
        chosen[name][i] = True
    return {name: m.reshape(scores[name].shape) for name, m in chosen.items()}


def count(mask):
    return sum(int(m.sum()) for m in mask.values())


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("k", [1, 2, 50, 333, 1200, 1828, 1829])
def test_global_top_k_equals_brute_force_including_ties(k, integer):
    scores = random_scores(integer=integer)
    mask = sb.make_mask(scores, k=k)
    expected = brute_force_top_k(scores, k)
    assert count(mask) == k
    for name in scores:
        assert mask[name].dtype == torch.bool and mask[name].shape == scores[name].shape
        assert torch.equal(mask[name], expected[name]), name


@pytest.mark.parametrize("density", [1e-4, 0.001, 0.01, 0.0375, 0.5, 0.999, 1.0])
def test_density_selects_exactly_round_d_n(density):
    scores = random_scores(seed=1, shapes=((300, 200), (1000,), (77, 13)))
    total = sum(s.numel() for s in scores.values())
    expected = round(density * total)
    if expected == 0:
        with pytest.raises(sb.SalienceBenchError, match="selects 0"):
            sb.make_mask(scores, density=density)
        return
    assert count(sb.make_mask(scores, density=density)) == expected


def test_layer_scope_keeps_each_tensor_fraction():
    scores = random_scores(seed=2)
    density = 0.1
    mask = sb.make_mask(scores, density=density, scope="layer")
    for name, s in scores.items():
        assert int(mask[name].sum()) == round(density * s.numel())
        assert torch.equal(mask[name], brute_force_top_k({name: s}, round(density * s.numel()))[name])


def test_all_ties_take_earliest_positions():
    scores = {"a": torch.zeros(10), "b": torch.ones(3), "c": torch.zeros(5)}
    mask = sb.make_mask(scores, k=6)
    assert mask["b"].all()
    assert mask["a"].tolist() == [True] * 3 + [False] * 7
    assert not mask["c"].any()


def test_signed_zero_negative_and_extreme_values():
    scores = {"a": torch.tensor([-0.0, 0.0, -1.0, -3e38, 3e38, 1e-45, -1e-45])}
    # 3e38 > 1e-45 > +0 == -0 (equal, so the earlier position wins) > ...
    assert sb.make_mask(scores, k=4)["a"].tolist() == [True, True, False, False, True, True, False]
    assert sb.make_mask(scores, k=3)["a"].tolist() == [True, False, False, False, True, True, False]


def test_masks_are_bitwise_deterministic():
    scores = random_scores(seed=3, integer=True)
    first = sb.make_mask(scores, density=0.2)
    for _ in range(3):
        again = sb.make_mask({n: s.clone() for n, s in scores.items()}, density=0.2)
        assert all(torch.equal(first[n], again[n]) for n in scores)


def test_global_mask_never_concatenates_scores(monkeypatch):
    scores = random_scores(seed=4)

    def forbidden(*args, **kwargs):
        raise AssertionError("make_mask must stream over tensors, not concatenate them")

    monkeypatch.setattr(torch, "cat", forbidden)
    monkeypatch.setattr(torch, "concat", forbidden)
    monkeypatch.setattr(torch, "stack", forbidden)
    assert count(sb.make_mask(scores, density=0.05)) == round(0.05 * 1829)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"density": 0.0}, "must be in"),
        ({"density": -0.1}, "must be in"),
        ({"density": 1.5}, "must be in"),
        ({"density": math.nan}, "must be in"),
        ({"k": 0}, "between 1 and"),
        ({"k": 10**9}, "k=1000000000 is larger than the 1829 eligible weights"),
        ({"k": 2.5}, "between 1 and"),
        ({"density": 0.1, "k": 5}, "exactly one"),
        ({}, "exactly one"),
        ({"density": 0.1, "scope": "rows"}, "unknown scope"),
        ({"k": 5, "scope": "layer"}, "global count"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(sb.SalienceBenchError, match=message):
        sb.make_mask(random_scores(), **kwargs)


def test_non_finite_scores_are_rejected():
    with pytest.raises(sb.SalienceBenchError, match="'b' contain NaN or inf"):
        sb.make_mask({"a": torch.ones(3), "b": torch.tensor([1.0, math.nan])}, density=0.5)
    with pytest.raises(sb.SalienceBenchError, match="empty"):
        sb.make_mask({}, density=0.5)


def test_top_k_mask_directly_rejects_impossible_k():
    with pytest.raises(sb.SalienceBenchError):
        top_k_mask({"a": torch.ones(3)}, 4)


def test_row_structure_equals_per_row_brute_force():
    scores = random_scores(seed=5, shapes=((12, 30), (7, 9)), integer=True)
    mask = sb.make_mask(scores, density=0.2, structure="row")
    for name, s in scores.items():
        per_row = round(0.2 * s.shape[1])
        for r in range(s.shape[0]):
            expected = brute_force_top_k({"row": s[r]}, per_row)["row"]
            assert torch.equal(mask[name][r], expected), (name, r)


def test_nm_structure_keeps_n_of_every_m():
    scores = random_scores(seed=6, shapes=((8, 16), (5, 10)), integer=True)
    mask = sb.make_mask(scores, structure="nm", nm=(2, 4))
    for name, s in scores.items():
        for r in range(s.shape[0]):
            for start in range(0, s.shape[1], 4):
                group = s[r, start : start + 4]
                expected = brute_force_top_k({"g": group}, min(2, group.numel()))["g"]
                assert torch.equal(mask[name][r, start : start + 4], expected), (name, r, start)
    assert int(mask["t0"].sum()) == 8 * 16 // 2  # exact N/M where the width is a multiple of M
    assert int(mask["t1"].sum()) == 5 * (2 + 2 + 2)  # 10 = 4 + 4 + 2: the short tail group keeps 2 of 2


def test_block_structure_selects_whole_top_tiles():
    g = torch.Generator().manual_seed(7)
    scores = {"a": torch.rand(8, 12, generator=g), "b": torch.rand(6, 6, generator=g)}
    block = 4
    tiles = []  # (summed score, tensor order, tile order, name, r0, c0), by plain loops
    for t, (name, s) in enumerate(scores.items()):
        order = 0
        for r0 in range(0, s.shape[0], block):
            for c0 in range(0, s.shape[1], block):
                tiles.append((-float(s[r0:r0 + block, c0:c0 + block].sum()), t, order, name, r0, c0))
                order += 1
    tiles.sort()
    n_tiles = round(0.4 * len(tiles))
    expected = {n: torch.zeros_like(s, dtype=torch.bool) for n, s in scores.items()}
    for _, _, _, name, r0, c0 in tiles[:n_tiles]:
        expected[name][r0:r0 + block, c0:c0 + block] = True
    mask = sb.make_mask(scores, density=0.4, structure="block", block_size=block)
    for name in scores:
        assert torch.equal(mask[name], expected[name]), name


def test_structure_errors():
    scores = random_scores()
    with pytest.raises(sb.SalienceBenchError, match="fixes the density"):
        sb.make_mask(scores, density=0.1, structure="nm")
    with pytest.raises(sb.SalienceBenchError, match="0 < N ≤ M"):
        sb.make_mask(scores, structure="nm", nm=(5, 4))
    with pytest.raises(sb.SalienceBenchError, match="unknown structure"):
        sb.make_mask(scores, density=0.1, structure="diagonal")
    with pytest.raises(sb.SalienceBenchError, match="use density, not k"):
        sb.make_mask(scores, k=10, structure="row")


def test_large_inputs_take_the_sampled_bracket_and_agree_with_radix_select():
    from salience_bench.masks import _bracketed_threshold, kth_largest_key, radix_kth_largest_key

    g = torch.Generator().manual_seed(8)
    scores = {f"t{i}": (torch.randn(n, generator=g) * 50).round() / 50 for i, n in enumerate((2_000_000, 1_500_000, 1_700_003))}
    flat = torch.cat(list(scores.values()))
    for k in (1, 1000, 52_000, 2_600_000, flat.numel()):
        fast = _bracketed_threshold(scores, k)
        assert fast is not None  # the sample brackets these
        assert fast == radix_kth_largest_key(scores, k)
        kth_value = torch.topk(flat, k).values[-1]
        assert int(flat.gt(kth_value).sum()) + fast[1] == k
    # A sample that sees only the small entries misses the bracket; the exact route answers.
    adversarial = torch.rand(5_000_000, generator=g) + 1.0
    adversarial[::5] = 0.0  # the sample takes every 5th score (5e6 / 2^20, rounded up): it sees only zeros
    assert _bracketed_threshold({"a": adversarial}, 1_000_000) is None
    assert kth_largest_key({"a": adversarial}, 1_000_000) == radix_kth_largest_key({"a": adversarial}, 1_000_000)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("structure", ["row", "nm"])
def test_row_and_nm_masks_follow_output_rows_whatever_the_weight_layout(tiny_causal_dirs, arch, structure):
    """GPT-2's Conv1D stores its weight input × output: "every output row" is then a column of the stored tensor, and
    N:M groups run along the input dimension, its first. Checked per output row against a brute-force top-k."""
    spec = sb.MaskSpec(density=0.25, structure="row") if structure == "row" else sb.MaskSpec(structure="nm", nm=(2, 4))
    config = sb.CompareConfig(metrics=("magnitude",), model=str(tiny_causal_dirs[arch]), dataset="gsm8k", mask=spec)
    result = sb.run_comparison(config, tables=False)
    model, _ = sb.load_model_and_tokenizer(str(tiny_causal_dirs[arch]), task="causal-lm")
    modules = sb.models.linear_modules_for(model, sb.eligible_parameters(model))
    assert any(sb.models.weight_is_transposed(m) for m in modules.values()) == (arch == "gpt2")
    mask = result.masks["magnitude"]
    for name, module in modules.items():
        stored = module.weight.detach().abs()
        by_output = stored.T if sb.models.weight_is_transposed(module) else stored  # out × in
        selected = (mask[name].T if sb.models.weight_is_transposed(module) else mask[name]).cpu()  # GPU runs too
        width = by_output.shape[1]
        for row in range(by_output.shape[0]):
            groups = [(0, width)] if structure == "row" else [(s, s + 4) for s in range(0, width, 4)]
            for start, stop in groups:
                count = round(0.25 * width) if structure == "row" else 2
                expected = brute_force_top_k({"g": by_output[row, start:stop]}, count)["g"]
                assert torch.equal(selected[row, start:stop], expected), (name, row, start)


def test_a_new_structure_is_one_class_the_cli_lists(monkeypatch):
    from salience_bench.masks import structures
    from salience_bench.masks.select import _row_mask

    from salience_bench import cli_options

    monkeypatch.setattr(structures.MASK_STRUCTURES, "entries", dict(structures.MASK_STRUCTURES.entries))

    @structures.register_structure
    class Column(structures.MaskStructure):
        name = "column"
        help = "the same fraction of every input column"
        takes_k = False

        def select(self, spec, scope, scores, shapes, transposed):
            return structures._per_output_row(lambda s: _row_mask(s.T, spec.density).T, scores, shapes, transposed)

    scores = random_scores(seed=9, shapes=((12, 20),), integer=True)
    mask = sb.MaskSpec(density=0.25, structure="column").apply(scores)
    assert mask["t0"].sum(0).tolist() == [3] * 20  # round(0.25 · 12) of every column
    assert sb.MaskSpec(density=0.25, structure="column").describe() == "top-25.00% masks (global, column)"
    with pytest.raises(sb.SalienceBenchError, match="structure 'column' selects a fraction of every row; use density"):
        sb.MaskSpec(k=3, structure="column")
    parser = cli_options.build_parser()
    assert "column: the same fraction of every input column" in " ".join(parser.format_help().split())
    assert parser.parse_args(["--structure", "column"]).structure == "column"
