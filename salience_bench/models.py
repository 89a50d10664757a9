"""Load the bundled model or any Hugging Face model, and choose the tensors to score."""

from __future__ import annotations

import fnmatch
import re
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from .errors import SalienceBenchError
from .sources import BUNDLED_MODEL, bundled_model_path, resolve_model
from .tasks import check_task_name, get_task
from .tasks import infer_task as infer_task_of

_BLOCK_INDEX = re.compile(r"(^|\.)\d+\.")


def resolve_model_path(model: str) -> str:
    """``bundled`` → the packaged folder; anything else is passed through (see :func:`check_model_name`)."""
    return str(bundled_model_path()) if model == BUNDLED_MODEL else model


def check_model_name(model: str, *, log: Callable[[str], None] | None = None) -> str:
    """The folder or hub name to load for ``model``, from the registered model sources (:mod:`salience_bench.sources`:
    the bundled MiniLM, packaged GGUF models, ``.gguf`` files, folders, hub names); a missing folder is named as such,
    before any download. A GGUF model is converted on first use (``log`` hears of it, stderr by default)."""
    return resolve_model(model, log=log)


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


def linear_types() -> tuple[type, ...]:
    """Modules that are linear maps of their input's last dimension: ``nn.Linear`` (weight out × in)
    and transformers' ``Conv1D`` (GPT-2 family; weight stored transposed, in × out)."""
    conv1d = _conv1d_type()
    return (nn.Linear, conv1d) if conv1d is not None else (nn.Linear,)


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, linear_types())


def weight_is_transposed(module: nn.Module) -> bool:
    """True where the weight is stored in × out (``Conv1D``: y = x W + b) rather than out × in."""
    conv1d = _conv1d_type()
    return conv1d is not None and isinstance(module, conv1d)


def transposed_weights(model: nn.Module, params: Mapping[str, nn.Parameter]) -> frozenset[str]:
    """The names in ``params`` of weights stored input × output (``Conv1D``), whose output rows are columns."""
    transposed = {id(m.weight) for m in model.modules() if weight_is_transposed(m)}
    return frozenset(name for name, p in params.items() if id(p) in transposed)


def infer_task(model: str) -> str:
    """The task a checkpoint is for, from its saved architecture (:func:`salience_bench.tasks.infer_task`: a
    next-token head is a causal LM, anything else gets a classification head)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(check_model_name(model))
    except Exception as err:  # the same boundary as loading: any failure is a bad model argument
        raise SalienceBenchError(f"cannot read the config of model {model!r}: {str(err).strip().splitlines()[0]}") from err
    return infer_task_of(config)


def load_model_and_tokenizer(
    model: str = BUNDLED_MODEL, *, num_labels: int = 2, seed: int = 0, dtype: torch.dtype | None = None,
    task: str = "classification",
):
    """The model for ``task`` and its tokenizer.

    ``classification``: a sequence classifier with a newly initialised ``num_labels``-way head
    (``seed`` fixes it, so the same seed gives the same gradients and masks). ``causal-lm``: the
    checkpoint's own language-model head. ``auto``: from the checkpoint (see :func:`infer_task`).
    """
    from transformers import AutoTokenizer

    if check_task_name(task) == "auto":
        task = infer_task(model)
    path = check_model_name(model)
    torch.manual_seed(seed)
    options = {"dtype": dtype} if dtype is not None else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        net, loading = get_task(task).load_model(path, num_labels=num_labels, options=options)
    except Exception as err:  # transformers, safetensors and the hub raise many types for a bad checkpoint
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SalienceBenchError(
            f"cannot load model {model!r}: {first_line} [{type(err).__name__}] "
            f"(use '{BUNDLED_MODEL}', a local folder, or a Hugging Face name when online)"
        ) from err
    if tokenizer.pad_token is None:
        # Decoder-only models often ship without one; padding with EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(net.config, "pad_token_id", None) is None:
        net.config.pad_token_id = tokenizer.pad_token_id
    mark_new_parameters(net, [*loading.get("missing_keys", ()), *(k[0] for k in loading.get("mismatched_keys", ()))])
    return net, tokenizer


_NEW_PARAMETERS = "salience_bench_new_parameters"  # set on a model by mark_new_parameters


def mark_new_parameters(model: nn.Module, names: Sequence[str]) -> None:
    """Record which of ``model``'s parameters were initialised anew (from_pretrained's missing and resized keys):
    the task head that every training method trains densely (see :func:`new_parameters`)."""
    own = {n for n, _ in model.named_parameters()}
    setattr(model, _NEW_PARAMETERS, tuple(sorted(set(names) & own)))


def new_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The newly initialised parameters of ``model`` (a classifier's new head: BERT's ``classifier``, DistilBERT's
    ``pre_classifier`` and ``classifier``, BART's ``classification_head``, Llama's ``score``), by name.

    For a model loaded by :func:`load_model_and_tokenizer`, what ``from_pretrained`` reported as missing from the
    checkpoint or resized. For a model built in memory (from a config, so nothing is pretrained), the parameters
    outside its backbone (transformers' ``base_model``) other than its output embeddings (a causal LM's head,
    which belongs to the language model)."""
    recorded = model.__dict__.get(_NEW_PARAMETERS)
    if recorded is not None:
        named = dict(model.named_parameters())
        return {n: named[n] for n in recorded}
    backbone = getattr(model, "base_model", model)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inside = {id(p) for p in backbone.parameters()} | {id(p) for p in (output.parameters() if output is not None else ())}
    return {n: p for n, p in model.named_parameters() if id(p) not in inside}


def _default_eligible(module_name: str, module: nn.Module) -> bool:
    """Linear layers inside the repeated transformer blocks (a numbered child of a ModuleList)."""
    return is_linear(module) and bool(_BLOCK_INDEX.search(module_name + "."))


def linear_modules_for(
    model: nn.Module, params: Mapping[str, nn.Parameter], purpose: str = "this is"
) -> dict[str, nn.Module]:
    """The linear layer (``nn.Linear`` or ``Conv1D``) owning each parameter, keyed by parameter name;
    a clear error otherwise. ``purpose`` completes the error message, e.g. "fisher needs per-example
    gradients, which are"."""
    owners = {id(m.weight): m for m in model.modules() if is_linear(m)}
    modules = {}
    for name, p in params.items():
        module = owners.get(id(p))
        if module is None:
            raise SalienceBenchError(
                f"{purpose} computed for linear-layer weights only (nn.Linear, Conv1D); "
                f"{name!r} is not one (exclude it with --exclude or pick another metric)"
            )
        modules[name] = module
    return modules


def eligible_parameters(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> dict[str, nn.Parameter]:
    """The parameters to score, by name, in model order.

    Default: the ``weight`` of every linear layer (``nn.Linear``, ``Conv1D``) inside the transformer blocks (attention
    and MLP projections); embeddings, norms, biases, pooler and task head are left out.
    ``include`` (glob patterns over parameter names) replaces that default selection;
    ``exclude`` patterns then remove names.
    """
    if include:
        chosen = {
            name: p for name, p in model.named_parameters() if any(fnmatch.fnmatchcase(name, pat) for pat in include)
        }
    else:
        chosen = {
            f"{mname}.weight": m.weight for mname, m in model.named_modules() if _default_eligible(mname, m)
        }
        # Keep model order (named_parameters order) and drop tied duplicates.
        order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
        chosen = dict(sorted(((n, p) for n, p in chosen.items() if n in order), key=lambda kv: order[kv[0]]))
    if exclude:
        chosen = {n: p for n, p in chosen.items() if not any(fnmatch.fnmatchcase(n, pat) for pat in exclude)}
    if not chosen:
        raise SalienceBenchError(
            f"no eligible tensors in {type(model).__name__} with include={list(include or [])} "
            f"exclude={list(exclude or [])}; example parameter names: "
            + ", ".join(n for n, _ in list(model.named_parameters())[:5])
        )
    return chosen
