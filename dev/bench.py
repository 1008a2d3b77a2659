"""
Benchmark train_gpt2.py's training step, alone or against the PyTorch reference model of dev/make_reference.py.

A step is what the trainer's loop runs, train_gpt2.train_step: zero_grad, forward, backward, the gradient norm
(which the trainer prints and clips by; llm.c's train_gpt2.cu computes it too) and an AdamW update (lr 1e-4, betas
0.9/0.999, eps 1e-8, no weight decay), on one fixed random batch (seeded), after untimed warm-up steps; PyTorch's
step does the same work (its norm by clip_grad_norm_ with no limit). For each trainer: the median and range of
ms/step; tokens/s; GFLOP/s by llm.c's formula (6*N + 6*L*C*T) * B*T, N counting the padded vocabulary (192.1 GFLOP
for d12, B=4, T=64); that as a fraction of numpy's sgemm GFLOP/s, measured between the timed steps (so that both
see the machine's load alike) on the forward pass's matmul shapes, FLOP-weighted; the peak RSS; and the time from spawning the trainer's process to its first finished
step (interpreter, imports, model build, numba cache load or compile).

Each trainer runs in a worker process of its own (this module, --worker), so RSS and start-up are its own; the
driver asks for one step at a time over stdin and reads one JSON line back. With --vs torch the timed steps
alternate between the two workers, so that the drift of a shared machine hits both alike. The torch worker
imports torch first and never train_gpt2 (which sets OpenMP's wait policy at import); ours the other way round.

The README's tables:
    python -m dev.bench --vs torch      # d12, B=4, T=64: ours and PyTorch, speed-up and RSS ratio
    python -m dev.bench --sweep         # ms/step, per-token cost and RSS over T (64..1024) and depth (d6..d24)
    python -m dev.bench --profile       # each kernel's share of our step
    python -m dev.bench --vs-tree DIR   # ours against another checkout (e.g. git worktree add DIR HEAD~1)
    python -m dev.bench --processes     # 1 process x 2 threads, 1 x 1, and 2 processes x 1 thread under mpirun
    python -m dev.bench --attention -t 1024 --vs torch   # attention alone: ours, PyTorch's fused and its eager

--generate times text generation at batch 1, greedy, after a prompt of random tokens (16, then 128 new tokens by
default): train_gpt2.generate with its KV cache; the full recomputation that the trainer's samples used before it
(every position runs again for each new token); and with --vs transformers, transformers' generate with its KV
cache, on the same weights (exported by dev/hf_gpt2.py into a temporary folder). The runs alternate, each after a
second of idle cores (torch's threads spin on after their work, and took the cores of a run that followed). For
each: the time to the first new token, the median ms/token after it, tokens/s, peak RSS (which counts the pages of
the weights' file mapped while loading) and the sizes of our buffers. It also measures the machine's read
bandwidth (a parallel sum over 1 GiB, with the same threads, before the runs and after, the higher counting) and
from it the bound on tokens/s that reading every weight once per token sets (float32 weights: bytes read per token
= 4 x the parameters a step multiplies).
    python -m dev.bench --generate --vs transformers

--processes runs train_gpt2's training step with the same total batch (B rows in all) three ways, each launched on
its own: one process with all the threads, one process with one thread, and mpirun -np 2 with B/2 rows and one
thread each (also with -z 1, ZeRO-1); it prints tokens/s, the time of the all-reduce (or reduce-scatter and
all-gather) per step, and each process's peak RSS. Needs mpi4py and Open MPI (pip install ".[mpi]").
"""

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from types import SimpleNamespace

if __name__ == "__main__" and not __package__:  # run as a file, where `import dev` cannot work
    sys.exit("error: run it from the repository's root, as a module: python -m dev.bench")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR, BETA1, BETA2, EPS, WEIGHT_DECAY = 1e-4, 0.9, 0.999, 1e-8, 0.0
THREAD_VARS = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
ALL_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class BenchError(Exception):
    """An expected failure (a worker's bad input, a worker that died): printed as one line."""


def random_batch(np, seed, V, B, T, dtype):
    tokens = np.random.default_rng(seed).integers(0, V, size=(B, T + 1))
    return np.ascontiguousarray(tokens[:, :T], dtype), np.ascontiguousarray(tokens[:, 1:], dtype)


# ----------------------------------------------------------------------------------------------------------------
# Workers: build one trainer, run the warm-up, then answer "step" and "finish" requests with one JSON line each

def install_profiler(tg, model):
    """Replaces train_gpt2's kernels, module globals that the model looks up at each call, by timed wrappers:
    every numba dispatcher, and every Python function calling one or np.matmul (matmul_forward, gradient_norm...).
    A dispatcher called from inside another compiled kernel is left alone: its time is its caller's. Times are
    also kept exclusive of the timed calls inside (matmul_forward's own time is then BLAS's, not bias_forward's)."""
    import inspect
    from numba.core.dispatcher import Dispatcher
    kernels = {n: f for n, f in vars(tg).items() if isinstance(f, Dispatcher)}
    inner = {n for f in kernels.values() for n in f.py_func.__code__.co_names if n in kernels}
    python = {n: f for n, f in vars(tg).items() if inspect.isfunction(f) and f.__module__ == tg.__name__
              and set(f.__code__.co_names) & (set(kernels) | {"matmul"})}
    stats, callees = {}, [0.0]  # name -> [calls, inclusive s, exclusive s]; callees: a stack of timed-callee time

    def wrap(name, fn):
        record = stats.setdefault(name, [0, 0.0, 0.0])

        def timed(*args, **kwargs):
            callees.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                took = time.perf_counter() - start
                inside = callees.pop()
                callees[-1] += took
                record[0], record[1], record[2] = record[0] + 1, record[1] + took, record[2] + took - inside
        return timed

    for name, fn in {**kernels, **python}.items():
        if name not in inner:
            setattr(tg, name, wrap(name, fn))
    model.zero_grad = wrap("zero_grad", model.zero_grad)  # a method, grads.fill(0)
    return stats


def numba_info():
    import numba
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "?"
    return dict(threading=f"numba {layer}", threads=numba.get_num_threads())


def torch_info(torch):
    build = torch.__config__.show().replace(",", " ").split()
    blas = [w.split("=")[1] for w in build if w.startswith("BLAS_INFO=")]
    aten = [line.split(":")[1].strip() for line in torch.__config__.parallel_info().splitlines()
            if line.startswith("ATen parallel backend")]
    return dict(threads=torch.get_num_threads(),
                threading=f"torch {torch.__version__}, {(aten or ['?'])[0]}, BLAS {(blas or ['?'])[0]}")


def ours_worker(args):
    import train_gpt2 as tg  # first: it sets the OpenMP and OpenBLAS thread policy before numpy loads
    import numba
    import numpy as np
    import llmc.rand
    kernels = [f for module in (tg, llmc.rand) for f in vars(module).values()  # the modules with kernels
               if isinstance(f, numba.core.dispatcher.Dispatcher)]
    try:
        model = tg.load_gpt2(args.model)
        model.allocate(args.batch_size, args.seq_len, training=True)
    except tg.GPT2Error as e:
        raise BenchError(str(e)) from None
    x, y = random_batch(np, args.seed, model.config.vocab_size, args.batch_size, args.seq_len, np.int32)
    profile = install_profiler(tg, model) if args.profile else {}
    optimizer = tg.AdamW(model, BETA1, BETA2, EPS, WEIGHT_DECAY)
    steps_done = 0

    def step():
        nonlocal steps_done
        loss, _ = tg.train_step(model, optimizer, lambda: (x, y), 1, LR, steps_done)
        steps_done += 1
        return dict(loss=loss)

    def info():
        for record in profile.values():  # called after the warm-up: the profile counts the timed steps only
            record[:] = [0, 0.0, 0.0]
        return dict(config=vars(model.config), num_parameters=model.num_parameters, **numba_info(),
                    compiled=sum(sum(f.stats.cache_misses.values()) for f in kernels),
                    cached=sum(sum(f.stats.cache_hits.values()) for f in kernels))
    return step, info, lambda: dict(profile=profile)


def torch_worker(args):
    import torch  # first, and train_gpt2 never: torch's OpenMP threads keep their default wait policy
    import numpy as np
    from dev.make_reference import GPT, GPTConfig, read_checkpoint
    torch.set_num_threads(args.threads)
    config = GPTConfig(**json.loads(args.config))
    model = GPT(config)  # V unpadded, as llm.c's train_gpt2.py
    if args.model.endswith(".bin"):
        try:
            model.load_llmc(read_checkpoint(args.model)[1])
        except SystemExit as e:  # make_reference's way of saying a checkpoint is bad
            raise BenchError(str(e)) from None
    else:
        model.init_gpt2(42)  # the same draws as llm.c's init, and so as ours
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(BETA1, BETA2), eps=EPS,
                                  weight_decay=WEIGHT_DECAY)
    x, y = map(torch.from_numpy, random_batch(np, args.seed, config.vocab_size, args.batch_size, args.seq_len,
                                              np.int64))

    def step():
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))  # the norm only, as ours computes
        optimizer.step()
        return dict(loss=loss.item())

    return step, lambda: dict(torch=torch.__version__, **torch_info(torch)), dict


# Generation workers: a "step" generates args.gen_tokens tokens greedily after a prompt of random tokens, and
# reports the time to the first new token and the time of each token after it

def prompt_tokens(args, V):
    import numpy as np
    return np.random.default_rng(args.seed).integers(0, V, args.prompt_tokens).tolist()


def generation_timings(started, tokens):
    """Runs a generator of tokens, noting when each came: (the tokens, s to the first, [s of each one after])."""
    stamps, generated = [], []
    for token in tokens:
        stamps.append(time.perf_counter())
        generated.append(int(token))
    return dict(tokens=generated, first_s=stamps[0] - started, token_s=[b - a for a, b in zip(stamps, stamps[1:])])


def generate_worker(args):
    """Ours: train_gpt2.generate, the prompt at once and then one position at a time from the KV cache; or with
    --worker recompute, every position again for each new token (train_gpt2's samples before the KV cache)."""
    import train_gpt2 as tg  # first: it sets the OpenMP and OpenBLAS thread policy before numpy loads
    import numpy as np
    try:
        model = tg.load_gpt2(args.model)
    except tg.GPT2Error as e:
        raise BenchError(str(e)) from None
    prompt, N, V = prompt_tokens(args, model.config.vocab_size), args.gen_tokens, model.config.vocab_size
    context = len(prompt) + N - 1
    if args.worker == "generate":
        model.allocate(1, len(prompt), context=context)
    else:
        model.allocate(1, context)

    def recompute():
        tokens = list(prompt)
        for _ in range(N):
            model.forward(np.array([tokens], dtype=np.int32))
            logits = model.activations(1, len(tokens)).logits[0, -1]
            tokens.append(int(tg.sample_token(logits, V, np.float32(0.5), 0.0, 0, 1.0)))
            yield tokens[-1]

    def step():
        started = time.perf_counter()
        if args.worker == "generate":
            return generation_timings(started, tg.generate(model, prompt, N, tg.XorShift(), temperature=0.0))
        return generation_timings(started, recompute())

    def info():
        buffers = dict(parameters=model.params_memory.nbytes, activations=model.acts_memory.nbytes,
                       kv_cache=model.kv_cache.nbytes)
        return dict(config=vars(model.config), num_parameters=model.num_parameters, buffers=buffers, **numba_info())
    return step, info, dict


def transformers_worker(args):
    """transformers' GPT2LMHeadModel.generate, greedy, with its KV cache, on the weights in the folder -e."""
    import torch  # first, and train_gpt2 never, as in torch_worker
    import transformers
    torch.set_num_threads(args.threads)
    try:
        model = transformers.GPT2LMHeadModel.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    except OSError as e:
        raise BenchError(str(e)) from None
    prompt = torch.tensor([prompt_tokens(args, model.config.vocab_size)])

    class Stamps(transformers.generation.streamers.BaseStreamer):
        """generate() hands the streamer the prompt, then each new token as it comes."""
        def __init__(self):
            self.stamps, self.tokens = [], []

        def put(self, value):
            self.stamps.append(time.perf_counter())
            self.tokens.append(value.reshape(-1).tolist())

        def end(self):
            pass

    def step():
        stamps = Stamps()
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.gen_tokens,
                           min_new_tokens=args.gen_tokens, do_sample=False, use_cache=True, streamer=stamps,
                           pad_token_id=model.config.eos_token_id)
        new = stamps.stamps[1:]  # the first put() is the prompt
        return dict(tokens=[t for tokens in stamps.tokens[1:] for t in tokens], first_s=new[0] - started,
                    token_s=[b - a for a, b in zip(new, new[1:])])

    def info():
        return dict(torch=torch.__version__, transformers=transformers.__version__, threads=torch.get_num_threads(),
                    threading=f"torch {torch.__version__}, transformers {transformers.__version__}")
    return step, info, dict


def attention_worker(args):
    """Ours: one step is train_gpt2's attention_forward over the L layers' buffers, then attention_backward over
    them in reverse, as the training step calls them, on random queries, keys and values."""
    import train_gpt2 as tg  # first: it sets the OpenMP and OpenBLAS thread policy before numpy loads
    import numpy as np
    try:
        config = tg.gpt2_config(args.model)
    except tg.GPT2Error as e:
        raise BenchError(str(e)) from None
    L, NH, B, T = config.num_layers, config.num_heads, args.batch_size, args.seq_len
    shapes = {name: shape for name, shape in tg.activation_shapes(config, B, T, training=True).items()
              if name.startswith(("qkv", "atty", "att_", "datt", "dqkv"))}
    a = tg.point_tensors(tg.zeros(sum(math.prod(shape) for shape in shapes.values()), np.float32), shapes)
    a.qkv[:] = np.random.default_rng(args.seed).standard_normal(a.qkv.shape, np.float32)
    a.datty[:] = np.random.default_rng(args.seed + 1).standard_normal(a.datty.shape, np.float32)

    def step():
        start = time.perf_counter()
        for l in range(L):
            tg.attention_forward(a.atty[l], a.att_lse[l], a.qkv[l], NH, a.att_scores, a.att_max, a.att_sum,
                                 a.att_partial)
        middle = time.perf_counter()
        for l in reversed(range(L)):
            tg.attention_backward(a.dqkv, a.datty, a.qkv[l], a.atty[l], a.att_lse[l], NH, a.att_scores,
                                  a.datt_scores, a.att_rowdot, a.att_partial)
        return dict(forward=middle - start, backward=time.perf_counter() - middle)
    return step, lambda: dict(config=vars(config), name="ours (train_gpt2)", **numba_info()), dict


def torch_attention_worker(args):
    """PyTorch's causal attention over L layers, forward then backward, on random queries, keys and values (one
    leaf tensor of each per layer): its fused kernel, scaled_dot_product_attention (a flash attention on the CPU),
    or with --worker eager the plain one of dev/make_reference.py (q @ k.T, mask, softmax, @ v), which keeps the
    weights."""
    import torch
    config = json.loads(args.config)
    torch.set_num_threads(args.threads)
    L, NH, B, T, C = config["num_layers"], config["num_heads"], args.batch_size, args.seq_len, config["channels"]
    generator = torch.Generator().manual_seed(args.seed)
    q, k, v, dout = ([torch.randn(B, NH, T, C // NH, generator=generator) for _ in range(L)] for _ in range(4))
    for tensor in q + k + v:
        tensor.requires_grad_()
    mask = torch.ones(T, T, dtype=torch.bool).tril()

    def attention(q, k, v):
        if args.worker == "sdpa":
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        weights = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
        return torch.softmax(weights.masked_fill(~mask, float("-inf")), dim=-1) @ v

    def step():
        for tensor in q + k + v:
            tensor.grad = None
        start = time.perf_counter()
        outs = [attention(q[l], k[l], v[l]) for l in range(L)]
        middle = time.perf_counter()
        torch.autograd.backward(outs, dout)
        return dict(forward=middle - start, backward=time.perf_counter() - middle)
    name = "PyTorch scaled_dot_product_attention" if args.worker == "sdpa" else "PyTorch eager (q @ k.T, softmax)"
    return step, lambda: dict(name=f"{name} {torch.__version__}", **torch_info(torch)), dict


WORKERS = {"ours": ours_worker, "torch": torch_worker, "generate": generate_worker, "recompute": generate_worker,
           "transformers": transformers_worker,
           "attention": attention_worker, "sdpa": torch_attention_worker, "eager": torch_attention_worker}


def serve(args):
    channel = os.fdopen(os.dup(1), "w", buffering=1)  # to the driver; whatever else is printed goes to stderr
    os.dup2(2, 1)

    def send(**message):
        channel.write(json.dumps(message) + "\n")

    def timed(step):
        start = time.perf_counter()
        result = step()
        return dict(seconds=time.perf_counter() - start, **result)
    try:
        step, info, finish = WORKERS[args.worker](args)
        send(**timed(step))  # the driver's start-up clock stops here
        for _ in range(args.warmup - 1):
            step()
        send(**info())
        for line in iter(sys.stdin.readline, ""):
            if json.loads(line)["op"] == "finish":
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
                send(peak_rss_mib=rss / 2**20 if sys.platform == "darwin" else rss / 2**10, **finish())
                return 0
            send(**timed(step))
    except BenchError as e:
        send(error=str(e))
    except MemoryError:
        send(error="out of memory")
    except (BrokenPipeError, KeyboardInterrupt):  # the driver is gone
        pass
    return 1


# ----------------------------------------------------------------------------------------------------------------
# Driver

class Worker:
    def __init__(self, kind, args, model, B, T, config=None, root=REPO_ROOT):
        """A worker of `kind` from the repository at `root`: this one, or with --vs-tree another checkout (its own
        dev.bench and train_gpt2, run from its root)."""
        self.kind = kind if root == REPO_ROOT else f"{kind} at {root}"
        self.times, self.losses, self.replies, self.final = [], [], [], None
        model = os.path.abspath(model) if os.path.exists(model) else model
        argv = [sys.executable, "-m", "dev.bench", "--worker", kind, "-e", model, "-b", str(B), "-t", str(T),
                "--threads", str(args.threads), "--seed", str(args.seed), "--warmup", str(args.warmup)]
        argv += (["--profile"] if args.profile and kind == "ours" else []) + (["--config", config] if config else [])
        argv += ["--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens)]
        # root's dev.bench and train_gpt2, whatever the current directory (where -e's path is)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        self.spawned = time.perf_counter()
        # a session of its own: Ctrl-C reaches the driver only, which then kills the workers
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     start_new_session=True, env=env, cwd=None if root == REPO_ROOT else root)

    def start(self):
        """Waits for the first step, which stops the start-up clock, and for the end of the warm-up."""
        self.first = self.recv()
        self.first_loss = self.first.get("loss")
        self.startup = time.perf_counter() - self.spawned
        self.info = self.recv()

    def recv(self):
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"the {self.kind} worker exited with status {self.proc.wait()} (its stderr is above)")
        message = json.loads(line)
        if "error" in message:
            raise BenchError(f"{self.kind}: {message['error']}")
        return message

    def request(self, op):
        try:
            self.proc.stdin.write(json.dumps({"op": op}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # recv() reports the exit
        return self.recv()

    def close(self):
        try:
            self.proc.wait(timeout=10 if self.final else 0)  # a finished worker exits by itself
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure(args, model, B, T, kinds=("ours",), tree=None, between=None):
    """Starts the workers one after the other, so that each starts up alone, then alternates their timed steps.
    With `tree`, another checkout's "ours" worker last; between(config) after each round of steps."""
    workers = []
    try:
        for kind, root in [(kind, REPO_ROOT) for kind in kinds] + ([("ours", tree)] if tree else []):
            config = json.dumps(workers[0].info["config"]) if workers else None
            workers.append(Worker(kind, args, model, B, T, config, root))
            workers[-1].start()
        for _ in range(args.steps):
            for w in workers:  # back to back: a step after the cores idled even briefly can run 1.5x slower
                reply = w.request("step")
                w.times.append(reply["seconds"])
                w.losses.append(reply.get("loss"))
                w.replies.append(reply)
            if between:
                between(workers[0].info["config"])
        for w in workers:
            w.final = w.request("finish")
    finally:
        for w in workers:
            w.close()
    return workers


class Sgemm:
    """numpy's GFLOP/s on the forward pass's products out (N,OC) = inp (N,K) @ weight (OC,K).T, as train_gpt2 calls
    them, timed in rounds: each round times every shape once, over at least 20 ms; the result is per shape the
    median of the rounds, FLOP-weighted by how often a forward pass makes it. Rounds between the trainers' steps
    see the machine as the steps do, so that a change of its load between them cannot make a step look faster than
    the products it is made of."""

    def __init__(self, config, N):
        import numpy as np
        self.np, C, L, Vp = np, config["channels"], config["num_layers"], config["padded_vocab_size"]
        rng = np.random.default_rng(0)
        self.shapes, self.times = [], {}
        for name, OC, K, count in (("qkv", 3 * C, C, L), ("attproj", C, C, L), ("fc", 4 * C, C, L),
                                   ("fcproj", C, 4 * C, L), ("lm_head", Vp, C, 1)):
            inp, weight = rng.standard_normal((N, K), np.float32), rng.standard_normal((OC, K), np.float32)
            out = np.empty((N, OC), np.float32)
            np.matmul(inp, weight.T, out=out)  # untimed: thread start-up, page faults
            start = time.perf_counter()
            np.matmul(inp, weight.T, out=out)
            calls = max(1, int(0.02 / max(time.perf_counter() - start, 1e-7)))
            self.shapes.append((name, inp, weight, out, calls, count, 2 * N * K * OC))
            self.times[name] = []

    def round(self):
        for name, inp, weight, out, calls, _, _ in self.shapes:
            start = time.perf_counter()
            for _ in range(calls):
                self.np.matmul(inp, weight.T, out=out)
            self.times[name].append((time.perf_counter() - start) / calls)

    def result(self):
        """(GFLOP/s, {shape: GFLOP/s})."""
        per_shape, flops, seconds = {}, 0.0, 0.0
        for name, _, _, _, _, count, product_flops in self.shapes:
            median = statistics.median(self.times[name])
            per_shape[name] = product_flops / median / 1e9
            flops, seconds = flops + count * product_flops, seconds + count * median
        return flops / seconds / 1e9, per_shape


def sgemm_gflops(config, N, repeats):
    """Sgemm's result over `repeats` rounds (at least 3), one after the other."""
    meter = Sgemm(config, N)
    for _ in range(max(3, repeats)):
        meter.round()
    return meter.result()


def step_flops(info, B, T):
    """llm.c's FLOPs of a training step, from ours' model (for torch's as well: the same model, Vp or not)."""
    return (6 * info["num_parameters"] + 6 * info["config"]["num_layers"] * info["config"]["channels"] * T) * B * T


def summarize(w, B, T, flops, sgemm):
    median = statistics.median(w.times)
    return SimpleNamespace(ms=median * 1e3, lo=min(w.times) * 1e3, hi=max(w.times) * 1e3, tokens_s=B * T / median,
                           flops=flops, gflops=flops / median / 1e9, sgemm=flops / median / 1e9 / sgemm,
                           rss=w.final["peak_rss_mib"], startup=w.startup)


def cpu_busy(seconds=0.5):
    """The fraction of all the CPUs' time spent busy over `seconds`, from /proc/stat (None elsewhere)."""
    def sample():
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait
    try:
        (total0, idle0), _, (total1, idle1) = sample(), time.sleep(seconds), sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def machine(args, workers):
    lines = [machine_line(args)]
    lines += [f"         {w.kind}: {w.info['threading']}, {w.info['threads']} threads" for w in workers]
    return "\n".join(lines)


def machine_line(args):
    import numpy as np
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{p['internal_api']} {p['version']} {p.get('architecture', '')}".strip()
                         for p in threadpool_info() if p["user_api"] == "blas")
    except ImportError:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{blas['name']} {blas['version']}"
    busy = f", {100 * args.busy:.0f}% busy just before" if args.busy is not None else ""
    return (f"machine: {cpu}, {os.cpu_count()} cores ({ALL_CORES} usable){busy}; python "
            f"{platform.python_version()}, numpy {np.__version__} ({blas}), numba {metadata.version('numba')}")


# ----------------------------------------------------------------------------------------------------------------
# Many processes: each configuration launched on its own (under mpirun for 2 processes); rank 0 reports JSON

def processes_worker(args):
    """Runs warm-up and timed train_step()s on this process's rows; rank 0 prints one JSON line."""
    import train_gpt2 as tg
    import numpy as np
    processes = tg.Processes.start(args.zero)
    model = tg.load_gpt2(args.model)
    B = args.batch_size // processes.count
    model.allocate(B, args.seq_len, training=True)
    optimizer = tg.AdamW(model, BETA1, BETA2, EPS, WEIGHT_DECAY, processes.optimizer_shard(model.num_parameters))
    x, y = random_batch(np, args.seed, model.config.vocab_size, args.batch_size, args.seq_len, np.int32)
    rows = slice(processes.rank * B, (processes.rank + 1) * B)
    communication = []

    def timed(function):  # the time spent in the processes' exchanges
        def wrapper(*a):
            start = time.perf_counter()
            function(*a)
            communication[-1] += time.perf_counter() - start
        return wrapper

    processes.sum_gradients = timed(processes.sum_gradients)
    processes.gather_parameters = timed(processes.gather_parameters)
    times = []
    for step in range(args.warmup + args.steps):
        communication.append(0.0)
        if processes.comm:
            processes.comm.Barrier()
        start = time.perf_counter()
        loss, _ = tg.train_step(model, optimizer, lambda: (x[rows], y[rows]), 1, LR, step, 0.0, processes)
        times.append(time.perf_counter() - start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    rss = processes.comm.allgather(rss) if processes.comm else [rss]
    if processes.rank == 0:
        import numba
        print(json.dumps(dict(times=times[args.warmup:], communication=communication[args.warmup:], loss=loss,
                              rss=rss, threads=numba.get_num_threads(), processes=processes.count)))
    return 0


def processes_run(args):
    mpirun = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if not mpirun or importlib.util.find_spec("mpi4py") is None:
        raise BenchError("--processes needs mpi4py and Open MPI: pip install '.[mpi]'")
    B, T = args.batch_size, args.seq_len
    configs = [("1 process x %d threads" % ALL_CORES, 1, ALL_CORES, 0), ("1 process x 1 thread", 1, 1, 0),
               ("2 processes x 1 thread", 2, 1, 0), ("2 processes x 1 thread, ZeRO-1", 2, 1, 1)]
    print(f"processes: {args.model}, B={B} rows in all, T={T}; {args.warmup} warm-up + {args.steps} timed steps, "
          "each configuration launched on its own\n")
    print("| configuration | ms/step, median (min-max) | tokens/s | vs first | all-reduce ms/step | "
          "peak RSS MiB per process |\n|---|--:|--:|--:|--:|--:|")
    first = None
    for name, count, threads, zero in configs:
        command = [sys.executable, "-m", "dev.bench", "--processes-worker", "-e", args.model, "-b", str(B), "-t",
                   str(T), "--seed", str(args.seed), "--warmup", str(args.warmup), "--steps", str(args.steps),
                   "--zero", str(zero)]
        if count > 1:  # unbound, so that a process's one thread may run on either core, as the others' do
            command = [mpirun, "-np", str(count), "--oversubscribe", "--bind-to", "none"] + command
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])),
                   **{var: str(threads) for var in THREAD_VARS})
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        reports = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if result.returncode or not reports:
            raise BenchError(f"{name}: exit status {result.returncode}: {result.stderr.strip()[-1000:]}")
        report = json.loads(reports[-1])
        median = statistics.median(report["times"])
        tokens_s = B * T / median
        first = first or tokens_s
        exchange = statistics.median(report["communication"]) * 1e3 if count > 1 else 0.0
        print(f"| {name} | {median * 1e3:.1f} ({min(report['times']) * 1e3:.1f}-{max(report['times']) * 1e3:.1f}) | "
              f"{tokens_s:,.0f} | {tokens_s / first:.2f}x | {exchange:.1f} | "
              + " / ".join(f"{r:,.0f}" for r in report["rss"]) + " |", flush=True)
    print("\n" + machine_line(args))


def read_bandwidth():
    """The machine's read bandwidth, bytes/s: the median of 5 parallel sums over 1 GiB of float32, more than any
    cache holds, each thread summing rows of 16 KiB (numba's threads, as many as the workers use)."""
    import numpy as np
    from numba import njit, prange

    @njit(parallel=True, fastmath=True)
    def row_sums(a, out):
        for r in prange(a.shape[0]):
            total = np.float32(0)
            for k in range(a.shape[1]):
                total += a[r, k]
            out[r] = total
    a = np.ones((2**30 // (4 * 4096), 4096), np.float32)
    out = np.empty(a.shape[0], np.float32)
    row_sums(a, out)  # compiles, and faults the pages in
    times = []
    for _ in range(5):
        start = time.perf_counter()
        row_sums(a, out)
        times.append(time.perf_counter() - start)
    return a.nbytes / statistics.median(times)


def ms_per_token(runs):
    """The median time of a new token after the first, over all the runs given."""
    return statistics.median(s for run in runs for s in run["token_s"]) * 1e3


IDLE_BEFORE_RUN = 1.0  # s: torch's OpenMP threads spin on after their work; a run starting then shares the cores


def generate_run(args):
    kinds = ["generate", "recompute"] + (["transformers"] if args.vs == "transformers" else [])
    names = {"generate": "ours, KV cache (train_gpt2.generate)", "recompute": "ours, full recomputation"}
    workers, bandwidths = [], []  # read bandwidth before the runs and after: the higher one bounds
    with tempfile.TemporaryDirectory() as work:
        model = args.model
        if args.vs == "transformers":  # the same weights on both sides: ours read back transformers' folder
            model = os.path.join(work, "hf")
            result = subprocess.run([sys.executable, "-m", "dev.hf_gpt2", "export", args.model, "-o", model],
                                    capture_output=True, text=True, cwd=REPO_ROOT)
            if result.returncode:
                raise BenchError(f"exporting {args.model}: {result.stderr.strip()}")
        try:
            for kind in kinds:
                workers.append(Worker(kind, args, model, 1, args.prompt_tokens))
                workers[-1].start()
            bandwidths.append(read_bandwidth())  # here, not before the workers start: they would inherit its RSS
            for _ in range(args.steps):
                for w in workers:
                    time.sleep(IDLE_BEFORE_RUN)
                    w.times.append(w.request("step"))
            for w in workers:
                w.final = w.request("finish")
        finally:
            for w in workers:
                w.close()
    ours = workers[0].info
    c, N = ours["config"], args.gen_tokens
    weight_bytes = 4 * (ours["num_parameters"] - (c["max_seq_len"] - 1) * c["channels"])  # wpe: one row per token
    bandwidths.append(read_bandwidth())
    bandwidth = max(bandwidths)
    bound = bandwidth / weight_bytes
    print(machine(args, workers))
    print(f"model:   {args.model}: L={c['num_layers']} C={c['channels']} NH={c['num_heads']} V={c['vocab_size']} "
          f"Vp={c['padded_vocab_size']}, {ours['num_parameters']:,} parameters; batch 1, greedy, prompt "
          f"{args.prompt_tokens} random tokens (seed {args.seed}), {N} new tokens")
    print(f"runs:    {args.warmup} warm-up + {args.steps} timed per generator, alternating\n")
    print("| generator | to the 1st token ms | ms/token after it, median (runs' min-max) | tokens/s | "
          "vs transformers | peak RSS MiB |\n|---|--:|--:|--:|--:|--:|")
    rates = {w.kind: 1e3 / ms_per_token(w.times) for w in workers}
    for w in workers:
        per_run = [ms_per_token([run]) for run in w.times]
        first = statistics.median(run["first_s"] for run in w.times) * 1e3
        name = names.get(w.kind) or f"transformers {w.info['transformers']} generate, KV cache"
        versus = f"{rates[w.kind] / rates['transformers']:.2f}x" if "transformers" in rates else ""
        print(f"| {name} | {first:.0f} | {1e3 / rates[w.kind]:.1f} ({min(per_run):.1f}-{max(per_run):.1f}) | "
              f"{rates[w.kind]:.1f} | {versus} | {w.final['peak_rss_mib']:,.0f} |")
    print(f"\nbandwidth: {bandwidth / 1e9:.1f} GB/s read (the higher of {bandwidths[0] / 1e9:.1f} before the runs "
          f"and {bandwidths[1] / 1e9:.1f} after; {args.threads} threads, 1 GiB); the weights are "
          f"{weight_bytes / 1e6:.0f} MB of float32 read once per token: at most {bound:.1f} tokens/s; ours with the "
          f"KV cache reach {100 * rates['generate'] / bound:.0f}% of that")
    for w in workers[:2]:
        print(f"{w.kind}'s buffers: " + ", ".join(f"{name.replace('_', ' ')} {size / 2**20:.1f} MiB"
                                               for name, size in w.info["buffers"].items())
              + " (no gradients, no optimizer state)")
    tokens = [w.times[-1]["tokens"] for w in workers]
    agree = [next((i for i, (a, b) in enumerate(zip(tokens[0], t)) if a != b), N) for t in tokens[1:]]
    print("greedy tokens: the KV cache's and " + "; ".join(
        f"{w.kind}'s agree on the first {n} of {N}" for w, n in zip(workers[1:], agree))
          + " (a random model's top logits are close: float32 rounding may swap two)")


def main_run(args):
    B, T = args.batch_size, args.seq_len
    meter = None  # numpy's sgemm, timed between the rounds of steps

    def sgemm_round(config):
        nonlocal meter
        meter = meter or Sgemm(config, B * T)
        meter.round()

    workers = measure(args, args.model, B, T, ("ours", "torch") if args.vs == "torch" else ("ours",), args.vs_tree,
                      sgemm_round)
    ours = workers[0].info
    sgemm, per_shape = meter.result()
    rows = [summarize(w, B, T, step_flops(ours, B, T), sgemm) for w in workers]
    all_workers, c = workers, ours["config"]
    print(machine(args, workers))
    print(f"model:   {args.model}: L={c['num_layers']} C={c['channels']} NH={c['num_heads']} V={c['vocab_size']} "
          f"Vp={c['padded_vocab_size']}, {ours['num_parameters']:,} parameters; B={B} T={T}, "
          f"{rows[0].flops / 1e9:.4g} GFLOP/step by llm.c's (6N + 6LCT)*B*T")
    print(f"steps:   {args.warmup} warm-up + {args.steps} timed" + (", alternating" if len(workers) > 1 else "")
          + f", batch seed {args.seed}; numba kernels {ours['cached']} loaded from cache, {ours['compiled']} compiled")
    print(f"sgemm:   numpy {sgemm:.1f} GFLOP/s on the forward matmuls of {B * T} rows, timed between the steps ("
          + ", ".join(f"{k} {v:.0f}" for k, v in per_shape.items()) + ")\n")
    print("| trainer | ms/step, median (min-max) | tokens/s | GFLOP/s | % of sgemm | peak RSS MiB | "
          "start to 1st step s |\n|---|--:|--:|--:|--:|--:|--:|")
    names = [f"PyTorch {w.info['torch']}" if w.kind == "torch" else w.kind.replace("ours", "ours (numba)", 1)
             for w in workers]
    for name, r in zip(names, rows):
        print(f"| {name} | {r.ms:.1f} ({r.lo:.1f}-{r.hi:.1f}) | {r.tokens_s:,.0f} | {r.gflops:.1f} | "
              f"{100 * r.sgemm:.0f}% | {r.rss:,.0f} | {r.startup:.1f} |")
    if args.vs_tree:
        print(f"\nthis checkout against {args.vs_tree} (its ms / ours ms): {rows[-1].ms / rows[0].ms:.3f}x; peak RSS "
              f"(ours / its) {rows[0].rss / rows[-1].rss:.3f}x")
        rows, workers = rows[:-1], workers[:-1]
    if len(rows) > 1:
        print(f"\nspeed-up (torch ms / ours ms) {rows[1].ms / rows[0].ms:.2f}x; peak RSS (ours / torch) "
              f"{rows[0].rss / rows[1].rss:.2f}x; of sgemm: ours {100 * rows[0].sgemm:.0f}%, torch "
              f"{100 * rows[1].sgemm:.0f}%")
    print("\nloss, first step -> last: " + "; ".join(f"{w.kind} {w.first_loss:.4f} -> {w.losses[-1]:.4f}"
                                                      for w in all_workers))
    if args.profile:
        print_profile(workers[0])


def print_profile(w):
    steps, step = len(w.times), statistics.fmean(w.times) * 1e3
    stats = sorted(w.final["profile"].items(), key=lambda kv: -kv[1][2])
    print(f"\nprofile of ours: {step:.1f} ms/step (mean over {steps} timed steps, timers on); self = exclusive time"
          "\n| kernel | calls/step | self ms/step | % of step | incl. ms/step |\n|---|--:|--:|--:|--:|")
    for name, (calls, inclusive, exclusive) in stats:
        if calls:
            ms = exclusive / steps * 1e3
            print(f"| {name} | {calls / steps:g} | {ms:.2f} | {100 * ms / step:.1f}% | {inclusive / steps * 1e3:.2f} |")
    other = step - sum(s[2] for _, s in stats) / steps * 1e3
    print(f"| other (Python, views, loss mean) | | {other:.2f} | {100 * other / step:.1f}% | |")


def attention_run(args):
    B, T = args.batch_size, args.seq_len
    kinds = ("attention", "sdpa", "eager") if args.vs == "torch" else ("attention",)
    workers = measure(args, args.model, B, T, kinds)
    c = workers[0].info["config"]
    print(machine(args, workers))
    print(f"model:   {args.model}: L={c['num_layers']} C={c['channels']} NH={c['num_heads']}; B={B} T={T}; "
          f"a step: every layer's attention forward, then every layer's backward")
    print(f"steps:   {args.warmup} warm-up + {args.steps} timed" + (", alternating" if len(workers) > 1 else "")
          + "\n\n| attention | forward ms | backward ms | forward + backward ms, median (min-max) | vs ours | "
          "peak RSS MiB |\n|---|--:|--:|--:|--:|--:|")
    ours = statistics.median(workers[0].times)
    for w in workers:
        forward, backward = (statistics.median(r[part] for r in w.replies) * 1e3 for part in ("forward", "backward"))
        total = statistics.median(w.times)
        print(f"| {w.info['name']} | {forward:.1f} | {backward:.1f} | {total * 1e3:.1f} ({min(w.times) * 1e3:.1f}-"
              f"{max(w.times) * 1e3:.1f}) | {total / ours:.2f}x | {w.final['peak_rss_mib']:,.0f} |")


def sweep(args):
    B, T = args.batch_size, args.seq_len
    parts = [(f"over T at {args.model}, B={B}", [(args.model, B, t) for t in args.sweep_t]),
             (f"over depth at B={B}, T={T}", [(d, B, T) for d in args.sweep_depths])]
    print(f"sweep: {args.warmup} warm-up + {args.steps} timed steps per config, each in a fresh worker")
    done = {}
    for title, configs in parts:
        print(f"\n({title})\n\n| model | params M | B | T | B*T | ms/step | us/token | per token vs first | tokens/s | "
              "GFLOP/s | % of sgemm | peak RSS MiB | start s |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        first = None
        for model, b, t in configs:
            if (model, b, t) not in done:
                w = measure(args, model, b, t)[0]
                sgemm = sgemm_gflops(w.info["config"], b * t, args.sgemm_repeats)[0]
                done[model, b, t] = w, summarize(w, b, t, step_flops(w.info, b, t), sgemm)
            w, r = done[model, b, t]
            per_token = r.ms * 1e3 / (b * t)
            first = first or per_token
            print(f"| {model} | {w.info['num_parameters'] / 1e6:.1f} | {b} | {t} | {b * t} | {r.ms:.1f} | "
                  f"{per_token:.1f} | {per_token / first:.2f}x | {r.tokens_s:,.0f} | {r.gflops:.1f} | "
                  f"{100 * r.sgemm:.0f}% | {r.rss:,.0f} | {r.startup:.1f} |", flush=True)
    print("\n" + machine(args, [w]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dev.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("-e", "--model", default="d12", metavar="MODEL",
        help="descriptor (d6, d12, gpt3:c768...) or llm.c checkpoint .bin (default %(default)s)")
    add("-b", "--batch-size", type=int, default=4, metavar="B", help="B, also the sweep's (default %(default)s)")
    add("-t", "--seq-len", type=int, default=64, metavar="T", help="T, also the depth sweep's (default %(default)s)")
    add("--threads", type=int, default=ALL_CORES, metavar="N",
        help="threads of numba, BLAS and torch (default: all cores, %(default)s)")
    add("--warmup", type=int, metavar="N", help="untimed steps first, at least 1 (default 2; 1 with --sweep)")
    add("--steps", type=int, metavar="N", help="timed steps (default 10; 3 with --sweep)")
    add("--seed", type=int, default=1337, help="seed of the random batch (default %(default)s)")
    add("--vs", choices=("torch", "transformers"),
        help="also time dev/make_reference.py's PyTorch GPT-2 (torch) or, with --generate, transformers' generate, "
             "alternating steps")
    add("--vs-tree", metavar="DIR",
        help="also time the training step of another checkout of this repository (a git worktree of an earlier "
             "commit, say), alternating steps with this one's")
    add("--profile", action="store_true", help="each train_gpt2 kernel's share of our step")
    add("--attention", action="store_true",
        help="attention alone: every layer's forward, then backward (with --vs torch: PyTorch's fused and eager)")
    add("--sweep", action="store_true", help="ms/step, per-token cost and RSS over T and over depth")
    add("--sweep-t", default="64,256,1024", metavar="LIST",
        help="sequence lengths of the sweep over T, at -e and -b (default %(default)s)")
    add("--sweep-depths", default="d6,d12,d24", metavar="LIST",
        help="models of the sweep over depth, at -b and -t (default %(default)s)")
    add("--sgemm-repeats", type=int, default=5, metavar="N",
        help="--sweep's timings per sgemm shape, at least 3 (default %(default)s; a step's run times one between "
             "each round of steps)")
    add("--processes", action="store_true",
        help="1 process x all threads, 1 x 1, and 2 processes x 1 thread (mpirun), same total batch")
    add("--generate", action="store_true", help="time generation at batch 1: the KV cache, the full recomputation "
                                                "and, with --vs transformers, transformers' generate")
    add("--prompt-tokens", type=int, default=16, metavar="N", help="--generate's prompt (default %(default)s)")
    add("--gen-tokens", type=int, default=128, metavar="N", help="--generate's new tokens (default %(default)s)")
    add("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    add("--processes-worker", action="store_true", help=argparse.SUPPRESS)
    add("--zero", type=int, default=0, help=argparse.SUPPRESS)
    add("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.sweep or args.generate  # a step of theirs takes seconds
    args.warmup = 1 if args.warmup is None and quick else 2 if args.warmup is None else args.warmup
    args.steps = 3 if args.steps is None and quick else 10 if args.steps is None else args.steps
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: the first step loads or compiles the kernels")
    for name in ("batch_size", "seq_len", "threads", "steps", "sgemm_repeats", "prompt_tokens", "gen_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.sweep and (args.vs or args.profile):
        parser.error("--sweep times ours alone: no --vs or --profile with it")
    if args.generate and (args.vs == "torch" or args.sweep or args.profile or args.processes):
        parser.error("--generate goes with --vs transformers only")
    if args.attention and (args.sweep or args.profile or args.generate or args.processes):
        parser.error("--attention goes with --vs torch only")
    if args.vs == "transformers" and not args.generate:
        parser.error("--vs transformers times generation: give --generate")
    if args.vs_tree and (args.sweep or args.generate or args.attention or args.processes):
        parser.error("--vs-tree times the training step: no --sweep, --generate, --attention or --processes with it")
    if args.vs_tree and not os.path.isfile(os.path.join(args.vs_tree, "dev", "bench.py")):
        parser.error(f"--vs-tree {args.vs_tree}: not a checkout of this repository (no dev/bench.py in it)")
    if args.vs_tree:
        args.vs_tree = os.path.abspath(args.vs_tree)
    try:
        args.sweep_t = [int(v) for v in args.sweep_t.split(",")]
    except ValueError:
        parser.error(f"--sweep-t {args.sweep_t!r}: expected integers separated by commas")
    if min(args.sweep_t) < 1:
        parser.error("every --sweep-t must be at least 1")
    args.sweep_depths = args.sweep_depths.split(",")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return serve(args)
    if args.processes_worker:
        return processes_worker(args)
    if args.vs == "torch" and importlib.util.find_spec("torch") is None:
        print("error: --vs torch needs PyTorch: pip install -r dev/requirements-dev.txt (its CPU build)",
              file=sys.stderr)
        return 1
    if args.vs == "transformers" and importlib.util.find_spec("transformers") is None:
        print("error: --vs transformers needs transformers and PyTorch: pip install -r dev/requirements-dev.txt "
              "transformers", file=sys.stderr)
        return 1
    for var in THREAD_VARS:  # the workers' threads, and this process's for the sgemm
        os.environ[var] = str(args.threads)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill cleans up as Ctrl-C does
    args.busy = cpu_busy()
    if args.busy is not None and args.busy > 0.1:
        print(f"warning: other processes use {100 * args.busy:.0f}% of the CPUs; BLAS and OpenMP threads slow down "
              "many times when they share cores, so expect slow and noisy numbers", file=sys.stderr)
    try:
        if args.processes:
            processes_run(args)
        elif args.sweep:
            sweep(args)
        elif args.attention:
            attention_run(args)
        else:
            generate_run(args) if args.generate else main_run(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
