"""The task head every method trains densely is what from_pretrained initialised anew, whatever it is called."""

import pytest
import torch

import salience_bench as sb
from salience_bench.training import TrainConfig
from salience_bench.training.methods import RunSetup, get_method, head_parameters

from .conftest import tiny_bert

# Backbones saved without a head; loading them as classifiers makes a new head of each family's own name.
BACKBONES = {
    "distilbert": (dict(dim=32, hidden_dim=64, n_layers=2, n_heads=4, max_position_embeddings=64),
                   ("pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias")),
    "bart": (dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64),
             ("classification_head.dense.weight", "classification_head.dense.bias",
              "classification_head.out_proj.weight", "classification_head.out_proj.bias")),
}


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def headless_backbone(request, tmp_path_factory, offline_tokenizer):
    from transformers import AutoConfig, AutoModel

    shape, head = BACKBONES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    config = AutoConfig.for_model(request.param, vocab_size=len(offline_tokenizer),
                                  pad_token_id=offline_tokenizer.pad_token_id,
                                  eos_token_id=offline_tokenizer.eos_token_id, **shape)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    offline_tokenizer.save_pretrained(folder)
    return folder, head


def test_the_new_head_is_what_from_pretrained_initialised(headless_backbone):
    folder, expected = headless_backbone
    model, _ = sb.load_model_and_tokenizer(str(folder), num_labels=3, task="classification")
    assert sorted(head_parameters(model)) == sorted(expected)


def test_a_model_built_in_memory_has_its_head_outside_the_backbone(tiny_causal_dirs):
    from transformers import AutoModelForCausalLM

    assert sorted(head_parameters(tiny_bert())) == ["classifier.bias", "classifier.weight"]
    causal = AutoModelForCausalLM.from_pretrained(tiny_causal_dirs["llama"])  # not through salience_bench
    assert head_parameters(causal) == {}  # the language-model head is pretrained, not a task head
    loaded, _ = sb.load_model_and_tokenizer(str(tiny_causal_dirs["gpt2"]), task="causal-lm")
    assert head_parameters(loaded) == {}


@pytest.mark.parametrize("method", ["sparse", "lora", "pissa", "shira", "supertuning", "full"])
def test_every_method_trains_the_new_head(headless_backbone, method):
    folder, expected = headless_backbone
    model, tokenizer = sb.load_model_and_tokenizer(str(folder), num_labels=3, task="classification")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in expected}
    config = TrainConfig(mask=sb.MaskSpec(density=0.05), score_batches=1, score_batch_size=4)
    setup = RunSetup(model=model, tokenizer=tokenizer, params=sb.eligible_parameters(model),
                     head=head_parameters(model), metric="magnitude", seed=0, config=config,
                     train_data=sb.load_dataset("sst2", "validation"), device=torch.device("cpu"))
    trainer = get_method(method)(setup)
    wrapped = trainer.prepare()
    heads = trainer.head_parameters()
    assert sum(p.numel() for p in heads) == sum(p.numel() for p in before.values())
    assert all(p.requires_grad for p in heads)
    optimizer = torch.optim.SGD(trainer.parameters(), lr=1.0)
    eos = tokenizer.eos_token_id  # BART classifies at each example's final <eos>
    wrapped(input_ids=torch.tensor([[7, 8, 9, eos], [10, 11, 12, eos]]), labels=torch.tensor([0, 2])).loss.backward()
    optimizer.step()
    moved = [p for p in heads if not any(torch.equal(p.detach(), b) for b in before.values())]
    assert len(moved) == len(heads)  # every head tensor learned
