import json

import pandas as pd
import pytest
import torch

import salience_bench as sb
from salience_bench import compare
from salience_bench.scorers import registry
from salience_bench.training.loop import downstream_columns
from salience_bench.training import (
    DRIFT_COLUMNS,
    SparseDeltaEngine,
    SparseDeltaLinear,
    TrainConfig,
    freeze_all_but,
    head_parameters,
    matched_lora_rank,
    optimizer_state_bytes,
    wrap_lora,
)

from .conftest import run_cli, tiny_args, tiny_batches, tiny_bert
from benchmarks.common import dense_masked_gradients_  # the naive route, shared with the benchmarks


def grad_masks(model, batches, density=0.1):
    """Per-layer scope, so every tensor has selected entries to check."""
    return sb.make_mask(sb.score(model, batches, ["grad"])["grad"], density=density, scope="layer")


def sparse_setup(model, masks, lr=1e-2):
    head = head_parameters(model)
    freeze_all_but(model, head)
    engine = SparseDeltaEngine(model, masks)
    optimizer = torch.optim.AdamW(engine.parameters() + list(head.values()), lr=lr, weight_decay=0.0)
    return engine, optimizer


def test_sparse_engine_equals_dense_masked_reference():
    batches = tiny_batches(num_batches=5)
    sparse_model, dense_model = tiny_bert(), tiny_bert()
    masks = grad_masks(sparse_model, batches[:2])
    engine, opt_sparse = sparse_setup(sparse_model, masks)
    trainable = {**head_parameters(dense_model), **{n: p for n, p in dense_model.named_parameters() if n in masks}}
    freeze_all_but(dense_model, trainable)
    opt_dense = torch.optim.AdamW(list(trainable.values()), lr=1e-2, weight_decay=0.0)
    sparse_model.eval(), dense_model.eval()  # no dropout: both see the same function
    for batch in batches:
        loss_sparse = sparse_model(**batch).loss
        loss_sparse.backward()
        opt_sparse.step(), opt_sparse.zero_grad()
        engine.sync_weights()
        loss_dense = dense_model(**batch).loss
        loss_dense.backward()
        dense_masked_gradients_(dense_model, masks)
        opt_dense.step(), opt_dense.zero_grad()
        torch.testing.assert_close(loss_sparse, loss_dense, rtol=1e-5, atol=1e-6)
    engine.remove()  # plain layers again, under their original names
    dense_params = dict(dense_model.named_parameters())
    for name, p in sparse_model.named_parameters():
        torch.testing.assert_close(p, dense_params[name], rtol=1e-5, atol=1e-6, msg=name)
    # Training changed the selected entries.
    pretrained = dict(tiny_bert().named_parameters())
    name = next(iter(masks))
    assert not torch.equal(dict(sparse_model.named_parameters())[name][masks[name]], pretrained[name][masks[name]])


def test_untouched_entries_stay_bit_identical():
    batches = tiny_batches(num_batches=4)
    model = tiny_bert()
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = grad_masks(model, batches[:2], density=0.05)
    engine, optimizer = sparse_setup(model, masks, lr=0.1)
    model.train()
    for batch in batches:
        model(**batch).loss.backward()
        optimizer.step(), optimizer.zero_grad()
        engine.sync_weights()
    engine.remove()
    for name, p in model.named_parameters():
        if name in masks:
            assert torch.equal(p[~masks[name]], pretrained[name][~masks[name]]), name
            assert (p[masks[name]] != pretrained[name][masks[name]]).any(), name
        elif not name.startswith("classifier"):
            assert torch.equal(p, pretrained[name]), name


def test_optimizer_state_is_proportional_to_k_not_to_the_model():
    sizes = []
    for hidden in (32, 64):  # a model with 4x the weights, same k
        torch.manual_seed(0)
        from transformers import BertConfig, BertForSequenceClassification

        model = BertForSequenceClassification(BertConfig(vocab_size=60, hidden_size=hidden, num_hidden_layers=2,
                                                         num_attention_heads=2, intermediate_size=2 * hidden))
        params = sb.eligible_parameters(model)
        masks = sb.make_mask(sb.score(model, None, ["random"], params=params)["random"], k=500)
        freeze_all_but(model, {})
        engine = SparseDeltaEngine(model, masks)
        optimizer = torch.optim.AdamW(engine.parameters(), lr=1e-3)
        model(**tiny_batches(num_batches=1)[0]).loss.backward()
        optimizer.step()
        moments = sum(s["exp_avg"].numel() + s["exp_avg_sq"].numel() for s in optimizer.state.values())
        assert moments == 2 * 500
        assert all(p.grad is None or p.grad.numel() <= 500 for p in model.parameters())
        sizes.append(optimizer_state_bytes(optimizer))
    assert sizes[0] == sizes[1]


def test_dynamic_update_keeps_learned_changes_and_moments():
    batches = tiny_batches(num_batches=3)
    model = tiny_bert()
    name = "bert.encoder.layer.0.attention.self.query.weight"
    weight = dict(model.named_parameters())[name]
    old = torch.zeros_like(weight, dtype=torch.bool)
    old.view(-1)[[0, 1, 2, 3]] = True
    engine, optimizer = sparse_setup(model, {name: old}, lr=0.05)
    model.eval()
    for batch in batches:
        model(**batch).loss.backward()
        optimizer.step(), optimizer.zero_grad()
        engine.sync_weights()
    before = weight.detach().clone()
    delta_before = engine.slots[name].delta.detach().clone()
    moment_before = optimizer.state[engine.slots[name].delta]["exp_avg"].clone()
    new = torch.zeros_like(old)
    new.view(-1)[[2, 3, 10, 11, 12]] = True  # 0,1 leave; 2,3 stay; 10,11,12 join
    engine.update_masks({name: new}, optimizer)
    slot = engine.slots[name]
    assert torch.equal(weight, before)  # nothing learned is lost, nothing else moves
    assert slot.index.tolist() == [2, 3, 10, 11, 12]
    assert torch.equal(slot.delta[:2], delta_before[2:]) and (slot.delta[2:] == 0).all()
    state = optimizer.state[slot.delta]
    assert torch.equal(state["exp_avg"][:2], moment_before[2:]) and (state["exp_avg"][2:] == 0).all()
    torch.testing.assert_close(slot.base[:2].float() + slot.delta[:2], weight.view(-1)[[2, 3]].float())
    assert torch.equal(engine.masks()[name], new)
    model(**batches[0]).loss.backward()  # training continues on the new entries
    optimizer.step()
    engine.sync_weights()
    assert (weight.view(-1)[[10, 11, 12]] != before.view(-1)[[10, 11, 12]]).any()
    assert torch.equal(weight.view(-1)[[0, 1]], before.view(-1)[[0, 1]])


def test_lora_rank_matches_the_sparse_count():
    model = tiny_bert()
    params = sb.eligible_parameters(model)
    per_rank = sum(p.shape[0] + p.shape[1] for p in params.values())
    for k in (1, per_rank, int(2.4 * per_rank), int(2.6 * per_rank)):
        rank = matched_lora_rank(k, params)
        assert all(abs(rank * per_rank - k) <= abs(r * per_rank - k) for r in range(1, 6))
    wrapped = wrap_lora(tiny_bert(), sb.eligible_parameters(tiny_bert()), rank=3)
    lora = sum(p.numel() for n, p in wrapped.named_parameters() if p.requires_grad and "lora_" in n)
    assert lora == 3 * per_rank
    head = sum(p.numel() for n, p in wrapped.named_parameters() if p.requires_grad and "lora_" not in n)
    assert head == sum(p.numel() for p in head_parameters(tiny_bert()).values())


def test_train_cli_writes_downstream_and_drift_and_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "train"
    args = tiny_args(tiny_model_dir, out, "--metrics", "grad,snip", "--train", "--steps", "4",
                     "--mask-update-every", "2", "--seeds", "0,1", "--baselines", "full,lora,pissa")
    assert compare.main(args) == 0
    rows = pd.read_csv(out / "downstream.csv")
    assert list(rows.columns) == downstream_columns("classification")
    assert len(rows) == 2 * (2 + 3)
    assert sorted(set(rows.method)) == ["full", "lora", "pissa", "sparse"]
    sparse = rows[rows.method == "sparse"]
    assert (sparse.mask_schedule == "dynamic/2").all()
    assert (rows.trainable_params > 0).all() and (rows.train_flops > 0).all() and (rows.optimizer_state_bytes > 0).all()
    assert ((rows.eval_accuracy >= 0) & (rows.eval_accuracy <= 1)).all()
    lora = rows[rows.method == "lora"].iloc[0]
    assert abs(lora.trainable_params - sparse.trainable_params.iloc[0]) <= lora.trainable_params / lora.lora_rank
    drift = pd.read_csv(out / "drift.csv")
    assert list(drift.columns) == DRIFT_COLUMNS
    assert sorted(set(drift.step)) == [0, 2]  # initial mask, one update (none after the last step)
    assert (drift[drift.step == 0].jaccard_initial == 1).all()
    for name in ("accuracy.png", "accuracy_vs_memory.png", "drift.png"):
        assert (out / "figures" / name).is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "downstream.csv" in manifest["files"]
    # Interrupted runs and resuming: tests/test_reliability.py (real processes and signals).


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mask-update-every", "0"], "0 must be ≥ 1"),
        (["--steps", "0"], "0 must be ≥ 1"),
        (["--baselines", "qlora"], "unknown baseline 'qlora'"),
        (["--lr", "-1"], "-1 must be a finite number > 0"),
        (["--seeds", "a,b"], "not a comma-separated list"),
        (["--warmup-ratio", "1.5"], "warmup-ratio 1.5 must be in [0, 1)"),
        (["--lr-schedule", "cosine"], "invalid choice: 'cosine'"),
        (["--lora-alpha-ratio", "0"], "0 must be a finite number > 0"),
    ],
)
def test_bad_training_input_exits_2(tiny_model_dir, tmp_path, extra, message):
    result = run_cli(*tiny_args(tiny_model_dir, tmp_path / "o", "--metrics", "grad", "--train", *extra))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_network_level_metric_cannot_drive_training(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(registry, "_REGISTRY", registry._REGISTRY.copy())
    sb.register_model_scorer("network_only", network_level=True)(lambda ctx: 1.0)
    code = compare.main(tiny_args(tiny_model_dir, tmp_path / "o", "--metrics", "grad,network_only", "--train"))
    assert code == 2
    assert "cannot drive --train" in capsys.readouterr().err


def test_sparse_layers_are_wrapped_modules_visible_in_print_and_state_dict():
    model = tiny_bert()
    name = "bert.encoder.layer.0.attention.self.query.weight"
    mask = torch.zeros_like(dict(model.named_parameters())[name], dtype=torch.bool)
    mask.view(-1)[[3, 5, 8]] = True
    query = model.bert.encoder.layer[0].attention.self.query
    engine = SparseDeltaEngine(model, {name: mask})
    wrapped = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(wrapped, SparseDeltaLinear) and wrapped.base_layer is query
    assert "forward" not in vars(query) and "forward" not in vars(wrapped)
    assert "(query): SparseDeltaLinear(" in str(model) and "selected=3 of 1,024" in str(model)
    state = model.state_dict()
    prefix = "bert.encoder.layer.0.attention.self.query."
    assert state[prefix + "index"].tolist() == [3, 5, 8] and state[prefix + "delta"].shape == (3,)
    assert prefix + "base_layer.weight" in state and prefix + "base" in state
    engine.remove()
    assert model.bert.encoder.layer[0].attention.self.query is query


def test_every_method_runs_through_the_one_loop_and_a_new_method_is_one_class(monkeypatch):
    from salience_bench.training import RunInputs, TrainConfig, register_method, run_one
    from salience_bench.training.methods import base as methods_base

    monkeypatch.setattr(methods_base, "_METHODS", methods_base._METHODS.copy())

    @register_method
    class HeadOnly(sb.TrainingMethod):
        """Linear probing: only the task head trains."""

        name = "head_only"

        def prepare(self):
            freeze_all_but(self.model, self.setup.head)
            return self.model

        def trainable_count(self):
            return 0

    assert "head_only" in sb.list_baselines()
    data = sb.load_dataset("sst2", "validation")
    config = TrainConfig(steps=2, batch_size=4, score_batches=1, score_batch_size=4, max_length=16,
                         mask=sb.MaskSpec(density=0.05), eval_batch_size=64)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(sb.models.bundled_model_path()))
    small = sb.load_dataset("sst2", "validation")
    small = type(small)(small.name, small.split, small.texts[:64], small.labels[:64])
    rows = {}
    for method in ["head_only", *sb.list_methods()]:
        inputs = RunInputs(lambda seed: (tiny_bert(seed, vocab_size=tokenizer.vocab_size), tokenizer), data, small,
                           torch.device("cpu"))
        result = run_one(method, "grad", 0, config, inputs, progress=False)
        rows[method] = result.row
        assert list(result.row) == downstream_columns("classification")
    assert rows["head_only"]["trainable_params"] == 0 and rows["head_only"]["metric"] == ""
    assert rows["sparse"]["metric"] == "grad" and rows["sparse"]["mask_schedule"] == "static"
    assert rows["lora"]["lora_rank"] >= 1 and rows["full"]["density"] == 1.0
    # peft's sparse methods at the same budget: SHiRA exactly LoRA's count, Super-Tuning the mask's density per layer.
    assert rows["shira"]["trainable_params"] == rows["lora"]["trainable_params"]
    assert abs(rows["supertuning"]["trainable_params"] - rows["sparse"]["trainable_params"]) <= 0.01 * rows["sparse"]["trainable_params"] + 12


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_learning_rate_schedules_warm_up_then_hold_or_decay(schedule):
    steps, warmup = 20, 0.25
    config = TrainConfig(steps=steps, lr_schedule=schedule, warmup_ratio=warmup)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule_ = config.scheduler(optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])  # the rate the k-th optimizer step uses
        optimizer.step()
        schedule_.step()
    w = round(warmup * steps)
    for k, rate in enumerate(rates):  # the published linear warm-up / decay, step by step
        expected = k / w if k < w else (1.0 if schedule == "constant" else (steps - k) / (steps - w))
        assert rate == pytest.approx(0.1 * expected), (k, rate)


def test_lora_alpha_ratio_sets_peft_scaling():
    from salience_bench.training.methods import get_method
    from salience_bench.training.methods.base import RunSetup

    model = tiny_bert()
    config = TrainConfig(method_options={"lora": {"alpha_ratio": 1.0}}, mask=sb.MaskSpec(density=0.05))
    setup = RunSetup(model=model, tokenizer=None, params=sb.eligible_parameters(model), head=head_parameters(model),
                     metric=None, seed=0, config=config, train_data=None, device=torch.device("cpu"))
    method = get_method("lora")(setup)
    wrapped = method.prepare()
    scalings = [m.scaling["default"] for m in wrapped.modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict)]
    assert scalings and all(s == pytest.approx(1.0) for s in scalings)  # α / r = 1: SPEFT's α = r


@pytest.mark.parametrize("name", ["sparse", "full", "lora", "pissa", "shira", "supertuning"])
def test_every_method_finds_its_head_for_a_shared_head_rate(name):
    from salience_bench.training.loop import parameter_groups
    from salience_bench.training.methods import get_method
    from salience_bench.training.methods.base import RunSetup

    model = tiny_bert()
    head_size = sum(p.numel() for p in head_parameters(model).values())
    config = TrainConfig(mask=sb.MaskSpec(density=0.05), score_batches=1, score_batch_size=4, head_lr=3e-3)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(sb.models.bundled_model_path()))
    setup = RunSetup(model=model, tokenizer=tokenizer, params=sb.eligible_parameters(model), head=head_parameters(model),
                     metric="magnitude", seed=0, config=config, train_data=sb.load_dataset("sst2", "validation"),
                     device=torch.device("cpu"))  # magnitude: the mask needs no forward pass
    method = get_method(name)(setup)
    method.prepare()
    heads = method.head_parameters()
    assert sum(p.numel() for p in heads) == head_size and all(p.requires_grad for p in heads)
    params = method.parameters()
    groups = parameter_groups(method, params, config.head_lr)
    assert [g.get("lr") for g in groups] == [None, 3e-3]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in heads}
    assert sum(len(g["params"]) for g in groups) == len(params)


def test_a_lora_variant_with_one_hyperparameter_is_one_class(monkeypatch):
    """A method's own options become its flags, reach it through the configuration, and are checked by it."""
    from dataclasses import dataclass, field

    from salience_bench.cli_options import build_parser, method_option_values
    from salience_bench.training.methods import MethodOptions, base, get_method
    from salience_bench.training.methods.lora import LoRA

    monkeypatch.setattr(base, "_METHODS", base._METHODS.copy())

    @dataclass(frozen=True)
    class ScaledOptions(MethodOptions):
        scale: float = field(default=0.5, metadata={"help": "α = scale · r"})

    @base.register_method
    class ScaledLoRA(LoRA):
        name = "scaled_lora"
        Options = ScaledOptions

    args = build_parser().parse_args(["--train", "--baselines", "scaled_lora", "--scaled-lora-scale", "4"])
    assert method_option_values(args) == {"scaled_lora": {"scale": 4.0}}
    config = compare.config_from_args(args)
    assert config.training.baselines == ("scaled_lora",)
    assert get_method("scaled_lora").options_from(config.training.method_options).scale == 4.0
    assert get_method("scaled_lora").options_from({}).scale == 0.5  # the default
    assert "α = scale · r" in build_parser().format_help()
    with pytest.raises(sb.SalienceBenchError, match="scaled_lora scale -1 must be a finite number > 0"):
        sb.TrainingPlan(method_options={"scaled_lora": {"scale": -1}})
    with pytest.raises(sb.SalienceBenchError, match="unknown option 'rank' of method 'lora'; valid: alpha_ratio"):
        sb.TrainingPlan(method_options={"lora": {"rank": 3}})
    with pytest.raises(sb.SalienceBenchError, match="method 'full' has no options"):
        sb.TrainingPlan(method_options={"full": {"x": 1}})


def test_a_new_task_is_one_class_the_loop_evaluates_with(monkeypatch):
    """A task registered in a test: its datasets name it, and run_one evaluates with it and writes its columns."""
    from dataclasses import dataclass
    from typing import ClassVar

    from transformers import AutoTokenizer

    from salience_bench.data import TextDataset
    from salience_bench.tasks import TASKS, register_task
    from salience_bench.tasks.classification import Classification
    from salience_bench.training import RunInputs, run_one

    monkeypatch.setattr(TASKS, "entries", dict(TASKS.entries))

    @register_task
    class BalancedClassification(Classification):
        name = "balanced-classification"
        help = "a classifier judged by its balanced accuracy"
        columns = ["eval_balanced_accuracy"]
        fallback = False

        def evaluate(self, model, batches, device):
            values = super().evaluate(model, batches, device)
            predictions = torch.cat([model(**b).logits.argmax(-1) for b in batches])
            labels = torch.cat([b["labels"] for b in batches])
            recalls = [float((predictions[labels == c] == c).double().mean()) for c in labels.unique()]
            return {**values, "eval_balanced_accuracy": sum(recalls) / len(recalls)}

    @dataclass(frozen=True)
    class BalancedData(TextDataset):
        task: ClassVar[str] = "balanced-classification"

    tokenizer = AutoTokenizer.from_pretrained(str(sb.models.bundled_model_path()))
    sst2 = sb.load_dataset("sst2", "validation")
    data = BalancedData(sst2.name, sst2.split, sst2.texts[:64], sst2.labels[:64])
    config = TrainConfig(steps=2, batch_size=4, max_length=16, mask=sb.MaskSpec(density=0.05), eval_batch_size=64)
    inputs = RunInputs(lambda seed: (tiny_bert(seed, vocab_size=tokenizer.vocab_size), tokenizer), data, data,
                       torch.device("cpu"))
    row = run_one("full", None, 0, config, inputs, progress=False).row
    assert 0 <= row["eval_balanced_accuracy"] <= 1 and "eval_mcc" not in row
    assert downstream_columns("balanced-classification")[-1] == "eval_balanced_accuracy"
    loaded, _ = sb.load_model_and_tokenizer("bundled", task="balanced-classification")  # by name, as the CLI does
    assert sorted(head_parameters(loaded)) == ["classifier.bias", "classifier.weight"]
