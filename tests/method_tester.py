"""One tester for every training method's whole contract, as the scorer tester is for metrics.

``check_method(name)`` prepares the method on a tiny BERT classifier (a new head, as from_pretrained makes one) and
checks that

1. it declares what the loop relies on (``trains``, ``seeded``, ``uses_metric`` bools, its registry name);
2. :meth:`~TrainingMethod.parameters` are trainable parameters of the prepared model and include the whole head
   (:meth:`~TrainingMethod.head_parameters`, the size of the setup's head) when it trains at all;
3. after a backward pass only those parameters hold gradients;
4. :meth:`~TrainingMethod.trainable_count` is 0 for a method that does not train, and otherwise within one LoRA
   rank's worth (Σ rows + columns) of the count the mask asks for, unless it trains every weight;
5. one optimizer step (with ``after_optimizer_step``) changes the loss exactly when the method trains, and two
   fresh runs with the same seed give bitwise the same loss;
6. its row (:meth:`~TrainingMethod.record`) has the downstream columns the loop reads and a label.

``tests/test_methods.py`` runs it on every registered method: adding a method is its module alone.
"""

from __future__ import annotations

import functools

import torch

import salience_bench as sb
from salience_bench.training import TrainConfig
from salience_bench.training.methods import RunSetup, get_method, head_parameters, lora_parameters_per_rank

from .conftest import tiny_bert

RECORD_KEYS = {"metric", "density", "scope", "mask_schedule", "lora_rank"}


@functools.lru_cache(maxsize=1)
def _tokenizer_and_data():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(sb.models.bundled_model_path())), sb.load_dataset("sst2", "validation")


def _prepared(name: str, config: TrainConfig, metric: str | None):
    tokenizer, data = _tokenizer_and_data()
    model = tiny_bert(vocab_size=tokenizer.vocab_size)
    setup = RunSetup(model=model, tokenizer=tokenizer, params=sb.eligible_parameters(model), head=head_parameters(model),
                     metric=metric, seed=0, config=config, train_data=data, device=torch.device("cpu"))
    method = get_method(name)(setup)
    return method, method.prepare(), setup


def _step(method, model, batch, lr: float = 1e-2) -> tuple[float, float]:
    """(loss before, loss after) one AdamW step on ``batch``, dropout off."""
    model.eval()
    params = method.parameters()
    before = model(**batch).loss
    if not params:
        return float(before), float(model(**batch).loss)
    before.backward()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    method.after_optimizer_step()
    with torch.no_grad():
        return float(before), float(model(**batch).loss)


def check_method(name: str, *, metric: str = "magnitude", density: float = 0.05) -> None:
    """Check training method ``name``'s whole contract (see the module docstring)."""
    cls = get_method(name)
    config = TrainConfig(mask=sb.MaskSpec(density=density), score_batches=1, score_batch_size=4)
    metric = metric if cls.uses_metric else None

    # 1. what the loop relies on
    assert cls.name == name and all(isinstance(v, bool) for v in (cls.trains, cls.seeded, cls.uses_metric)), name

    # 2. the optimizer's parameters, the head among them
    method, model, setup = _prepared(name, config, metric)
    params = method.parameters()
    own = {id(p) for p in model.parameters()}
    assert all(p.requires_grad and id(p) in own for p in params), f"{name}: parameters() must be trainable model parameters"
    heads = method.head_parameters()
    head_size = sum(p.numel() for p in setup.head.values())
    if cls.trains:
        assert sum(p.numel() for p in heads) == head_size and {id(p) for p in heads} <= {id(p) for p in params}, name
    else:
        assert not params and not heads, f"{name} does not train but gives the optimizer parameters"

    # 3. gradients reach only the method's parameters
    tokenizer, data = _tokenizer_and_data()
    batch = tokenizer(data.texts[:4], padding=True, truncation=True, max_length=16, return_tensors="pt")
    batch["labels"] = torch.tensor(data.labels[:4])
    if params:
        model.eval()
        model(**batch).loss.backward()
        trainable = {id(p) for p in params}
        stray = [n for n, p in model.named_parameters() if p.grad is not None and id(p) not in trainable]
        assert not stray, f"{name}: gradients outside parameters(): {stray[:3]}"
        model.zero_grad(set_to_none=True)

    # 4. the trainable count
    count = method.trainable_count()
    if not cls.trains:
        assert count == 0, name
    elif count != sum(p.numel() for p in setup.model.parameters()) - head_size:  # not every weight: matched
        assert abs(count - setup.target_count) <= lora_parameters_per_rank(setup.params), (name, count, setup.target_count)

    # 5. one step trains exactly when the method does, the same way twice
    before, after = _step(method, model, batch)
    assert (after != before) == cls.trains, f"{name}: trains={cls.trains}, loss {before} → {after}"
    twin, twin_model, _ = _prepared(name, config, metric)
    assert twin.trainable_count() == count and _step(twin, twin_model, batch) == (before, after), f"{name} is not repeatable"

    # 6. its downstream row
    record = method.record()
    assert RECORD_KEYS <= set(record), f"{name}.record() lacks {RECORD_KEYS - set(record)}"
    label = cls.label({**record, "method": name})
    assert isinstance(label, str) and label, name
