import pytest

import salience_bench as sb

from .reference import block_linear_weights


def test_default_selection_is_block_linear_weights(model):
    names = list(sb.eligible_parameters(model))
    assert names == block_linear_weights(model)
    assert len(names) == 2 * 6
    assert not any(("bias" in n) or ("LayerNorm" in n) or ("embeddings" in n) or ("classifier" in n) or ("pooler" in n) for n in names)


def test_include_and_exclude_globs(model):
    q = sb.eligible_parameters(model, include=["*attention.self.query.weight"])
    assert list(q) == ["bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.1.attention.self.query.weight"]
    no_ffn = sb.eligible_parameters(model, exclude=["*intermediate*", "*.output.dense.weight"])
    assert len(no_ffn) == 2 * 4 - 2  # attention.output.dense matches the second pattern too
    with pytest.raises(sb.SalienceBenchError, match="no eligible tensors"):
        sb.eligible_parameters(model, include=["nothing*"])


def test_bundled_model_loads_offline_with_a_new_head():
    model, tok = sb.load_model_and_tokenizer("bundled", num_labels=4, seed=0)
    assert model.config.num_labels == 4
    params = sb.eligible_parameters(model)
    assert len(params) == 36 and sum(p.numel() for p in params.values()) == 10_616_832
    again, _ = sb.load_model_and_tokenizer("bundled", num_labels=4, seed=0)
    assert (again.classifier.weight == model.classifier.weight).all()


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(sb.SalienceBenchError, match="model folder .* does not exist"):
        sb.load_model_and_tokenizer(str(tmp_path / "missing"))


def test_a_checkpoint_with_another_head_size_loads_with_a_new_head(tiny_model_dir):
    model, _ = sb.load_model_and_tokenizer(str(tiny_model_dir), num_labels=4, seed=0)
    assert model.classifier.out_features == 4


def test_a_new_model_source_is_one_class(monkeypatch, tiny_model_dir):
    from salience_bench import sources
    from salience_bench.cli_options import build_parser

    monkeypatch.setattr(sources.MODEL_SOURCES, "entries", dict(sources.MODEL_SOURCES.entries))
    hub = sources.MODEL_SOURCES.entries.pop("hub")  # the catch-all stays last

    @sources.register_source
    class Zoo(sources.ModelSource):
        name = "zoo"
        help = "zoo:NAME (a model from the test's zoo)"

        def resolve(self, model, *, log=None):
            return str(tiny_model_dir) if model == "zoo:tiny" else None

    sources.MODEL_SOURCES.entries["hub"] = hub
    assert sb.models.check_model_name("zoo:tiny") == str(tiny_model_dir)
    model, _ = sb.load_model_and_tokenizer("zoo:tiny")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert "zoo:NAME (a model from the test's zoo)" in " ".join(build_parser().format_help().split())
