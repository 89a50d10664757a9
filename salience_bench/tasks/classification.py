"""Sequence classification (and regression, STS-B): a newly initialised head on the checkpoint's body."""

from __future__ import annotations

import math

import torch

from ..runtime import to_device
from .base import Task, loss_units_of, register_task

# its columns beside eval_accuracy: two-class MCC and F1 (CoLA, MRPC), a regression head's correlations (STS-B)
TASK_COLUMNS = ["eval_mcc", "eval_f1", "eval_pearson", "eval_spearman"]


def task_metrics(predictions: torch.Tensor, targets: torch.Tensor, *, regression: bool) -> dict[str, float]:
    """GLUE's metrics from predicted classes (or values, ``regression``) and targets."""
    if regression:
        from scipy import stats

        x, y = predictions.double().numpy(), targets.double().numpy()
        constant = x.std() == 0 or y.std() == 0
        return dict(eval_accuracy=math.nan,
                    eval_pearson=math.nan if constant else float(stats.pearsonr(x, y).statistic),
                    eval_spearman=math.nan if constant else float(stats.spearmanr(x, y).statistic))
    values = dict(eval_accuracy=float((predictions == targets).double().mean()))
    if int(targets.max()) <= 1 and int(predictions.max()) <= 1:  # two classes
        tp = float(((predictions == 1) & (targets == 1)).sum())
        tn = float(((predictions == 0) & (targets == 0)).sum())
        fp = float(((predictions == 1) & (targets == 0)).sum())
        fn = float(((predictions == 0) & (targets == 1)).sum())
        denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        values["eval_mcc"] = (tp * tn - fp * fn) / denominator if denominator else 0.0  # sklearn's convention
        values["eval_f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return values


@register_task
class Classification(Task):
    name = "classification"
    help = "a new classification head (a regression head for float labels)"
    columns = TASK_COLUMNS
    fallback = True
    datasets = "sst2, ag_news, cola, mrpc, rte, stsb, hf:<name>"

    def load_model(self, path, *, num_labels, options):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(  # a head of another size is replaced
            path, num_labels=num_labels, ignore_mismatched_sizes=True, output_loading_info=True, **options)

    @torch.no_grad()
    def evaluate(self, model, batches, device):
        """``eval_accuracy``, the mean loss per example, and for two classes ``eval_mcc`` (Matthews correlation,
        CoLA's metric) and ``eval_f1`` (of class 1, MRPC's). Float targets (a regression head, STS-B):
        ``eval_pearson`` and ``eval_spearman`` (``eval_accuracy`` NaN)."""
        was_training = model.training
        model.eval()
        total, loss_sum = 0, 0.0
        predictions, targets = [], []
        for batch in batches:
            batch = to_device(batch, device)
            out = model(**batch)
            regression = batch["labels"].is_floating_point()
            predictions.append((out.logits.reshape(-1) if regression else out.logits.argmax(-1)).float().cpu())
            targets.append(batch["labels"].float().cpu())
            n = loss_units_of(batch)
            loss_sum += float(out.loss) * n
            total += n
        model.train(was_training)
        return dict(eval_loss=loss_sum / total, **task_metrics(torch.cat(predictions), torch.cat(targets),
                                                               regression=batches[0]["labels"].is_floating_point()))

    def wrong_dataset(self, dataset):
        return (f"dataset {dataset!r} is prompt/completion data for a causal LM, but the model is loaded as a "
                "classifier: use a causal-LM checkpoint (--task causal-lm) or a classification dataset (sst2, ag_news)")
