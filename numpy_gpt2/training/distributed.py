"""Data-parallel training over MPI (mpi4py): N processes ("ranks") run the same NumPy step on
different micro-batches and sum their gradients, as llm.c's train_gpt2.cu does with NCCL/MPI
and nanoGPT's train.py with torch DDP.

    mpiexec -n N python -m mpi4py scripts/train.py ...     (one machine or many)

Semantics: N ranks with --grad-accum m compute exactly what one process computes with
--grad-accum N*m. Every rank draws the same N*m micro-batches from the same sampler (same
seed, same RNG state) and keeps its share (rank r the micro-batches r*m ... r*m + m - 1), so
the sampler's state, resume and the batches stay what one process would have:

    n = sum_r n_r                             the kept targets (not ignore_index) of every
                                              rank's micro-batches: one small Allreduce(SUM)
    g = sum_r sum_j grad (S_{r,j} / n)        one in-place Allreduce(SUM) of a flat buffer
    loss = sum_r sum_j S_{r,j} / n            reduced in its own small message
    clip, AdamW, schedule                     identical on every rank (same g, same params)

(S_{r,j}: the summed cross-entropy of the kept targets of rank r's micro-batch j), so the
loss is the mean over all the step's kept targets, however they are padded and shared out
(train_step.accumulate_grads; docs/training.md#how-the-loss-is-averaged).

The gradient dict's arrays are views into one flat buffer, so the reduction is a single MPI
call on contiguous memory (llm.c's layout: all gradients in one allocation). With N=2 and
m=1 the sum g_0 + g_1 is the same float operation one process does, so the weights are bit
for bit those of one process with --grad-accum 2 (at the same BLAS thread count); otherwise
the summation order differs and results agree to rounding.

Only rank 0 prints and writes; every decision that ends a run (bad input, a non-finite loss,
Ctrl-C/SIGTERM on any rank) is taken collectively, so all ranks stop together; an unhandled
exception on one rank aborts all (MPI_Abort), so a job never hangs on a dead rank.

mpi4py is imported only when the process was started with more than one rank (mpiexec/srun
set PMI_SIZE or OMPI_COMM_WORLD_SIZE); one process needs no MPI at all (Solo).
"""

from __future__ import annotations

import os
import sys
import traceback
import zlib

import numpy as np

from numpy_gpt2.errors import NonFiniteError
from numpy_gpt2.params import flatten_params, nest_params
from numpy_gpt2.training.step import accumulate_grads, evaluate, evaluation_sums, kept_targets, no_targets_error

SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_size() -> int:
    """The number of ranks the launcher started (1 without one): mpiexec and srun tell each
    process through the environment; `python -m mpi4py` has already imported MPI."""
    if "mpi4py.MPI" in sys.modules:
        return sys.modules["mpi4py.MPI"].COMM_WORLD.Get_size()
    for name in SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def world():
    """Solo() for one process, MPIWorld() when launched with more than one rank. RuntimeError
    saying how to install it when more ranks run but mpi4py is missing."""
    if launched_size() <= 1:
        return Solo()
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError(f"started as one of {launched_size()} MPI ranks, but mpi4py is not "
                           f"installed: pip install 'numpy_gpt2[mpi]' (or mpi4py mpich)") from None
    return MPIWorld(MPI)


class Solo:
    """One process: every collective is the identity; training is exactly today's."""

    rank, size, is_root = 0, 1, True

    def share(self, items):
        return list(items)

    def accumulate_grads(self, params, config, micro_batches, ignore_index: int = -100):
        # for train_step, which checks the gradients through their norm (one pass less)
        return accumulate_grads(params, config, micro_batches, ignore_index, check_grads=False)

    def evaluate(self, params, config, batches, ignore_index: int = -100) -> float:
        return evaluate(params, config, batches, ignore_index)

    def any(self, flag: bool) -> bool:
        return bool(flag)

    def max(self, value: int) -> int:
        return int(value)

    def first_error(self, message):
        return message

    def broadcast_params(self, params) -> None:
        pass

    def check_same_params(self, params) -> None:
        pass

    def barrier(self) -> None:
        pass

    def finish(self) -> None:
        pass


class MPIWorld:
    """N ranks over MPI.COMM_WORLD (see module doc)."""

    def __init__(self, MPI):
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.is_root = self.rank == 0
        self.buffer = None  # the flat gradient buffer, made on first use
        sys.excepthook = self._abort_on_exception

    def _abort_on_exception(self, kind, value, tb):
        # An unhandled exception on one rank must end every rank, not leave them waiting in
        # the next collective; the traceback goes to the real stderr (rank > 0 is quiet).
        traceback.print_exception(kind, value, tb, file=sys.__stderr__)
        sys.__stderr__.flush()
        self.comm.Abort(130 if issubclass(kind, KeyboardInterrupt) else 1)

    def share(self, items):
        """This rank's share of a list made identically on every rank: items[r*k:(r+1)*k],
        k = len(items) / N (ValueError unless N divides it)."""
        items = list(items)
        if len(items) % self.size:
            raise ValueError(f"{len(items)} items cannot be shared equally by {self.size} ranks")
        k = len(items) // self.size
        return items[self.rank * k:(self.rank + 1) * k]

    def grad_views(self, params) -> dict:
        """A gradient dict mirroring params whose arrays are views into one flat buffer."""
        flat = flatten_params(params)
        dtype = next(iter(flat.values())).dtype
        total = sum(p.size for p in flat.values())
        if self.buffer is None or self.buffer.size != total or self.buffer.dtype != dtype:
            self.buffer = np.empty(total, dtype)
            views, at = {}, 0
            for key, p in flat.items():
                views[key] = self.buffer[at:at + p.size].reshape(p.shape)
                at += p.size
            self.grads = nest_params(views)
        return self.grads

    def accumulate_grads(self, params, config, micro_batches, ignore_index: int = -100):
        """(loss, gradient) of every rank's micro-batches taken as one batch (this rank holds
        its share): the kept targets counted over all ranks first (one small Allreduce), each
        micro-batch's summed loss divided by that count and its gradient added into the flat
        buffer, one Allreduce(SUM) of the buffer, the loss reduced in one small message.
        ValueError on every rank when no rank has a kept target. A rank whose own loss or
        gradients are not finite contributes NaN, so every rank sees the same non-finite loss."""
        counts = kept_targets(config, micro_batches, ignore_index)
        n = np.array([sum(counts)], dtype=np.int64)
        self.comm.Allreduce(self.MPI.IN_PLACE, n, op=self.MPI.SUM)
        if n[0] == 0:
            raise no_targets_error(f"the step's {self.size * len(micro_batches)} micro-batch(es) "
                                   f"on {self.size} ranks", ignore_index)
        grads = self.grad_views(params)
        self.buffer[...] = 0
        try:
            local, _ = accumulate_grads(params, config, micro_batches, ignore_index,
                                        num_items_in_batch=int(n[0]), grads=grads)
        except (FloatingPointError, NonFiniteError):  # this rank's loss or gradients are
            local = float("nan")  # not finite: every rank must learn it, in the reduction
        self.comm.Allreduce(self.MPI.IN_PLACE, self.buffer, op=self.MPI.SUM)
        total = np.array([local])
        self.comm.Allreduce(self.MPI.IN_PLACE, total, op=self.MPI.SUM)
        return float(total[0]), grads

    def evaluate(self, params, config, batches, ignore_index: int = -100) -> float:
        """evaluate() over all batches, each rank scoring batches[r::N]: the ranks' summed
        losses and target counts reduced, then divided (the same mean, up to the order of
        the additions). ValueError on every rank when no target is kept."""
        total, count = evaluation_sums(params, config, batches[self.rank::self.size], ignore_index)
        sums = np.array([total, count], dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, sums, op=self.MPI.SUM)
        if sums[1] == 0:
            raise no_targets_error(f"the {len(batches)} evaluation batch(es)", ignore_index)
        return float(sums[0] / sums[1])

    def any(self, flag: bool) -> bool:
        """True on every rank when flag is True on any (Ctrl-C or SIGTERM on one rank)."""
        return bool(self.comm.allreduce(int(bool(flag)), op=self.MPI.MAX))

    def max(self, value: int) -> int:
        """The largest of the ranks' integers, on every rank (e.g. the number of a stop signal
        one rank received, 0 on the others)."""
        return int(self.comm.allreduce(int(value), op=self.MPI.MAX))

    def first_error(self, message):
        """Collective: None when no rank has an error message, else the lowest failing
        rank's message (prefixed with its rank unless it is rank 0's), on every rank."""
        for rank, m in enumerate(self.comm.allgather(message)):
            if m is not None:
                return m if rank == 0 else f"rank {rank}: {m}"
        return None

    def broadcast_params(self, params) -> None:
        """Rank 0's weights to every rank, in place (the ranks start identical)."""
        for p in flatten_params(params).values():
            self.comm.Bcast(p, root=0)

    def check_same_params(self, params) -> None:
        """RuntimeError, on every rank, unless all ranks hold the same weights (a CRC-32 of
        every array's bytes, gathered)."""
        crc = 0
        for p in flatten_params(params).values():
            crc = zlib.crc32(np.ascontiguousarray(p).view(np.uint8).reshape(-1), crc)
        sums = self.comm.allgather(crc)
        if len(set(sums)) > 1:
            raise RuntimeError(f"the ranks' weights differ (CRC-32 per rank: "
                               f"{', '.join(f'{s:08x}' for s in sums)}); not saving")

    def barrier(self) -> None:
        self.comm.Barrier()

    def finish(self) -> None:
        """End MPI cleanly before exiting, so a collective non-zero exit status is not
        turned into MPI_Abort by `python -m mpi4py` (every rank exits with the same status).
        Output is flushed first: the launcher stops forwarding it once MPI is finalized."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Barrier()
        self.MPI.Finalize()
