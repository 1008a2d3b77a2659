"""
The run directory, -o: one run's main.log and checkpoints, its lock, and resuming from it.

With -o DIR, a run writes a checkpoint at its last step, and with -n N every N steps, as llm.c's full trainer does:
model_%08d.bin (the model file), state_%08d_%05d.bin for each process (llm.c's training state, llmc/state.py) and
last DONE_%08d, an empty file that marks the checkpoint complete. Every file is written to a temporary name, flushed
to the disk and renamed, so a run killed at any moment leaves only whole checkpoints, and -y 1 resumes from the newest
one and continues exactly as if it had never stopped. A run directory holds one run only: a fresh run refuses a
directory that holds another run's log or checkpoints, so that a resume can never load the files of two runs, and a
second run writing into it at the same time is refused too (a lock file, .lock).
"""

import fcntl
import os
import re

import numpy as np

from llmc.files import GPT2Error, check_regular_file, is_temporary_name, process_exists, write_atomically
from llmc.state import extends_run, read_state_file, write_state_file

CHECKPOINT_FILE = re.compile(r"model_([0-9]{8})\.bin|state_([0-9]{8})(_[0-9]{5})?\.bin|DONE_([0-9]{8})")


class RunDirectory:
    """-o, as this process sees it: rank 0 holds its lock and writes main.log and the DONE_ files; every process
    writes its own training state (and the trainer's rank 0 the model file). Without -o, a run directory of none:
    nothing is written and nothing resumed."""

    def __init__(self, path, processes):
        self.path, self.processes = path, processes
        self.log_path = os.path.join(path, "main.log") if path else None
        self.lock = None  # rank 0's lock on the directory, held while this object lives
        self.resume_step = None  # the step of the checkpoint this run resumes from, if any

    @classmethod
    def open(cls, args, processes):
        """Takes -o for this run: rank 0 locks it and finds the checkpoint to resume from (-y 1), and every process
        learns where the run starts."""
        run_dir = cls(args.output_dir, processes)
        with processes.together():
            if run_dir.path and processes.rank == 0:
                run_dir.take(args.resume)
        run_dir.resume_step = processes.broadcast(run_dir.resume_step)
        return run_dir

    def take(self, resume):
        """Locks the directory, removes what killed writes left, and refuses another run's files unless resuming."""
        self.lock = self.lock_directory()
        self.remove_leftovers()
        check_regular_file(self.log_path)
        if resume:
            self.resume_step = self.latest_checkpoint()
            if self.resume_step is None:
                print(f"no complete checkpoint in {self.path}: starting from the beginning")
            return
        previous = sorted(name for name in os.listdir(self.path)
                          if name == "main.log" or CHECKPOINT_FILE.fullmatch(name))
        if previous == ["main.log"]:
            raise GPT2Error(f"{self.path}: holds the log of another run, which wrote no checkpoint: -y 1 starts it "
                            "again from the beginning; or give a new or empty -o")
        if previous:
            raise GPT2Error(f"{self.path}: holds another run ({', '.join(previous[:3])}"
                            f"{', ...' if len(previous) > 3 else ''}): resume it with -y 1, or give a new or empty -o")

    def lock_directory(self):
        """Creates the directory if need be and locks it for this process (released when it ends, however it
        ends); refuses a directory another run holds."""
        path = os.path.join(self.path, ".lock")
        try:
            os.makedirs(self.path, exist_ok=True)
            check_regular_file(path)
            lock = open(path, "a+")
        except OSError as e:
            raise GPT2Error(f"{path}: cannot create: {e.strerror or e}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise GPT2Error(f"{self.path}: another run (process {lock.read().strip() or '?'}) is writing into it; "
                            "wait for it to end, or give another -o") from None
        try:
            lock.truncate(0)
            lock.write(f"{os.getpid()}\n")  # for the message above
            lock.flush()
        except OSError as e:
            raise GPT2Error(f"{path}: cannot write: {e.strerror}") from None
        return lock

    def remove_leftovers(self):
        """Removes the temporary files of writes that a kill interrupted (their process is gone)."""
        for name in os.listdir(self.path):
            if is_temporary_name(name) and not process_exists(int(name.rpartition(".tmp")[2])):
                os.remove(os.path.join(self.path, name))

    # Checkpoints

    def checkpoint_files(self, step, rank=0):
        """model_%08d.bin, the training state of process `rank`, state_%08d_%05d.bin (llm.c's names), and
        DONE_%08d."""
        return [os.path.join(self.path, name) for name in (f"model_{step:08d}.bin", f"state_{step:08d}_{rank:05d}.bin",
                                                           f"DONE_{step:08d}")]

    def state_file(self, step, rank):
        """The training state to resume from; runs of one process used to write state_%08d.bin, which still
        loads."""
        path = self.checkpoint_files(step, rank)[1]
        older = os.path.join(self.path, f"state_{step:08d}.bin")
        return older if rank == 0 and not os.path.exists(path) and os.path.exists(older) else path

    def checkpoint_steps(self):
        """The checkpoint files by step, complete or not: {step: [names]}, the DONE_ file first if any."""
        steps = {}
        for entry in os.scandir(self.path):
            match = CHECKPOINT_FILE.fullmatch(entry.name)
            if match and entry.is_file():
                names = steps.setdefault(int(match[1] or match[2] or match[4]), [])
                names.insert(0 if match[4] else len(names), entry.name)
        return steps

    def complete_checkpoints(self):
        return sorted(step for step, names in self.checkpoint_steps().items() if names[0].startswith("DONE_"))

    def latest_checkpoint(self):
        complete = self.complete_checkpoints()
        return complete[-1] if complete else None

    def prune(self, keep):
        """Keeps the newest `keep` complete checkpoints (0: all) and deletes every older checkpoint file, complete
        or not: what the run retires as it goes, and what a run killed before it could retire them left."""
        complete = self.complete_checkpoints()
        if not keep or len(complete) <= keep:
            return
        for step, names in self.checkpoint_steps().items():
            if step < complete[-keep]:
                for name in names:  # DONE_ first: never a DONE_ without its files
                    os.remove(os.path.join(self.path, name))

    def write_state(self, step, optimizer, loader, sample_rng, args):
        """This process's training state of checkpoint `step`; on rank 0, main.log reaches the disk first (the
        log up to this checkpoint)."""
        if self.processes.rank == 0:
            with open(self.log_path, "ab") as log:
                os.fsync(log.fileno())
        write_state_file(self.checkpoint_files(step, self.processes.rank)[1], step, optimizer, loader, sample_rng,
                         args, self.processes)

    def complete(self, step, keep):
        """Marks checkpoint `step` complete, once every process's files of it are on the disk, and prunes."""
        processes = self.processes
        with processes.together():
            if processes.rank == 0:
                write_atomically(self.checkpoint_files(step)[2], [])
                self.prune(keep)
        model_path, state_path, _ = self.checkpoint_files(step, processes.rank)
        print(f"wrote checkpoint {model_path}, {state_path}" + (f" and the training states of the other "
                                                                 f"{processes.count - 1} process(es)"
                                                                 if processes.count > 1 else ""))

    # Resuming

    def check_model(self, config, wanted, source):
        """Refuses to resume with another model shape than -e names."""
        model_path = self.checkpoint_files(self.resume_step)[0]
        if vars(wanted) != vars(config):
            differences = [f"{key} {value} there, {vars(wanted)[key]} from -e {source}"
                           for key, value in vars(config).items() if vars(wanted)[key] != value]
            raise GPT2Error(f"{model_path}: cannot resume with another model: " + "; ".join(differences))

    def resume(self, optimizer, loader, sample_rng, args):
        """Continues from the complete checkpoint of resume_step (its model is already loaded): AdamW's moments,
        the data loader and the sampling RNG from this process's training state; main.log trimmed to the step."""
        processes, step = self.processes, self.resume_step
        with processes.together():
            if step > args.max_steps:
                raise GPT2Error(f"{self.path}: its newest checkpoint is of step {step}, after -x {args.max_steps}")
            read_state_file(self.state_file(step, processes.rank), step, optimizer, loader, sample_rng, args,
                            processes)
            if processes.rank == 0:
                self.trim_log(step)
                self.prune(args.checkpoints_keep)
        if step < args.max_steps:
            print(f"resumed from the checkpoint of step {step} in {self.path}")
        elif extends_run(args):
            print(f"{self.path}: the run is finished at step {step} (-x {args.max_steps}); to train it further, "
                  "give -y 1 a larger -x")
        else:
            print(f"{self.path}: the run is finished at step {step} (-x {args.max_steps}); its {args.schedule} "
                  "schedule decays over -x steps, so it cannot go further (-k constant or -q 1.0 runs can)")

    # main.log

    def start_log(self):
        """A fresh run starts a fresh, empty log."""
        if self.path and self.processes.rank == 0:
            write_atomically(self.log_path, [])

    def log(self, line):
        """llm.c's main.log: `s:STEP trl:LOSS lr:LR norm:NORM` for training, `s:STEP tel:LOSS` for validation,
        `s:STEP eval:ACCURACY` for evaluation; written by rank 0."""
        if self.path and self.processes.rank == 0:
            try:
                with open(self.log_path, "a") as f:
                    f.write(line)
            except OSError as e:
                raise GPT2Error(f"{self.log_path}: cannot write: {e.strerror}") from None

    def trim_log(self, step):
        """On resume, drops what the stopped run logged after its checkpoint of `step`, which is logged again. The
        log is rewritten as every file is, through a temporary file: a kill in the middle leaves the old one
        whole."""
        if not os.path.exists(self.log_path):
            return
        with open(self.log_path, "rb") as f:
            lines = f.read().splitlines(keepends=True)

        def logged_before(line):  # the validation and evaluation of `step` itself came before its checkpoint
            match = re.match(rb"s:([0-9]+) ", line)
            return match and (int(match[1]) < step or (int(match[1]) == step and (b" tel:" in line or
                                                                                  b" eval:" in line)))

        write_atomically(self.log_path, [np.frombuffer(b"".join(filter(logged_before, lines)), dtype=np.uint8)])
