"""
Many processes: data-parallel training over MPI, and ZeRO-1 (llm.c's llmc/zero.cuh, on the CPU).

`mpirun -np N python train_gpt2.py ...` starts N copies of the trainer, on one machine or many, which train one model
together, as llm.c's trainer does on N GPUs. Each process (rank 0..N-1) holds the whole model and reads its own B rows
of every batch (the data loader's process_rank), so a step sees N*B rows; its backward pass scales the loss by 1/N,
and one all-reduce per optimizer step sums the gradients over the processes: every process then holds the gradient
of the mean loss over all N*B rows and takes the same AdamW step. With ZeRO-1 (-z 1), each process keeps AdamW's m
and v for its 1/N slice of the parameters only: the gradients are reduce-scattered (each process gets the sum of its
slice), each process updates its slice, and an all-gather gives every process all the parameters again. Rank 0
prints, samples and writes the model and main.log; every rank writes its own training state. Without mpirun, MPI is
never imported, and ONE_PROCESS stands for the one process.
"""

import contextlib
import os
import zlib

import numpy as np

from llmc.files import GPT2Error


def launched_processes():
    """How many processes mpirun started, from the environment it gives them (Open MPI's, or MPICH's Hydra)."""
    return int(os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("PMI_SIZE") or 1)


def launched_rank():
    return int(os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("PMI_RANK") or 0)


class Processes:
    def __init__(self, zero=False, comm=None):
        self.comm, self.zero = comm, zero
        self.rank, self.count = (comm.rank, comm.size) if comm else (0, 1)
        self.received = None  # reduce_scatter's buffer

    @classmethod
    def start(cls, zero):
        """This process and its peers: under mpirun, MPI's world; otherwise this process alone."""
        if launched_processes() == 1:
            return cls(zero)
        try:
            from mpi4py import MPI
        except ImportError:
            raise GPT2Error("mpirun started this process, but mpi4py is not installed: pip install '.[mpi]'") from None
        return cls(zero, MPI.COMM_WORLD)

    def shards(self, size):
        """(start, stop) of each process's slice of `size` values, in rank order: equal but for one value."""
        counts = [size // self.count + (rank < size % self.count) for rank in range(self.count)]
        starts = np.cumsum([0] + counts[:-1]).tolist()
        return [(start, start + count) for start, count in zip(starts, counts)]

    def optimizer_shard(self, num_parameters):
        """With ZeRO-1, the slice of the parameters whose AdamW state this process keeps; None for all of them."""
        return self.shards(num_parameters)[self.rank] if self.zero and self.comm else None

    @contextlib.contextmanager
    def together(self):
        """A block that may fail on one process alone (its own files, rank 0's work): if it fails on any process,
        it fails on all, with the message of the first rank that failed, so that none waits for the others
        forever. With one process, nothing to do."""
        error = None
        try:
            yield
        except (GPT2Error, OSError, MemoryError) as e:
            error = e
        if self.comm:
            failed = next((message for message in self.comm.allgather(error and str(error)) if message), None)
            if failed:
                raise GPT2Error(failed, every_process=True) from None
        elif error:
            raise error

    def broadcast(self, value):
        """Rank 0's value, on every process."""
        return self.comm.bcast(value) if self.comm else value

    def sum(self, value):
        """The sum of a number over the processes, the same on every process (added up in rank order)."""
        return sum(self.comm.allgather(value)) if self.comm else value

    def average(self, value):
        return self.sum(value) / self.count

    def sum_gradients(self, model, optimizer):
        """Every process's gradients summed: with ZeRO-1 into this process's slice of the gradient buffer, where its
        optimizer reads them (a reduce-scatter); otherwise into all of it, on every process (an all-reduce, made of
        the same reduce-scatter and an all-gather: each slice is summed once, by its process, so every process holds
        the same sums to the bit)."""
        if self.comm:
            self.reduce_scatter(model.grads_memory)
            if not self.zero:
                self.all_gather(model.grads_memory)

    def reduce_scatter(self, x):
        """Sums x over the processes into each process's slice of it, around a ring: at exchange k, process r sends
        its running sum of slice r-k-1 to process r+1 and adds what r-1 sends of slice r-k-2 to its own; after N-1
        exchanges its slice r holds the sum of all. (Open MPI's own Reduce_scatter was slower here, see the README,
        and took a temporary buffer the size of x.) The other slices of x are left holding partial sums."""
        shards, rank, count = self.shards(x.size), self.rank, self.count
        if self.received is None:  # allocated once: fresh pages every step cost their faults
            self.received = np.empty(max(stop - start for start, stop in shards), dtype=x.dtype)
        received = self.received
        for k in range(count - 1):
            send_start, send_stop = shards[(rank - k - 1) % count]
            start, stop = shards[(rank - k - 2) % count]
            self.comm.Sendrecv(x[send_start:send_stop], dest=(rank + 1) % count,
                               recvbuf=received[:stop - start], source=(rank - 1) % count)
            x[start:stop] += received[:stop - start]

    def sum_over_slices(self, value):
        """With ZeRO-1, the sum over the processes of a number that each computed from its slice of the gradients
        (added up in rank order); otherwise every process has all the gradients, and the number is already whole."""
        return sum(self.comm.allgather(value)) if self.comm and self.zero else value

    def all_gather(self, x):
        """Each process's slice of x to every process."""
        from mpi4py import MPI
        from mpi4py.util.dtlib import from_numpy_dtype
        shards = self.shards(x.size)
        counts, starts = [stop - start for start, stop in shards], [start for start, _ in shards]
        self.comm.Allgatherv(MPI.IN_PLACE, [x, counts, starts, from_numpy_dtype(x.dtype)])

    def gather_parameters(self, model):
        """With ZeRO-1, each process updated its slice of the parameters: an all-gather gives every process all."""
        if self.comm and self.zero:
            self.all_gather(model.params_memory)

    def check_same_parameters(self, model):
        """The processes' parameters must be equal to the bit; a cheap check of it, made at each checkpoint."""
        if self.comm and len(set(self.comm.allgather(zlib.crc32(model.params_memory)))) > 1:
            raise GPT2Error("the processes' parameters differ: their MPI reductions did not agree to the bit")


ONE_PROCESS = Processes()  # a run without mpirun
