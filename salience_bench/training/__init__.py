"""Sparse fine-tuning engine, training methods (one module each), and measured downstream runs."""

from . import methods
from .loop import CURVE_COLUMNS, DOWNSTREAM_COLUMNS, DRIFT_COLUMNS, RunInputs, RunResult, TrainConfig, evaluate, run_one
from .measure import PeakMemory, count_flops
from .methods import *  # noqa: F401,F403  (TrainingMethod, register_method, the LoRA helpers …: methods.__all__)
from .sparse import SparseDeltaEngine, SparseDeltaLinear, optimizer_state_bytes

__all__ = [
    "CURVE_COLUMNS", "DOWNSTREAM_COLUMNS", "DRIFT_COLUMNS", "PeakMemory", "RunInputs", "RunResult", "SparseDeltaEngine",
    "SparseDeltaLinear", "TrainConfig", "count_flops", "evaluate", "optimizer_state_bytes", "run_one", *methods.__all__,
]
