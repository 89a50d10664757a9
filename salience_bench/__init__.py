"""salience_bench: benchmark and analysis suite for salience metrics and sparse masks.

Public API::

    import salience_bench as sb
    sb.list_metrics()
    scores = sb.score(model, batches, metrics=["grad", "snip", "fisher"])
    mask = sb.make_mask(scores["grad"], density=0.01, scope="global")
    sb.jaccard(mask_a, mask_b); sb.spearman(scores_a, scores_b)

    # the whole comparison, as the CLI runs it
    result = sb.run_comparison(sb.CompareConfig(metrics=("grad", "snip"), mask=sb.MaskSpec(density=0.01)))
    sb.write_comparison(result, "results/my-run")
"""

from .errors import SalienceBenchError
from .accumulators import Accumulator, list_accumulators, register_accumulator
from .masks import MaskSpec, make_mask, selection_count
from .models import eligible_parameters, load_model_and_tokenizer
from .data import load_dataset, make_batches
from .runtime import Terminated, raise_on_sigterm, resolve_device
from .distributed import is_main as is_main_process
from .scorers import (
    ModelContext,
    Option,
    TensorStats,
    describe_metrics,
    get_scorer,
    list_metrics,
    register,
    register_model_scorer,
    resolve_metrics,
    scorer_options,
)
from .scoring import SUM_DTYPES, Scores, score
from .export import check_masks, load_masks, save_masks, to_peft_shira, weights_fingerprint
from .stats import chance_jaccard, jaccard, kendall, overlap_coefficient, spearman
from .training import TrainingMethod, list_baselines, list_methods, register_method
from .pipeline import (
    DTYPES,
    CompareConfig,
    Comparison,
    Downstream,
    TrainingPlan,
    Run,
    prepare_output,
    run_and_write,
    run_comparison,
    run_downstream,
    write_comparison,
)

__all__ = [
    "Accumulator",
    "CompareConfig",
    "Comparison",
    "DTYPES",
    "SUM_DTYPES",
    "Downstream",
    "MaskSpec",
    "ModelContext",
    "Option",
    "SalienceBenchError",
    "Run",
    "Scores",
    "TensorStats",
    "Terminated",
    "TrainingMethod",
    "TrainingPlan",
    "chance_jaccard",
    "check_masks",
    "describe_metrics",
    "eligible_parameters",
    "get_scorer",
    "is_main_process",
    "jaccard",
    "kendall",
    "list_accumulators",
    "list_baselines",
    "list_methods",
    "list_metrics",
    "load_dataset",
    "load_masks",
    "load_model_and_tokenizer",
    "make_batches",
    "make_mask",
    "overlap_coefficient",
    "prepare_output",
    "raise_on_sigterm",
    "register",
    "register_accumulator",
    "register_method",
    "register_model_scorer",
    "resolve_device",
    "resolve_metrics",
    "run_and_write",
    "run_comparison",
    "run_downstream",
    "save_masks",
    "score",
    "scorer_options",
    "selection_count",
    "spearman",
    "to_peft_shira",
    "weights_fingerprint",
    "write_comparison",
]
