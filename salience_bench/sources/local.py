"""A Hugging Face model folder on disk, or, last, a Hugging Face hub name (loaded when online)."""

from __future__ import annotations

import os

from ..errors import SalienceBenchError
from .base import ModelSource, register_source


def looks_like_a_path(model: str) -> bool:
    """Hub names are ``name`` or ``org/name``; anything else with a path's shape is meant as a folder."""
    return (model.startswith(("/", "./", "../", "~")) or os.path.isabs(model) or model.count("/") > 1
            or os.sep != "/" and os.sep in model)


@register_source
class Folder(ModelSource):
    name = "folder"
    help = "a local folder (config.json and the weights)"

    def resolve(self, model, *, log=None):
        expanded = os.path.expanduser(model)
        if os.path.isfile(expanded):
            raise SalienceBenchError(f"model {model!r} is a file but not a .gguf; give a GGUF file or the folder that "
                                     "holds config.json and the weights")
        if os.path.isdir(expanded):
            return expanded
        if looks_like_a_path(model):
            from .. import gguf_models

            raise SalienceBenchError(f"model folder {model!r} does not exist (a Hugging Face name is 'name' or "
                                     f"'org/name'; packaged models: {', '.join(gguf_models.PACKAGED_MODELS)})")
        return None


@register_source
class Hub(ModelSource):
    name = "hub"
    help = "or a Hugging Face name when online"

    def resolve(self, model, *, log=None):
        return model
