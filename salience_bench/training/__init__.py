"""Sparse fine-tuning engine, dense baselines, and measured downstream runs."""

from .baselines import HEAD_PATTERNS, head_parameters, matched_lora_rank, wrap_lora
from .loop import BASELINES, DOWNSTREAM_COLUMNS, DRIFT_COLUMNS, METHODS, RunResult, TrainConfig, evaluate, run_one
from .measure import PeakMemory, count_flops
from .sparse import SparseDeltaEngine, optimizer_state_bytes

__all__ = [
    "BASELINES", "DOWNSTREAM_COLUMNS", "DRIFT_COLUMNS", "HEAD_PATTERNS", "METHODS", "PeakMemory", "RunResult",
    "SparseDeltaEngine", "TrainConfig", "count_flops", "evaluate", "head_parameters", "matched_lora_rank",
    "optimizer_state_bytes", "run_one", "wrap_lora",
]
