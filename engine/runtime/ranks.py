"""A role over several processes: ranks of one torch.distributed group.

Two halves:

* inside a rank (the worker process): ``init_rank`` joins the group (gloo on CPU, NCCL on GPU);
  ``RankContext`` tells a role its rank and strategy and does the collective parts of an update
  (``ddp``: sum the gradients over ranks; ``fsdp``: ``fully_shard`` the model, full state dicts
  for checkpoints in the one-process format);
* in the controller: ``RoleGroup``, an endpoint with the driver's ``submit(RoleCall) ->
  Future[RoleResult]`` (engine/runtime/calls.py) that fans one call out to the ranks'
  endpoints and gathers. It knows nothing about how a rank is hosted: the local backend gives it
  worker-process endpoints, another backend (Ray actors) can give it its own.

How an operation is spread (``SPLIT_OPS`` / ``MEAN_OPS`` / the rest):

* ``logprobs``, ``ref_logprobs`` (a LoRA actor's base), ``values``, ``score``: the batch is cut into W equal contiguous shares, rank r
  scores share r, the outputs are concatenated in rank order;
* ``update``: every rank gets the whole batch and the same shuffle (seeded by step), and takes
  its share of each mini-batch (``RankContext.micro_parts``); gradients are summed over the
  ranks before clipping, so the step equals the one-process step; per-rank statistics (scaled
  by ``micro_parts`` so that their mean is the one-process statistic) are averaged;
* everything else (``generate``, ``save``, ``load``, ``memory`` ...): every rank runs it with the
  same arguments (generation: same weights and same RNG state on every rank, so the same tokens;
  with FSDP every rank must take part in each forward anyway); rank 0's answer is returned.
"""
from __future__ import annotations

import datetime
import threading
from concurrent.futures import Future
from dataclasses import replace
from typing import Any, Optional, Sequence

import torch

from engine.runtime.calls import RoleCall, RoleResult

SPLIT_OPS = frozenset({"logprobs", "ref_logprobs", "values", "score"})
MEAN_OPS = frozenset({"update"})


def group_world_size(cfg, group: list[str]) -> int:
    """How many processes (ranks) host a worker group: a single role's ``<role>.world_size``;
    a colocation group of several roles is always one process."""
    if len(group) != 1:
        return 1
    return int(getattr(getattr(cfg, group[0]), "world_size", 1) or 1)


# ------------------------------------------------------------------------------ inside a rank


def init_rank(rank: dict, device: str, timeout_s: float = 600.0) -> None:
    """Join the role's process group. ``rank``: {"rank", "world_size", "init_method"}."""
    import torch.distributed as dist

    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(
        backend="nccl" if cuda else "gloo", init_method=rank["init_method"],
        rank=int(rank["rank"]), world_size=int(rank["world_size"]),
        timeout=datetime.timedelta(seconds=float(timeout_s)),
    )


class RankContext:
    """A role's view of its group: rank 0 of 1 when the process is not in one."""

    def __init__(self, strategy: str = "ddp", reshard_after_forward: bool = True):
        import torch.distributed as dist

        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1
        self.strategy = strategy if self.world > 1 else "single"
        self.reshard = reshard_after_forward

    @property
    def fsdp(self) -> bool:
        return self.strategy == "fsdp"

    def micro_parts(self, micro: list, n_mb: int, mask: torch.Tensor) -> list[tuple]:
        """This rank's part of one mini-batch of ``n_mb`` rows cut into ``micro`` (row-index
        tensors): ``(rows, weight, scale)`` per part. ``weight`` multiplies the part's token-mean
        loss before backward so that the gradients summed over the ranks equal the one-process
        gradient; ``scale`` multiplies its statistics so that their mean over the ranks equals
        the one-process statistic.

        * as many micro-batches as ranks or a multiple: each rank takes whole micro-batches
          (equal contiguous shares), weight len/n_mb as in one process;
        * fewer (e.g. one micro-batch of 8 rows on 2 ranks): each micro-batch's rows are split,
          and a part's token-mean is weighted by its share of the micro-batch's tokens.
        """
        if self.world == 1 or len(micro) % self.world == 0:
            k = len(micro) // self.world
            mine = micro[self.rank * k:(self.rank + 1) * k]
            return [(m, len(m) / n_mb, 1.0) for m in mine]
        out = []
        for m in micro:
            part = torch.chunk(m, self.world)[self.rank]
            total = float(mask[m].sum())
            frac = float(mask[part].sum()) / total if total else 1.0 / self.world
            out.append((part, len(m) / n_mb * frac, frac * self.world))
        return out

    def any_true(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (one scalar all-reduce), so a
        check that fails on one rank's data makes every rank stop at the same point instead of
        leaving the others waiting in a collective."""
        if self.world == 1:
            return bool(flag)
        import torch.distributed as dist

        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([1.0 if flag else 0.0], device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    # ---- model ------------------------------------------------------------------------
    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """ddp: the same starting weights on every rank (rank 0's); fsdp: shard the model —
        each transformer block, then the root — with gradients summed (not averaged)."""
        if self.world == 1:
            return model
        import torch.distributed as dist

        if not self.fsdp:
            with torch.no_grad():
                for t in list(model.parameters()) + list(model.buffers()):
                    dist.broadcast(t.data, 0)
            return model
        from torch.distributed.fsdp import fully_shard

        block_types = set(getattr(model, "_no_split_modules", None) or [])
        for m in model.modules():
            if type(m).__name__ in block_types:
                fully_shard(m, reshard_after_forward=self.reshard)
        fully_shard(model, reshard_after_forward=self.reshard)
        import torch.distributed as dist

        gloo = dist.get_backend() == "gloo"
        for m in model.modules():
            if hasattr(m, "set_gradient_divide_factor"):
                m.set_gradient_divide_factor(1.0)        # sum, not mean, over the ranks
                if hasattr(m, "set_force_sum_reduction_for_comms"):
                    m.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
                elif gloo:
                    raise RuntimeError(f"torch {torch.__version__} cannot sum FSDP gradients over gloo "
                                       f"(no set_force_sum_reduction_for_comms); use strategy: ddp on CPU")
        return model

    def sync_grads(self, model: torch.nn.Module) -> None:
        """ddp: sum every gradient over the ranks (one flat all-reduce). fsdp: already done by
        the reduce-scatter in backward."""
        if self.world == 1 or self.fsdp:
            return
        import torch.distributed as dist

        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        off = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[off:off + n].view_as(p.grad))
            off += n

    # ---- checkpoints (the one-process format on every world size) -----------------------
    def writes(self) -> bool:
        return self.rank == 0

    def full_model_state(self, model) -> Optional[dict]:
        """fsdp: the whole state dict on rank 0 (collective; None on other ranks)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if self.rank == 0 else None

    def full_optimizer_state(self, model, optimizer) -> Optional[dict]:
        """fsdp: the optimizer's state in ``optimizer.state_dict()``'s one-process layout
        (parameter indices), on rank 0 (collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        osd = get_optimizer_state_dict(model, optimizer,
                                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank != 0:
            return None
        index = {n: i for i, n in enumerate(_trained_names(model))}
        return {"state": {index[k]: v for k, v in osd["state"].items()},
                "param_groups": [{**g, "params": [index[k] for k in g["params"]]}
                                 for g in osd["param_groups"]]}

    def load_full_state(self, model, optimizer, model_sd: dict, optim_sd: Optional[dict]) -> None:
        """fsdp: load one-process state dicts (every rank holds them) into the shards."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, model_sd, options=opts)
        if optim_sd is not None:
            names = _trained_names(model)
            osd = {"state": {names[int(i)]: v for i, v in optim_sd["state"].items()},
                   "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                                    for g in optim_sd["param_groups"]]}
            set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))


def _trained_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


# ------------------------------------------------------------------------- in the controller

def split_rows(tensors: dict, parts: int) -> list[dict]:
    """Cut every tensor along dim 0 into ``parts`` equal contiguous shares."""
    out: list[dict] = [{} for _ in range(parts)]
    for k, t in tensors.items():
        for i, c in enumerate(torch.chunk(t, parts, dim=0)):
            out[i][k] = c
    return out


def concat_rows(outputs: Sequence[dict]) -> dict:
    res = {}
    for k in outputs[0]:
        ts = [o[k] for o in outputs]
        if len({t.device for t in ts}) > 1:
            ts = [t.cpu() for t in ts]
        res[k] = torch.cat(ts, dim=0)
    return res


def mean_results(results: Sequence[dict]) -> dict:
    out = dict(results[0])
    for k, v in results[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = sum(float(r.get(k, v)) for r in results) / len(results)
    return out


class RoleGroup:
    """An endpoint over the ranks of one role (each rank an endpoint with ``submit``)."""

    def __init__(self, ranks: Sequence[Any]):
        if not ranks:
            raise ValueError("a role group needs at least one rank")
        self.ranks = list(ranks)

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def submit(self, call: RoleCall) -> Future:
        """``call`` on every rank (the rows of a ``SPLIT_OPS`` call's tensors shared out, the
        threads divided); one Future of the combined ``RoleResult``."""
        W = len(self.ranks)
        threads = call.threads
        per_rank_threads = max(1, int(threads) // W) if threads else threads
        if call.op in SPLIT_OPS and call.tensors:
            shares = split_rows(call.tensors, W)
        else:
            shares = [call.tensors] * W
        futs = [ep.submit(replace(call, tensors=shares[i], threads=per_rank_threads))
                for i, ep in enumerate(self.ranks)]
        return _gather(futs, call.op)


def _gather(futs: list[Future], op: str) -> Future:
    """One future for all ranks: fails as soon as one rank fails (the others may be blocked in
    a collective that will never complete), else combines when all are done."""
    out: Future = Future()
    lock = threading.Lock()
    done: dict[int, RoleResult] = {}

    def on_done(i: int, f: Future) -> None:
        with lock:
            if out.done():
                return
            err = f.exception()
            if err is not None:
                out.set_exception(err)
                return
            done[i] = f.result()
            if len(done) < len(futs):
                return
        vals = [done[i] for i in range(len(futs))]
        try:
            if op in SPLIT_OPS and vals[0].tensors:
                outs = concat_rows([v.tensors for v in vals])
            else:
                outs = vals[0].tensors
            info = mean_results([v.info for v in vals]) if op in MEAN_OPS else vals[0].info
            out.set_result(RoleResult(outs, info, max(v.seconds for v in vals)))
        except BaseException as e:  # noqa: BLE001
            out.set_exception(e)

    for i, f in enumerate(futs):
        f.add_done_callback(lambda f, i=i: on_done(i, f))
    return out
