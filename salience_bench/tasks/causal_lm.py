"""Causal language modelling on prompt/completion data: the checkpoint's own next-token head, the loss on the
completion's tokens, and the exact match of greedily generated answers."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ..data import PromptDataset, encode_prompts, final_number
from ..runtime import to_device
from .base import Task, loss_units_of, register_task

_CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")  # transformers' naming of next-token-prediction heads
# Its columns: eval_accuracy is the exact match of generated answers, here how many prompts it was measured on and
# its 95% Wilson interval (binomial), beside the perplexity of the reference answers.
LM_COLUMNS = ["eval_perplexity", "exact_match_n", "exact_match_low", "exact_match_high"]


@torch.no_grad()
def exact_match(model, tokenizer, data: PromptDataset, *, examples: int, max_length: int, max_new_tokens: int,
                chat_template: bool, device: torch.device, batch_size: int = 16, progress: bool = False) -> float:
    """Fraction of the first ``examples`` evaluation prompts whose greedy completion ends in the reference's
    final number (GSM8K's ``#### <number>``). Prompts are generated longest first in batches of ``batch_size``, so a
    batch holds prompts of similar length (little padding) and a batch too large for memory fails at once."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # generation continues every prompt from its last token
    order = sorted(range(examples), key=lambda i: -len(data.prompts[i]))
    hits = 0
    try:
        for start in tqdm(range(0, examples, batch_size), desc=f"exact match on {examples} prompts", unit="batch",
                          disable=not progress, leave=False):
            idx = order[start:start + batch_size]
            batch = to_device(encode_prompts(tokenizer, [data.prompts[i] for i in idx], None, max_length=max_length,
                                             chat_template=chat_template), device)
            out = model.generate(**{k: v for k, v in batch.items() if k != "position_ids"}, do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
            for row, i in zip(out[:, batch["input_ids"].shape[1]:], idx):
                answer = final_number(tokenizer.decode(row, skip_special_tokens=True))
                hits += answer is not None and answer == final_number(data.completions[i])
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return hits / max(examples, 1)


def exact_match_columns(accuracy: float, examples: int) -> dict[str, float]:
    """The exact match's sample size and 95% Wilson interval (``scipy.stats.binomtest``); NaN without prompts."""
    if examples < 1:
        return dict(exact_match_n=0, exact_match_low=math.nan, exact_match_high=math.nan)
    from scipy import stats

    interval = stats.binomtest(round(accuracy * examples), examples).proportion_ci(0.95, method="wilson")
    return dict(exact_match_n=examples, exact_match_low=float(interval.low), exact_match_high=float(interval.high))


def exact_match_examples(config, data) -> int:
    """How many evaluation prompts are generated for exact match: ``eval_examples`` (None: all) of a causal LM's."""
    if data.task != CausalLM.name:
        return 0
    return len(data) if config.eval_examples is None else min(config.eval_examples, len(data))


@register_task
class CausalLM(Task):
    name = "causal-lm"
    help = "the checkpoint's next-token head, loss on the completion"
    default_max_length = 512
    columns = LM_COLUMNS
    zero_point = True
    datasets = "gsm8k, jsonl:PATH"

    def recognises(self, config):
        return any(a.endswith(_CAUSAL_HEADS) for a in getattr(config, "architectures", None) or [])

    def load_model(self, path, *, num_labels, options):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **options)

    @torch.no_grad()
    def evaluate(self, model, batches, device):
        """The mean loss per target token and its perplexity (``eval_accuracy`` NaN: see :meth:`final_metrics`)."""
        was_training = model.training
        model.eval()
        total, loss_sum = 0, 0.0
        for batch in batches:
            batch = to_device(batch, device)
            n = loss_units_of(batch)  # the loss is the mean over the batch's target tokens
            loss_sum += float(model(**batch).loss) * n
            total += n
        model.train(was_training)
        loss = loss_sum / max(total, 1)
        return dict(eval_accuracy=math.nan, eval_loss=loss, eval_perplexity=math.exp(min(loss, 700.0)))

    def final_metrics(self, model, tokenizer, config, data, device, *, progress):
        """Exact match on ``config.eval_examples`` prompts (``eval_accuracy``), its count and Wilson interval."""
        examples = exact_match_examples(config, data)
        accuracy = exact_match(
            model, tokenizer, data, examples=examples, max_length=config.max_length,
            max_new_tokens=config.max_new_tokens, chat_template=config.chat_template, device=device,
            batch_size=config.eval_batch_size, progress=progress) if examples else math.nan
        return dict(eval_accuracy=accuracy, **exact_match_columns(accuracy, examples))

    def eval_batch_size(self, config, vocab_size, device):
        """Fewer than ``eval_batch_size`` where the logits would not fit: a batch of B × L tokens holds B·L·V float32
        logits and about two more copies in the loss (upcast, log-softmax), 3.2 GB per 512-token example of Gemma-3's
        262,144-token vocabulary. They get 10% of a GPU's memory, or 4 GiB elsewhere."""
        budget = 0.1 * torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 4 * 2**30
        per_example = 3 * 4 * config.max_length * max(vocab_size, 1)
        return max(1, min(config.eval_batch_size, int(budget // per_example)))

    def wrong_dataset(self, dataset):
        return (f"dataset {dataset!r} is for classification, but the model is a causal LM: pass --task classification "
                "(a new classification head) or a prompt/completion dataset (gsm8k, jsonl:PATH)")
