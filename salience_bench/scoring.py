"""One pass over the scoring batches feeds every requested accumulator, then every scorer.

Each batch costs one forward and one backward. Each scored tensor's gradient is folded into the
accumulators as soon as autograd has it (a post-accumulate-grad hook) and freed at once, so no full
set of ``.grad`` tensors is kept. Accumulators that need another one's finished result run in a second
pass. Model scorers (``grasp``, ``synflow``, ``jacob_cov``) run the model their own way. Tensor scorers then turn the accumulators into
scores tensor by tensor.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import ExitStack
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .accumulators import Accumulator, get_accumulator, with_dependencies
from .accumulators.base import is_sharded, local_tensor, sharded
from .errors import SalienceBenchError, is_int
from .model_state import ScoringMode, batch_loss, check_batch
from .models import eligible_parameters, transposed_weights
from .runtime import available_memory, to_device
from .sharding import ShardServer, check_sharded_batches, summed_gradient
from .scorers import ModelContext, TensorStats, get_scorer, resolve_metrics, resolve_options


class Scores(dict):
    """``{metric: {param_name: float32 score shaped like the parameter}}`` for the per-tensor metrics;
    network-level metrics (one number per model, e.g. ``jacob_cov``) are in :attr:`network`.

    A tensor metric's scores are computed from the shared accumulators when read (see
    :class:`MetricScores`), so asking for K gradient metrics costs the accumulators they share,
    not K copies of the scores."""

    def __init__(self, per_tensor: Mapping[str, Mapping[str, torch.Tensor]] = (), network: Mapping[str, float] = (),
                 transposed: Collection[str] = ()):
        super().__init__(per_tensor)
        self.network: dict[str, float] = dict(network)
        # tensors stored input × output (Conv1D): masks by output row must know (MaskSpec.apply's ``transposed``)
        self.transposed = frozenset(transposed)
        self.server = None  # sharded scoring: the ShardServer rank 0 reads tensors through

    def serve(self) -> None:
        """Sharded scoring, ranks other than 0: answer rank 0's reads until it calls :meth:`stop` (no-op unsharded)."""
        if self.server is not None:
            self.server.serve()

    def stop(self) -> None:
        """Sharded scoring, rank 0: release the other ranks from :meth:`serve` (no-op unsharded)."""
        if self.server is not None:
            self.server.stop()

    def materialize(self, device: torch.device | str | None = None) -> "Scores":
        """Every score computed and stored (optionally moved to ``device``): for small models, saving, pickling."""
        return Scores({m: {n: (s if device is None else s.to(device)) for n, s in per.items()} for m, per in self.items()},
                      self.network, self.transposed)


class ScoreCache:
    """The most recently read score tensors of every metric of one :class:`Scores`, at most ``max_bytes`` in all
    (least recently read out first): masks, rank statistics and figures read each tensor several times, and a
    score can be costly to compute (lift's SVD). Each entry remembers its weight's in-place version counter, so a
    weight changed since (an optimizer step) is scored again. ``computed`` counts the scores computed."""

    def __init__(self, max_bytes: int):
        if not is_int(max_bytes) or max_bytes < 0:
            raise SalienceBenchError(f"score cache size {max_bytes!r} must be an integer number of bytes ≥ 0")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.computed = 0
        self._entries: OrderedDict[tuple[str, str], tuple[int, torch.Tensor]] = OrderedDict()

    def get(self, key: tuple[str, str], version: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        entry = self._entries.get(key)
        if entry is not None and entry[0] == version:
            self._entries.move_to_end(key)
            return entry[1]
        self._drop(key)
        value = compute()
        self.computed += 1
        size = value.numel() * value.element_size()
        if size <= self.max_bytes:
            while self.bytes + size > self.max_bytes:
                self._drop(next(iter(self._entries)))
            self._entries[key] = (version, value)
            self.bytes += size
        return value

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry[1].numel() * entry[1].element_size()


CACHE_LIMIT_BYTES = 2 << 30


def default_cache_bytes(device: torch.device, needed: int) -> int:
    """``needed`` (every score tensor of the run) when it fits in 2 GiB and in 20% of the device's free memory, else
    0. A small model's scores are then each computed once (SmolLM2-135M's 106M eligible weights, five metrics:
    2.1 GB; on 2 CPU cores `--metrics all` on MiniLM takes 95 s instead of 108). Beyond that they are computed on
    each read, in the memory the README states: a cache smaller than the scores would be emptied by every pass over
    them (masks, ranks read tensor after tensor), and on a GPU recomputing is cheap (a 0.95B Llama on an H200: the
    cached scores of three metrics held 9.2 GiB and saved 0.1 s of 4.9 s building their masks)."""
    return needed if needed <= min(CACHE_LIMIT_BYTES, 0.2 * available_memory(device)) else 0


class MetricScores(Mapping[str, torch.Tensor]):
    """One tensor metric's scores, each tensor's computed when it is read (float32, shaped like the
    parameter) from the accumulators and the weight as it is *then*, and kept in the shared, byte-bounded
    :class:`ScoreCache` (nothing per metric is stored beyond it). Treat the tensors as read-only."""

    def __init__(self, scorer, params: Mapping[str, nn.Parameter], accumulated: Mapping[str, Mapping[str, torch.Tensor]],
                 *, seed: int, num_batches: int, options: Mapping[str, Any], server=None, cache: ScoreCache | None = None):
        self.scorer, self.params, self.accumulated = scorer, dict(params), accumulated
        self.seed, self.num_batches, self.options, self.server = seed, num_batches, options, server
        self.cache = cache if cache is not None else ScoreCache(0)

    def __getitem__(self, name: str) -> torch.Tensor:
        p = self.params[name]
        return self.cache.get((self.scorer.name, name), p._version, lambda: self._compute(name, p))

    def _compute(self, name: str, p: nn.Parameter) -> torch.Tensor:
        if self.server is not None:  # sharded: the weight and accumulators assembled from every rank's shard
            weight, accumulated = self.server.fetch(name, sorted(self.scorer.needs))
        else:
            weight, accumulated = p.detach().float(), {need: self.accumulated[need][name] for need in self.scorer.needs}
        score = self.scorer(TensorStats(
            name=name, weight=weight, seed=self.seed, num_batches=self.num_batches, options=self.options,
            accumulated=accumulated,
        )).to(torch.float32)
        if score.shape != p.shape:
            raise SalienceBenchError(f"metric {self.scorer.name!r} returned shape {tuple(score.shape)} for {name!r} "
                                     f"{tuple(p.shape)}")
        return score

    def __iter__(self):
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def shape_of(self, name: str) -> torch.Size:
        return self.params[name].shape

    @property
    def device(self) -> torch.device | None:
        """Where the scores are computed (None when sharded: rank 0 assembles them from every rank)."""
        if self.server is not None or not self.params:
            return None
        return next(iter(self.params.values())).device


GRADIENT_BUCKET_BYTES = 64 << 20


class _GradientFolder:
    """Post-accumulate-grad hooks: each gradient is taken as float32 and freed from ``.grad`` at once; the
    float32 copies wait in a bucket of at most ``GRADIENT_BUCKET_BYTES`` and go to the accumulators together
    (one multi-tensor add per bucket, not one add per tensor from Python), and the rest when the batch's
    backward ends (:meth:`flush`). Same sums bit for bit: each tensor's contribution is added once, in batch
    order. Large tensors (an LLM's) fill a bucket each, as before; a small model's all go in one add."""

    def __init__(self, params: Mapping[str, nn.Parameter], accumulators: Sequence[Accumulator]):
        self.params, self.accumulators = params, accumulators
        self.names: list[str] = []
        self.grads: list[torch.Tensor] = []
        self.bytes = 0

    def __enter__(self) -> "_GradientFolder":
        self.handles = [p.register_post_accumulate_grad_hook(lambda param, name=name: self._take(name, param))
                        for name, p in self.params.items()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.names, self.grads, self.bytes = [], [], 0

    def _take(self, name: str, param: torch.Tensor) -> None:
        grad = local_tensor(param.grad).float()
        if is_sharded(param):  # this rank's shard of the ranks' averaged gradients: their sum
            grad = summed_gradient(grad)
        param.grad = None
        self.names.append(name)
        self.grads.append(grad)
        self.bytes += grad.numel() * 4
        if self.bytes >= GRADIENT_BUCKET_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.names:
            for acc in self.accumulators:
                acc.add_gradients(self.names, self.grads)
        self.names, self.grads, self.bytes = [], [], 0


def _run_pass(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    params: Mapping[str, nn.Parameter],
    accumulators: Sequence[Accumulator],
    desc: str,
    progress: bool,
    deterministic: bool = True,
) -> int:
    """One walk over ``batches`` feeding ``accumulators``; returns how many batches it saw."""
    device = local_tensor(next(iter(params.values()))).device
    backward = any(acc.needs_backward for acc in accumulators)
    num_batches = 0
    with ScoringMode(model, params, deterministic), ExitStack() as stack:
        for acc in accumulators:
            stack.enter_context(acc.hooks())
        folder = None
        if backward:
            folder = stack.enter_context(_GradientFolder(params, [a for a in accumulators if a.needs_backward]))
        with torch.set_grad_enabled(backward):
            for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
                check_batch(model, batch, num_batches)
                batch = to_device(batch, device)
                for acc in accumulators:
                    acc.start_batch(batch)
                loss = batch_loss(model, batch, num_batches)
                if backward:
                    loss.backward()
                    folder.flush()
                num_batches += 1
    return num_batches


def accumulate(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    params: Mapping[str, nn.Parameter],
    needs: Iterable[str] = ("mean_grad",),
    *,
    progress: bool | str = False,
    sum_dtype: torch.dtype | str = torch.float64,
    deterministic: bool = True,
) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    """Run the model over ``batches`` and return (the requested float32 accumulators, batch count).

    The model runs in eval mode (no dropout) so scores are deterministic; its training mode,
    ``requires_grad`` flags and ``.grad`` fields are restored afterwards. Under torch.distributed
    each rank passes its own share of the batches; sums and counts are all-reduced once per pass,
    so every rank gets the statistics of all batches.

    Per-batch contributions are summed in ``sum_dtype``: float64 (the default) makes the sums exact in
    practice, so 1 and N processes give bitwise-identical float32 statistics over the same batches;
    float32 halves the accumulators' memory, and the last bits then depend on the summation order.
    ``deterministic`` runs the pass with deterministic kernels (see :class:`ScoringMode`), so each batch's
    contribution repeats bit for bit on a GPU too; False allows faster, order-varying ones.
    """
    if not params:
        raise SalienceBenchError("no parameters to score: params is empty")
    sum_dtype = check_sum_dtype(sum_dtype)
    order = with_dependencies(needs)
    _check_memory(params, order, sum_dtype)
    first = [get_accumulator(n).create(model, params, sum_dtype=sum_dtype) for n in order if not get_accumulator(n).after]
    later = [get_accumulator(n).create(model, params, sum_dtype=sum_dtype) for n in order if get_accumulator(n).after]
    shards = sharded(params)
    if later or shards:
        batches = list(batches)  # walked once per pass
    if shards:
        check_sharded_batches(len(batches))
    desc = progress if isinstance(progress, str) else "scoring"
    device = local_tensor(next(iter(params.values()))).device
    results: dict[str, dict[str, torch.Tensor]] = {}
    num_batches = 0
    for index, group in enumerate([first, *([acc] for acc in later)]):
        if index:
            group[0].begin(results)
        seen = _run_pass(model, batches, params, group, desc if index == 0 else f"{group[0].name} pass", bool(progress),
                         deterministic)
        distributed.all_reduce_sum_([t for acc in group for t in acc.to_all_reduce()])
        seen = int(distributed.all_reduce_count(seen, device))
        if seen == 0:
            raise SalienceBenchError("no scoring batches: the data iterable was empty")
        num_batches = num_batches or seen
        for acc in group:
            results[acc.name] = acc.finalize(seen)
    return {n: results[n] for n in order}, num_batches


SUM_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def check_sum_dtype(value: torch.dtype | str) -> torch.dtype:
    """``float64`` / ``float32`` (a name or the dtype), else a clear error."""
    dtype = SUM_DTYPES.get(value, value) if isinstance(value, str) else value
    if dtype not in SUM_DTYPES.values():
        raise SalienceBenchError(f"sum_dtype {value!r} is not one of {sorted(SUM_DTYPES)}")
    return dtype


def _check_memory(params: Mapping[str, nn.Parameter], needs: Sequence[str], sum_dtype: torch.dtype) -> None:
    """Refuse before allocating when the parameter-shaped sums cannot fit in the device's free memory."""
    per_param = [n for n in needs if get_accumulator(n).param_shaped]
    if not per_param:
        return
    entries = sum(local_tensor(p).numel() for p in params.values())
    needed = entries * len(per_param) * sum_dtype.itemsize
    device = local_tensor(next(iter(params.values()))).device
    free = available_memory(device)
    if needed > free:
        hint = " (--sum-dtype float32 halves it" if sum_dtype == torch.float64 else " ("
        raise SalienceBenchError(
            f"the accumulators {per_param} need {needed / 2**30:.1f} GiB for {entries:,} scored entries in "
            f"{str(sum_dtype).removeprefix('torch.')}, but {device} has {free / 2**30:.1f} GiB free{hint}; "
            "--shard under torchrun splits them over the GPUs)")


def score(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]] | None, metrics: str | Sequence[str] = ("grad",),
          *, params: Mapping[str, nn.Parameter] | None = None, include: Sequence[str] | None = None,
          exclude: Sequence[str] | None = None, seed: int = 0, options: Mapping[str, Any] | None = None,
          progress: bool = False, sum_dtype: torch.dtype | str = torch.float64, deterministic: bool = True,
          cache_bytes: int | None = None) -> Scores:
    """Scores of every requested metric for every eligible tensor.

    Returns :class:`Scores`: ``{metric: {param_name: float32 tensor shaped like the parameter}}``
    for per-tensor metrics, and ``scores.network[metric]`` (a float) for network-level ones
    (``jacob_cov``). All per-tensor gradient metrics come from a single pass over ``batches`` (one
    backward per batch); metrics that need no data (magnitude, random, lift, synflow) need no batches.
    ``params`` overrides the include/exclude selection with an explicit name→parameter map;
    ``options`` sets scorer options (see ``scorer_options()``: ``lift_rank``, ``block_size`` …).
    ``sum_dtype`` and ``deterministic``: see :func:`accumulate`; the defaults give the same scores and masks
    for the same batches on any number of processes. ``cache_bytes`` bounds the :class:`ScoreCache` of computed
    score tensors (default: :func:`default_cache_bytes`, all of them or none; 0 computes every read afresh).
    """
    names = resolve_metrics(metrics)
    scorers = [get_scorer(n) for n in names]
    options = resolve_options(options)
    params = _checked_params(model, params) if params is not None else eligible_parameters(model, include, exclude)
    shards = sharded(params)
    batches = _check_scorers(model, scorers, params, batches, options)
    needs = set().union(*(s.needs for s in scorers if not s.whole_model))
    accumulated: dict[str, dict[str, torch.Tensor]] = {}
    num_batches = 0
    if needs:
        accumulated, num_batches = accumulate(
            model, batches, params, needs, progress=f"scoring {','.join(names)}" if progress else False,
            sum_dtype=sum_dtype, deterministic=deterministic,
        )
    result = Scores(transposed=transposed_weights(model, params))
    if shards:
        result.server = ShardServer(params, accumulated)
    cache = _score_cache(scorers, params, cache_bytes)
    for scorer in scorers:
        if scorer.whole_model:
            _run_model_scorer(scorer, ModelContext(model=model, params=params, batches=batches, seed=seed,
                                                   options=options), result)
        else:
            # Computed when read; their inputs (weights, accumulators) are checked once below, and the scores
            # themselves wherever they are consumed (masks refuse NaN/inf, rank statistics return NaN).
            result[scorer.name] = MetricScores(scorer, params, accumulated, seed=seed, num_batches=num_batches,
                                               options=options, server=result.server, cache=cache)
    if any(not s.whole_model for s in scorers):
        _check_inputs_finite(params, accumulated, shards)
    return result


def _score_cache(scorers: Sequence, params: Mapping[str, nn.Parameter], cache_bytes: int | None) -> ScoreCache:
    if cache_bytes is not None:
        return ScoreCache(cache_bytes)
    needed = sum(not s.whole_model for s in scorers) * 4 * sum(p.numel() for p in params.values())
    return ScoreCache(default_cache_bytes(local_tensor(next(iter(params.values()))).device, needed))


def _check_inputs_finite(params: Mapping[str, nn.Parameter], accumulated: Mapping[str, Mapping[str, torch.Tensor]],
                         shards: bool) -> None:
    """The inputs of scores computed on access, checked once: weights and accumulators all finite."""
    _check_finite("the weights", {n: local_tensor(p).detach() for n, p in params.items()}, shards)
    for need, per_tensor in accumulated.items():
        _check_finite(f"accumulator {need!r}", per_tensor, shards)


def _check_scorers(model: nn.Module, scorers: Sequence, params: Mapping[str, nn.Parameter], batches,
                   options: Mapping[str, Any]):
    """Every check before the pass: shardable metrics, each scorer's own shape check, batches for the metrics that
    need data (checked up front, and listed, for model scorers that walk them again). Returns the batches."""
    if sharded(params):
        _check_shardable(scorers)
    shapes = {name: tuple(p.shape) for name, p in params.items()}
    for scorer in scorers:
        if scorer.check_shapes is not None:
            scorer.check_shapes(shapes, options)
    data_users = sorted(s.name for s in scorers if s.uses_data)
    if data_users and batches is None:
        raise SalienceBenchError(f"metrics {data_users} need scoring batches")
    if any(s.whole_model and s.needs_data for s in scorers) and batches is not None:
        batches = list(batches)  # more than one pass will walk them
        for index, batch in enumerate(batches):  # model scorers run the model themselves: the same checks first
            check_batch(model, batch, index)
    return batches


def _run_model_scorer(scorer, context: ModelContext, result: Scores) -> None:
    """A model scorer's per-tensor scores into ``result`` (checked), or its one finite number into ``result.network``."""
    value = scorer(context)
    if scorer.network_level:
        number = float(value)
        if not torch.isfinite(torch.tensor(number)):
            raise SalienceBenchError(f"metric {scorer.name!r} produced {number}")
        result.network[scorer.name] = number
    else:
        result[scorer.name] = _checked(scorer.name, dict(value), context.params)


def _check_shardable(scorers: Sequence) -> None:
    """Metrics sharded scoring can compute: tensor scorers whose accumulators survive FSDP's summed gradients."""
    whole = sorted(s.name for s in scorers if s.whole_model)
    per_batch = sorted(s.name for s in scorers
                       if not s.whole_model and not all(get_accumulator(n).shardable for n in with_dependencies(s.needs)))
    if whole or per_batch:
        raise SalienceBenchError(
            f"sharded scoring cannot compute {whole + per_batch}: "
            + (f"{whole} run the whole model their own way; " if whole else "")
            + (f"{per_batch} need each batch's own gradient, which FSDP sums with the other ranks' batches; "
               if per_batch else "") + "score them without --shard")


def _checked_params(model: nn.Module, params: Any) -> dict[str, nn.Parameter]:
    if not isinstance(params, Mapping) or not params:
        raise SalienceBenchError(f"params must be a non-empty dict of the model's parameters by name, got {params!r:.60}")
    own = {id(p) for p in model.parameters()}
    for name, p in params.items():
        if not isinstance(p, nn.Parameter) or id(p) not in own:
            raise SalienceBenchError(f"params[{name!r}] is not a parameter of the model ({type(p).__name__}); "
                                     "pass entries of dict(model.named_parameters())")
    return dict(params)


def _checked(metric: str, per_tensor: dict[str, torch.Tensor], params: Mapping[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """A model scorer's float32 scores, shaped like their parameters and all finite."""
    for pname, p in params.items():
        s = per_tensor[pname] = per_tensor[pname].to(torch.float32)
        if s.shape != p.shape:
            raise SalienceBenchError(f"metric {metric!r} returned shape {tuple(s.shape)} for {pname!r} {tuple(p.shape)}")
    _check_finite(metric, per_tensor)
    return per_tensor


def _check_finite(what: str, tensors: Mapping[str, torch.Tensor], sharded_tensors: bool = False) -> None:
    """Every entry finite, one tensor at a time, with one host read for all of them."""
    names = list(tensors)
    non_finite = torch.stack([t.numel() - torch.isfinite(t).count_nonzero() for t in tensors.values()])
    if sharded_tensors:  # each rank checked its shards: every rank raises, or none (no rank left waiting)
        distributed.all_reduce_sum_([non_finite])
    for pname, bad in zip(names, non_finite.tolist()):
        if bad:
            label = f"metric {what!r} produced" if not what.startswith(("the ", "accumulator")) else f"{what} hold"
            raise SalienceBenchError(f"{label} {bad} NaN/inf values in {pname!r}")
