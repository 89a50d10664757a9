"""salience_bench: benchmark and analysis suite for salience metrics and sparse masks.

Public API::

    import salience_bench as sb
    sb.list_metrics()
    scores = sb.score(model, batches, metrics=["grad", "snip", "fisher"])
    mask = sb.make_mask(scores["grad"], density=0.01, scope="global")
    sb.jaccard(mask_a, mask_b); sb.spearman(scores_a, scores_b)
"""

from .errors import SalienceBenchError
from .masks import make_mask, selection_count
from .models import eligible_parameters, load_model_and_tokenizer
from .data import load_dataset, make_batches
from .scorers import TensorStats, describe_metrics, get_scorer, list_metrics, register, resolve_metrics
from .scoring import score
from .stats import chance_jaccard, jaccard, kendall, overlap_coefficient, spearman

__all__ = [
    "SalienceBenchError",
    "TensorStats",
    "chance_jaccard",
    "describe_metrics",
    "eligible_parameters",
    "get_scorer",
    "jaccard",
    "kendall",
    "list_metrics",
    "load_dataset",
    "load_model_and_tokenizer",
    "make_batches",
    "make_mask",
    "overlap_coefficient",
    "register",
    "resolve_metrics",
    "score",
    "selection_count",
    "spearman",
]
