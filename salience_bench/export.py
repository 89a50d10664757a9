"""Masks as files (safetensors) and as peft adapters.

``save_masks`` writes each tensor's sorted selected positions (int32, or int64 for tensors of 2^31 entries
or more) and shape, plus JSON metadata (metric, mask options, seed, model, a fingerprint of the scored
weights, package version); ``load_masks`` reads them back bit for bit. ``check_masks`` refuses masks made
for other tensors or other weights. ``to_peft_shira`` turns LoRA-matched masks (r·(m+n) entries per layer)
into a peft SHiRA adapter, so the mask trains with ``transformers.Trainer`` and saves as any peft adapter.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .errors import SalienceBenchError
from .masks import MaskSet
from .models import linear_modules_for, new_parameters, weight_is_transposed
from .report.io import atomic_path

FORMAT = "salience_bench.masks/1"


def weights_fingerprint(params: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of ``params``, one tensor at a time."""
    digest = hashlib.sha256()
    for name, p in params.items():
        t = p.detach().contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.cpu().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_masks(path: str | os.PathLike, masks: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``masks`` (a ``MaskSet`` or a dict of boolean tensors) and ``metadata`` to a safetensors file."""
    from safetensors.torch import save_file

    masks = masks if isinstance(masks, MaskSet) else MaskSet.from_bool(masks)
    tensors, names = {}, list(masks)
    for i, name in enumerate(names):
        tensors[f"{i}.indices"] = masks.indices(name).cpu()  # int32, or int64 for tensors of 2^31 entries or more
        tensors[f"{i}.shape"] = torch.tensor(list(masks.shape_of(name)), dtype=torch.int64)
    header = {"format": FORMAT, "names": names, "metadata": dict(metadata or {}),
              "salience_bench": _version()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"salience_bench": json.dumps(header, default=str)})
    return path


def load_masks(path: str | os.PathLike) -> tuple[MaskSet, dict]:
    """(masks, metadata) from a file written by :func:`save_masks`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SalienceBenchError(f"mask file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get("salience_bench", "{}"))
            if header.get("format") != FORMAT:
                raise SalienceBenchError(f"{str(path)!r} is not a salience_bench mask file (format {header.get('format')!r})")
            names = header["names"]
            indices = {n: f.get_tensor(f"{i}.indices") for i, n in enumerate(names)}
            shapes = {n: torch.Size(f.get_tensor(f"{i}.shape").tolist()) for i, n in enumerate(names)}
    except SalienceBenchError:
        raise
    except Exception as err:  # safetensors raises its own types for a damaged file
        raise SalienceBenchError(f"cannot read mask file {str(path)!r}: {err}") from err
    return MaskSet(indices, shapes), header["metadata"]


def check_masks(masks: MaskSet, params: Mapping[str, nn.Parameter], metadata: Mapping[str, Any], *,
                source: str = "the mask file") -> None:
    """Refuse masks made for other tensors (names, shapes) or for other weights (the fingerprint)."""
    missing, extra = sorted(set(params) - set(masks)), sorted(set(masks) - set(params))
    if missing or extra:
        raise SalienceBenchError(f"{source} covers other tensors than this model's eligible ones "
                                 f"(missing {missing[:3]}, unknown {extra[:3]}); use the same model and --include/--exclude")
    for name, p in params.items():
        if tuple(masks.shape_of(name)) != tuple(p.shape):
            raise SalienceBenchError(f"{source}: {name!r} has shape {tuple(masks.shape_of(name))}, the model's "
                                     f"{tuple(p.shape)}")
    expected = metadata.get("weights_fingerprint")
    if expected and expected != weights_fingerprint(params):
        raise SalienceBenchError(f"{source} was made for other weights of these tensors (fingerprint "
                                 f"{expected[:12]}… ≠ {weights_fingerprint(params)[:12]}…): not the model it was scored on")


def to_peft_shira(model: nn.Module, masks: Mapping[str, torch.Tensor], r: int, *, adapter_name: str = "default"):
    """A peft SHiRA model on ``model`` whose trainable entries are exactly ``masks``.

    SHiRA trains r·(m+n) entries of each target layer: make the masks with ``scope="lora", rank=r``.
    The task head (if any) is trained densely through ``modules_to_save``.
    """
    try:
        from peft import ShiraConfig, get_peft_model
    except ImportError as err:
        raise SalienceBenchError("exporting to SHiRA needs peft ≥ 0.17 (ShiraConfig): pip install -U peft") from err
    params = dict(model.named_parameters())
    unknown = [n for n in masks if n not in params]
    if unknown:
        raise SalienceBenchError(f"masks name parameters this model does not have: {unknown[:3]}")
    modules = linear_modules_for(model, {n: params[n] for n in masks}, "SHiRA adapts weights that are")
    refuse_transposed({n: m for n, m in modules.items()}, "peft's SHiRA adapters (--export-peft)")
    by_weight = {}
    for name, module in modules.items():
        mask = masks[name]
        out_features, in_features = module.weight.shape
        if int(mask.sum()) != r * (in_features + out_features):
            raise SalienceBenchError(f"{name!r} has {int(mask.sum()):,} selected entries; SHiRA with r={r} trains "
                                     f"exactly r·(m+n) = {r * (in_features + out_features):,}: make the masks with "
                                     f"scope='lora', rank={r}")
        by_weight[id(module.weight)] = mask

    def mask_fn(base_layer: nn.Module, r: int, **kwargs) -> torch.Tensor:
        return by_weight[id(base_layer.weight)].to(device=base_layer.weight.device, dtype=base_layer.weight.dtype)

    targets = sorted(n.rsplit(".", 1)[0] for n in masks)
    heads = sorted({n.rsplit(".", 1)[0] for n in new_parameters(model)}) or None
    with warnings.catch_warnings():
        # peft warns that it does not know the mask type (ours is the mask_fn set below) and calls a
        # transformers method that transformers 5 deprecates; neither is ours to fix.
        warnings.filterwarnings("ignore", message=".*mask_type.*is not recognized.*")
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        config = ShiraConfig(r=r, target_modules=targets, modules_to_save=heads, mask_type="salience_bench")
        config.mask_fn = mask_fn
        return get_peft_model(model, config, adapter_name=adapter_name)


def refuse_transposed(modules: Mapping[str, nn.Module], what: str) -> None:
    """A one-line error where ``what`` (a peft method that takes nn.Linear only) meets weights stored input × output."""
    transposed = [name for name, module in modules.items() if weight_is_transposed(module)]
    if transposed:
        kind = type(modules[transposed[0]]).__name__
        raise SalienceBenchError(f"{what} adapt nn.Linear layers only, but {len(transposed)} eligible weights are in "
                                 f"transformers' {kind} layers (stored input × output, e.g. {transposed[0]!r}); leave "
                                 "it out for this model, or --exclude those layers")


def _version() -> str:
    try:
        return importlib_metadata.version("salience_bench")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"
