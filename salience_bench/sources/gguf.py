"""GGUF checkpoints: a packaged model's short name, a ``.gguf`` file, or a folder holding one, converted once into a
cached Hugging Face folder (:mod:`salience_bench.gguf_models`)."""

from __future__ import annotations

from .. import gguf_models
from .base import ModelSource, register_source


@register_source
class PackagedGGUF(ModelSource):
    name = "packaged"
    help = f"a packaged GGUF model ({', '.join(gguf_models.PACKAGED_MODELS)})"

    def resolve(self, model, *, log=None):
        return gguf_models.resolve_packaged(model, log=log)


@register_source
class GGUFFile(ModelSource):
    name = "gguf"
    help = "a .gguf file or a folder holding one"

    def resolve(self, model, *, log=None):
        return gguf_models.resolve_file(model, log=log)
