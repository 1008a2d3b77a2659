"""
llm.c's training state file (magic 20240527), which a checkpoint holds beside the model file, one per process.

It keeps what a model file does not and a resume needs: the step, AdamW's m and v (this process's slice with
ZeRO-1), where the data loader is in its shards and its shuffle state, and the sampling RNG. What shapes a run's
trajectory is kept too, in header slots llm.c leaves unused, so that resuming with other settings is refused; every
field is checked before a resume uses it.
"""

import os
import zlib

import numpy as np

from llmc.cli import SCHEDULES
from llmc.files import HEADER_BYTES, STATE_MAGIC, GPT2Error, new_header, read_header, write_atomically
from llmc.rand import mersenne_twister_state, mersenne_twister_words


# What shapes a run's trajectory, kept in header slots llm.c leaves unused, so that resuming with other settings
# is refused: (slot, flag, argument, type); floats are kept as their float32 bits, the schedule as its index. Slot
# 56 holds a fingerprint of the training shards (their names and sizes), so that -i must match them too.
RUN_SETTINGS = [(40, "-b", "batch_size", int), (41, "-t", "seq_len", int), (42, "-d", "total_batch_size", int),
                (43, "-x", "max_steps", int), (44, "-u", "warmup", int), (45, "-k", "schedule", str),
                (46, "-a", "overfit", int), (47, "-z", "zero", int), (50, "-l", "learning_rate", float),
                (51, "-q", "final_frac", float), (52, "-c", "weight_decay", float), (53, "--beta1", "beta1", float),
                (54, "--beta2", "beta2", float), (55, "--grad-clip", "grad_clip", float)]
DATA_SLOT = 56


def encode_setting(value, kind):
    if kind is float:
        return int(np.float32(value).view(np.int32))
    return SCHEDULES.index(value) if kind is str else int(value)


def decode_setting(stored, kind):
    if kind is float:
        return str(np.int32(stored).view(np.float32))  # the shortest decimal of that float32
    if kind is str:
        return SCHEDULES[stored] if 0 <= stored < len(SCHEDULES) else f"schedule #{stored}"
    return int(stored)


def data_fingerprint(loader):
    """A 32-bit number that changes when the shards' names or sizes do (not when they move to another folder)."""
    names = "\n".join(f"{os.path.basename(path)} {os.path.getsize(path)}" for path in loader.files)
    return int(np.uint32(zlib.crc32(names.encode())).view(np.int32))


def extends_run(args):
    """Whether -x may change on resume: where the learning rate does not depend on it (a constant schedule, or no
    decay, -q 1.0), a run can go on for more steps, or end sooner."""
    return args.schedule == "constant" or args.final_frac == 1.0


def write_state_file(path, step, optimizer, loader, sample_rng, args, processes):
    # processes, this one's rank, no master weights (float32 training), the data shuffled or not
    header = new_header(STATE_MAGIC, 1, processes.count, processes.rank, 0, int(loader.shuffle))
    header[10] = step
    wide = header.view("<u8")  # 64-bit fields: wide[k] covers slots 2k and 2k+1
    # [20] and [22] hold llm.c's RNG for stochastic rounding, which float32 training does not use: left 0
    wide[12] = sample_rng.state  # [24], a slot llm.c leaves unused: our sampling RNG
    wide[15], wide[16] = loader.shard_index, loader.sample_index  # [30] shard, [32] next sample in it
    for slot, _, name, kind in RUN_SETTINGS:
        header[slot] = encode_setting(getattr(args, name), kind)
    header[DATA_SLOT] = data_fingerprint(loader)
    chunks = [header, optimizer.m_memory.astype("<f4"), optimizer.v_memory.astype("<f4")]
    if loader.shuffle:
        chunks += [np.array([len(loader.files)], "<u8"), loader.shard_order.astype("<i4"),
                   np.array([loader.shard_num_samples], "<u8"), loader.sample_order.astype("<i4"),
                   mersenne_twister_words(loader.rng)]
    write_atomically(path, chunks)


def check_state_header(path, header, step, loader, args, processes):
    """Refuses a training state that is not of this checkpoint, of this many processes, or of these settings."""
    if header[10] != step:
        raise GPT2Error(f"{path}: holds the state of step {header[10]}, not of step {step} as its name says")
    if header[4]:
        raise GPT2Error(f"{path}: written with master weights (llm.c's mixed precision); this run trains in float32")
    if tuple(header[2:4]) != (processes.count, processes.rank):
        raise GPT2Error(f"{path}: written by process {header[3]} of {header[2]}, but this is process "
                        f"{processes.rank} of {processes.count}: resume with as many processes as the run had "
                        f"(mpirun -np {header[2]})")
    if header[5] not in (0, 1):
        raise GPT2Error(f"{path}: data shuffling flag {header[5]} is neither 0 nor 1")
    if not any(header[slot] for slot, *_ in RUN_SETTINGS):  # llm.c writes none of them
        print(f"{path}: no run settings in it (written by llm.c?), so they cannot be compared with this run's")
        return
    differences = []
    for slot, flag, name, kind in RUN_SETTINGS:
        stored = encode_setting(getattr(args, name), kind)
        if header[slot] == stored:
            continue
        there, now = decode_setting(header[slot], kind), decode_setting(stored, kind)
        if flag == "-x" and extends_run(args):
            print(f"-x {there} there, {now} now: the learning rate does not depend on -x, so the run goes on to "
                  f"step {now}")
        elif flag == "-x":
            differences.append(f"-x {there} there, {now} now (the {args.schedule} schedule decays over the -x steps; "
                               "only a run whose learning rate does not depend on -x, with -k constant or -q 1.0, "
                               "can be extended)")
        else:
            differences.append(f"{flag} {there} there, {now} now")
    if header[5] != int(loader.shuffle):
        on_off = ("off", "on")
        differences.append(f"data shuffling {on_off[header[5]]} there, {on_off[int(loader.shuffle)]} now")
    if header[DATA_SLOT] != data_fingerprint(loader):
        differences.append("other training shards (-i) than the run had: their names or sizes differ")
    if differences:
        raise GPT2Error(f"{path}: cannot resume with other settings: " + "; ".join(differences))


def read_state_file(path, step, optimizer, loader, sample_rng, args, processes):
    """Restores AdamW's moments, the data loader and the sampling RNG from the state of checkpoint `step`, every
    field checked before it is used."""
    header = read_header(path, STATE_MAGIC, (1,))
    check_state_header(path, header, step, loader, args, processes)
    data, offset = np.memmap(path, dtype=np.uint8, mode="r"), HEADER_BYTES

    def take(count, dtype):  # the next `count` values of the body
        nonlocal offset
        size = count * np.dtype(dtype).itemsize
        if offset + size > data.size:
            raise GPT2Error(f"{path}: truncated: {data.size} bytes, and more were expected")
        offset += size
        return data[offset - size:offset].view(dtype)

    optimizer.m_memory[:] = take(optimizer.m_memory.size, "<f4")
    optimizer.v_memory[:] = take(optimizer.v_memory.size, "<f4")
    if not (np.isfinite(optimizer.m_memory).all() and np.isfinite(optimizer.v_memory).all()
            and (optimizer.v_memory >= 0).all()):
        raise GPT2Error(f"{path}: AdamW's moments are not finite, or a second moment is negative")
    wide = header.view("<u8")
    shard_index, sample_index = int(wide[15]), int(wide[16])
    if shard_index >= len(loader.files):
        raise GPT2Error(f"{path}: at shard {shard_index}, but -i matches {len(loader.files)} shard(s)")
    if wide[12] == 0:
        raise GPT2Error(f"{path}: the sampling RNG's state is 0, which xorshift never leaves")
    if loader.shuffle:
        num_shards = int(take(1, "<u8")[0])
        if num_shards != len(loader.files):
            raise GPT2Error(f"{path}: written for {num_shards} shards, but -i matches {len(loader.files)}")
        shard_order = take(num_shards, "<i4").astype(np.int64)
        num_samples = int(take(1, "<u8")[0])
        sample_order = take(num_samples, "<i4").astype(np.int64)
        for name, order in (("shard", shard_order), ("batch", sample_order)):
            if not np.array_equal(np.sort(order), np.arange(order.size)):
                raise GPT2Error(f"{path}: the saved {name} order is not a permutation")
        rng_words = take(630, "<u4")
        if not 1 <= rng_words[2] <= 625:
            raise GPT2Error(f"{path}: the data order's RNG has {rng_words[2]} draws left, not 1 to 625")
        loader.resume(shard_index, sample_index, shard_order, sample_order, mersenne_twister_state(rng_words))
        if loader.shard_num_samples != num_samples:
            raise GPT2Error(f"{path}: written for a shard of {num_samples} batches, but it now has "
                            f"{loader.shard_num_samples}")
    else:
        loader.resume(shard_index, sample_index)
    if sample_index > loader.shard_num_samples:
        raise GPT2Error(f"{path}: at batch {sample_index} of shard {shard_index}, which has "
                        f"{loader.shard_num_samples}")
    if offset != data.size:
        raise GPT2Error(f"{path}: too long: {data.size} bytes, expected {offset}")
    sample_rng.state = int(wide[12])
