"""
What must happen before numpy and numba load, so the trainer and sample_gpt2.py import this first.

numba's parallel loops run on OpenMP threads and the matrix products on OpenBLAS's threads. By default both kinds
spin for a while when they run out of work, waiting for more, and on a machine with few cores the spinning threads
of one take the cores the other needs next, and a GPT-2 124M step ran much slower (the README's Performance section
has the figures). Idle threads should sleep at once; both settings are read when the libraries load.

Under mpirun, the processes on one machine share its cores: each takes its share of the cores it may run on, unless
OMP_NUM_THREADS says otherwise (mpirun binds each of 2 processes to a core of its own by default).
"""

import os
import signal
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # the minimum: 2**4 cycles
if os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") and hasattr(os, "sched_getaffinity"):
    cores = len(os.sched_getaffinity(0))
    if cores == os.cpu_count():  # not bound: every process on this machine may run on every core
        cores = max(1, cores // int(os.environ["OMPI_COMM_WORLD_LOCAL_SIZE"]))
    threads = os.environ.setdefault("OMP_NUM_THREADS", str(cores))
    os.environ.setdefault("NUMBA_NUM_THREADS", threads)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", threads)


def quiet_interrupt():
    """Ctrl-C while the libraries load and the program's functions are made: stop, quietly. (The trainer's main
    then installs its own handler.)"""
    signal.signal(signal.SIGINT, lambda signum, frame: (print("interrupted", file=sys.stderr), os._exit(130)))
