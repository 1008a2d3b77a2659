"""Write an llm.c-compatible reference model checkpoint and debug state with PyTorch.

This is the oracle test_gpt2.py checks the trainer against, and it is independent of the trainer on purpose: it
never imports train_gpt2, and re-implements llm.c's file formats and GPT-2 itself with PyTorch, so that a bug
in the trainer (a kernel, the parameter layout, a file reader or writer) cannot hide in the reference as well.
Keep it so: the duplication with train_gpt2.py is the point.

This is a development tool, in the spirit of karpathy/llm.c's train_gpt2.py: it
builds a plain PyTorch GPT-2, runs ONE forward+backward pass on a fixed batch and
writes the two binary files that llm.c's test_gpt2.c compares against:

  * the model checkpoint (magic 20240326, version 3 = fp32), and
  * the debug state (magic 20240327, version 2): x, y, logits, loss, grads,
    followed by the losses of a few AdamW steps on the same batch (appended after
    the grads, where llm.c's reader stops reading, so llm.c's own files and ours
    stay readable by the same code).

Run with no arguments it (re)creates the small committed test fixture
data/fixtures/ref_model.bin and data/fixtures/ref_debug_state.bin.

Examples, from the repository's root:
  python -m dev.make_reference                       # the committed fixture
  python -m dev.make_reference -e d12 -b 4 -t 64 \\
      --model-out /tmp/d12_model.bin --state-out /tmp/d12_state.bin
  python -m dev.make_reference --init-from gpt2_124M.bin -b 4 -t 64 \\
      --model-out /tmp/m.bin --state-out /tmp/s.bin

Requires torch (see dev/requirements-dev.txt); the trainer itself does not, and --help works without it.
"""

import argparse
import math
import os
import re
import sys
import time
from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------------------
# File format constants (see llm.c; every header is 256 little-endian int32)
# ---------------------------------------------------------------------------
HEADER_INTS = 256
HEADER_BYTES = 4 * HEADER_INTS
MODEL_MAGIC = 20240326
MODEL_VERSION_FP32 = 3
MODEL_VERSION_BF16 = 5
STATE_MAGIC = 20240327
STATE_VERSION = 2

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_DIR = os.path.join(REPO_ROOT, "data", "fixtures")
FIXTURE_MODEL = os.path.join(FIXTURE_DIR, "ref_model.bin")
FIXTURE_STATE = os.path.join(FIXTURE_DIR, "ref_debug_state.bin")
FIXTURE_MAX_BYTES = 2 * 1024 * 1024  # the committed fixture must stay small

# The small config of the committed fixture: Vp > V exercises the vocab padding,
# T < maxT exercises a partial position table, B > 1 exercises batching.
FIXTURE_CONFIG = dict(vocab_size=500, padded_vocab_size=512, num_layers=2,
                      num_heads=4, channels=64, max_seq_len=32)
FIXTURE_B, FIXTURE_T = 4, 16


@dataclass
class GPTConfig:
    max_seq_len: int        # maxT
    vocab_size: int         # V (the real vocabulary, used by the PyTorch model)
    padded_vocab_size: int  # Vp (only used for the file layout)
    num_layers: int         # L
    num_heads: int          # NH
    channels: int           # C

    def header_slots(self):
        """Model header slots [2..7], in llm.c's order."""
        return [self.max_seq_len, self.vocab_size, self.num_layers,
                self.num_heads, self.channels, self.padded_vocab_size]

    def num_params(self):
        """Number of floats in a checkpoint (with the padded vocabulary)."""
        C, L = self.channels, self.num_layers
        return (self.padded_vocab_size * C + self.max_seq_len * C
                + L * (12 * C * C + 13 * C) + 2 * C)


# ---------------------------------------------------------------------------
# Command line: parsed before PyTorch is imported, so that --help and a bad
# flag need no PyTorch
# ---------------------------------------------------------------------------
def parse_args():
    p = argparse.ArgumentParser(
        prog="python -m dev.make_reference",
        description=__doc__.split("\n\n")[0],
        epilog="With no arguments, rewrites the committed fixture in data/fixtures/\n"
               "(V=500 Vp=512 L=2 NH=4 C=64 maxT=32, B=4 T=16). Any other recipe must\n"
               "name --model-out and --state-out, so the fixture is never overwritten\n"
               "by accident.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("model config (default: the fixture config)")
    src.add_argument("-e", dest="descriptor", metavar="dN",
                     help="llm.c GPT-2 descriptor (d6, d12, d24, ...): its layers, channels and "
                          "heads, maxT=1024, V=50257, Vp=50304")
    src.add_argument("--init-from", metavar="PATH",
                     help="start from this llm.c checkpoint (fp32 v3 or bf16 v5); "
                          "sets config and weights")
    src.add_argument("--vocab-size", type=int, metavar="V")
    src.add_argument("--padded-vocab-size", type=int, metavar="Vp",
                     help="default with --vocab-size: V rounded up to a multiple of 128")
    src.add_argument("--layers", type=int, metavar="L")
    src.add_argument("--heads", type=int, metavar="NH")
    src.add_argument("--channels", type=int, metavar="C")
    src.add_argument("--max-seq-len", type=int, metavar="maxT")
    src.add_argument("--seed", type=int, default=42,
                     help="torch seed of the random GPT-2 init (default 42)")
    run = p.add_argument_group("batch and optimizer")
    run.add_argument("-b", dest="B", type=int, default=FIXTURE_B, help="batch size B (default 4)")
    run.add_argument("-t", dest="T", type=int, default=FIXTURE_T, help="sequence length T <= maxT (default 16)")
    run.add_argument("--batch-seed", type=int, default=1337,
                     help="numpy seed of the random token batch (default 1337)")
    run.add_argument("--steps", type=int, default=10,
                     help="AdamW steps whose losses are appended to the state (default 10)")
    run.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    out = p.add_argument_group("output")
    out.add_argument("--model-out", metavar="PATH", help=f"default {os.path.relpath(FIXTURE_MODEL, REPO_ROOT)}")
    out.add_argument("--state-out", metavar="PATH", help=f"default {os.path.relpath(FIXTURE_STATE, REPO_ROOT)}")
    args = p.parse_args()

    # Writing to the committed fixture is only allowed with the fixture recipe.
    recipe = {k: v for k, v in vars(args).items() if k not in ("model_out", "state_out")}
    is_fixture_recipe = all(v == p.get_default(k) for k, v in recipe.items())
    if (args.model_out is None or args.state_out is None) and not is_fixture_recipe:
        p.error("a non-default recipe needs both --model-out and --state-out")
    args.model_out = args.model_out or FIXTURE_MODEL
    args.state_out = args.state_out or FIXTURE_STATE
    args.is_fixture = is_fixture_recipe
    if args.descriptor and args.init_from:
        p.error("-e and --init-from are exclusive")
    explicit = dict(vocab_size=args.vocab_size, padded_vocab_size=args.padded_vocab_size,
                    num_layers=args.layers, num_heads=args.heads, channels=args.channels,
                    max_seq_len=args.max_seq_len)
    explicit = {k: v for k, v in explicit.items() if v is not None}
    if args.init_from and explicit:
        p.error("config flags cannot be combined with --init-from (the checkpoint sets them)")
    if args.steps < 0 or args.B < 1 or args.T < 1:
        p.error("need B >= 1, T >= 1, steps >= 0")
    args.explicit = explicit
    return args


if __name__ == "__main__":  # run as a script: the flags first, then PyTorch
    ARGS = parse_args()

try:
    import torch  # noqa: E402
    import torch.nn as nn  # noqa: E402
    import torch.nn.functional as F  # noqa: E402
except ModuleNotFoundError as e:
    if __name__ != "__main__" or e.name != "torch":
        raise  # imported, by dev/bench.py's torch worker: it checked that PyTorch is there
    sys.exit("error: dev/make_reference.py needs PyTorch: "
             "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")


# ---------------------------------------------------------------------------
# A plain PyTorch GPT-2
# ---------------------------------------------------------------------------
class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.channels % cfg.num_heads == 0
        self.n_head = cfg.num_heads
        self.c_attn = nn.Linear(cfg.channels, 3 * cfg.channels)  # q, k, v
        self.c_proj = nn.Linear(cfg.channels, cfg.channels)

    def forward(self, x):
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, NH, T, hs)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        # Explicit causal attention (no fused kernel: plainer and deterministic).
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = att @ v                                       # (B, NH, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.channels, 4 * cfg.channels)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * cfg.channels, cfg.channels)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.channels, eps=1e-5)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.channels, eps=1e-5)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))  # pre-LayerNorm residual blocks
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.channels)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.channels)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.channels, eps=1e-5)
        self.lm_head = nn.Linear(cfg.channels, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying

    def init_gpt2(self, seed):
        """GPT-2 init: N(0, 0.02) weights, residual projections scaled by
        1/sqrt(2L), zero biases, LayerNorm (1, 0). Uses its own generator so
        the result does not depend on how nn.Module construction drew numbers."""
        gen = torch.Generator().manual_seed(seed)
        proj_std = 0.02 / math.sqrt(2 * self.cfg.num_layers)
        with torch.no_grad():
            for name, m in self.named_modules():
                if m is self.lm_head:
                    continue  # tied to wte, initialised there
                if isinstance(m, nn.Linear):
                    std = proj_std if name.endswith("c_proj") else 0.02
                    m.weight.normal_(0.0, std, generator=gen)
                    if m.bias is not None:
                        m.bias.zero_()
                elif isinstance(m, nn.Embedding):
                    m.weight.normal_(0.0, 0.02, generator=gen)
                elif isinstance(m, nn.LayerNorm):
                    m.weight.fill_(1.0)
                    m.bias.zero_()

    def forward(self, idx, targets):
        B, T = idx.shape
        assert T <= self.cfg.max_seq_len, f"T={T} > maxT={self.cfg.max_seq_len}"
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V), V unpadded
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    # -- the llm.c parameter layout -----------------------------------------
    def llmc_layout(self):
        """The 16 llm.c parameter tensors, in order, as (name, [torch params]).
        Per-layer tensors are the L layers' parameters stacked on a new axis 0."""
        h = self.h
        return [
            ("wte", [self.wte.weight]),
            ("wpe", [self.wpe.weight]),
            ("ln1w", [b.ln_1.weight for b in h]),
            ("ln1b", [b.ln_1.bias for b in h]),
            ("qkvw", [b.attn.c_attn.weight for b in h]),
            ("qkvb", [b.attn.c_attn.bias for b in h]),
            ("attprojw", [b.attn.c_proj.weight for b in h]),
            ("attprojb", [b.attn.c_proj.bias for b in h]),
            ("ln2w", [b.ln_2.weight for b in h]),
            ("ln2b", [b.ln_2.bias for b in h]),
            ("fcw", [b.mlp.c_fc.weight for b in h]),
            ("fcb", [b.mlp.c_fc.bias for b in h]),
            ("fcprojw", [b.mlp.c_proj.weight for b in h]),
            ("fcprojb", [b.mlp.c_proj.bias for b in h]),
            ("lnfw", [self.ln_f.weight]),
            ("lnfb", [self.ln_f.bias]),
        ]

    def llmc_shapes(self):
        cfg = self.cfg
        Vp, C, L, maxT = cfg.padded_vocab_size, cfg.channels, cfg.num_layers, cfg.max_seq_len
        return [(Vp, C), (maxT, C), (L, C), (L, C), (L, 3 * C, C), (L, 3 * C),
                (L, C, C), (L, C), (L, C), (L, C), (L, 4 * C, C), (L, 4 * C),
                (L, C, 4 * C), (L, C), (C,), (C,)]

    def llmc_arrays(self, grads=False):
        """Yield the 16 tensors (values or gradients) as float32 numpy arrays in
        the llm.c layout; wte is zero-padded from V to Vp rows."""
        for (name, params), shape in zip(self.llmc_layout(), self.llmc_shapes()):
            ts = [p.grad if grads else p for p in params]
            t = ts[0] if name in ("wte", "wpe", "lnfw", "lnfb") else torch.stack(ts)
            a = t.detach().cpu().numpy().astype("<f4", copy=False)
            if name == "wte":
                a = np.concatenate([a, np.zeros((shape[0] - a.shape[0], a.shape[1]), "<f4")])
            assert a.shape == shape, (name, a.shape, shape)
            yield a

    def load_llmc(self, flat):
        """Set all parameters from a flat float32 array in the llm.c layout."""
        V, off = self.cfg.vocab_size, 0
        with torch.no_grad():
            for (name, params), shape in zip(self.llmc_layout(), self.llmc_shapes()):
                n = int(np.prod(shape))
                a = torch.from_numpy(flat[off:off + n].reshape(shape).copy())
                off += n
                if name == "wte":
                    a = a[:V]  # drop the padding rows
                if name in ("wte", "wpe", "lnfw", "lnfb"):  # single tensors
                    params[0].copy_(a)
                else:
                    for i, p in enumerate(params):
                        p.copy_(a[i])
        assert off == flat.size, (off, flat.size)


# ---------------------------------------------------------------------------
# Reading an existing llm.c checkpoint
# ---------------------------------------------------------------------------
def read_checkpoint(path):
    """Return (GPTConfig, flat float32 params) from an llm.c model file.
    Version 3 is fp32; version 5 is bf16, widened here to fp32."""
    with open(path, "rb") as f:
        header = np.fromfile(f, dtype="<i4", count=HEADER_INTS)
        if header.size != HEADER_INTS:
            sys.exit(f"{path}: too short for a {HEADER_BYTES}-byte header")
        if header[0] != MODEL_MAGIC:
            sys.exit(f"{path}: bad magic, expected {MODEL_MAGIC}, found {header[0]}")
        version = int(header[1])
        if version not in (MODEL_VERSION_FP32, MODEL_VERSION_BF16):
            sys.exit(f"{path}: bad version, expected {MODEL_VERSION_FP32} or "
                     f"{MODEL_VERSION_BF16}, found {version}")
        maxT, V, L, NH, C, Vp = (int(v) for v in header[2:8])
        cfg = GPTConfig(max_seq_len=maxT, vocab_size=V, padded_vocab_size=Vp,
                        num_layers=L, num_heads=NH, channels=C)
        n = cfg.num_params()
        if version == MODEL_VERSION_FP32:
            flat = np.fromfile(f, dtype="<f4", count=n)
        else:  # bf16 is the top half of an fp32: shift it back into place
            raw = np.fromfile(f, dtype="<u2", count=n)
            flat = (raw.astype("<u4") << 16).view("<f4")
        if flat.size != n or f.read(1):
            sys.exit(f"{path}: body size mismatch, expected {n} parameters")
    return cfg, flat.astype(np.float32, copy=False)


# llm.c's GPT-2 shapes by depth (train_gpt2.cu, gpt2_set_hyperparameters): depth -> (channels, heads)
GPT2_SHAPES = {6: (384, 6), 12: (768, 12), 24: (1024, 16), 36: (1280, 20), 48: (1600, 25),
               60: (1920, 30), 72: (2880, 30), 84: (3456, 36)}


def descriptor_config(desc):
    """llm.c's GPT-2 descriptors 'dN' / 'gpt2:dN': the shape of GPT-2 with N layers."""
    m = re.fullmatch(r"(?:gpt2:)?d(\d+)", desc)
    if not m or int(m.group(1)) not in GPT2_SHAPES:
        sys.exit(f"bad descriptor {desc!r}: expected dN with N one of {sorted(GPT2_SHAPES)}")
    L = int(m.group(1))
    C, NH = GPT2_SHAPES[L]
    return dict(vocab_size=50257, padded_vocab_size=50304, num_layers=L,
                num_heads=NH, channels=C, max_seq_len=1024)


# ---------------------------------------------------------------------------
# Writing and checking the output files
# ---------------------------------------------------------------------------
def make_header(slots):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:len(slots)] = slots
    return header


def write_model(path, model):
    cfg = model.cfg
    with open(path, "wb") as f:
        make_header([MODEL_MAGIC, MODEL_VERSION_FP32] + cfg.header_slots()).tofile(f)
        for a in model.llmc_arrays(grads=False):
            a.tofile(f)


def write_state(path, model, x, y, logits, loss, num_losses):
    """Write the debug state up to the grads; the caller appends num_losses
    AdamW losses afterwards (header[4] announces them)."""
    B, T = x.shape
    with open(path, "wb") as f:
        make_header([STATE_MAGIC, STATE_VERSION, B, T, num_losses]).tofile(f)
        x.numpy().astype("<i4").tofile(f)
        y.numpy().astype("<i4").tofile(f)
        logits.numpy().astype("<f4").tofile(f)         # (B, T, V), unpadded
        np.array([loss], dtype="<f4").tofile(f)
        for g in model.llmc_arrays(grads=True):         # same layout as the model
            g.tofile(f)


def check_files(model_path, state_path, cfg, B, T, steps, x, loss, losses):
    """Cheap self-check: re-read headers, exact byte sizes and a few values."""
    P, V = cfg.num_params(), cfg.vocab_size
    want_model = HEADER_BYTES + 4 * P
    want_state = HEADER_BYTES + 4 * (2 * B * T + B * T * V + 1 + P + steps)

    m = np.memmap(model_path, dtype="<i4", mode="r")
    assert os.path.getsize(model_path) == want_model, (os.path.getsize(model_path), want_model)
    assert list(m[:8]) == [MODEL_MAGIC, MODEL_VERSION_FP32] + cfg.header_slots(), m[:8]
    assert not m[8:HEADER_INTS].any()
    wte = np.memmap(model_path, dtype="<f4", mode="r", offset=HEADER_BYTES,
                    shape=(cfg.padded_vocab_size, cfg.channels))
    assert not wte[V:].any(), "padding rows of wte must be zero"

    s = np.memmap(state_path, dtype="<i4", mode="r")
    assert os.path.getsize(state_path) == want_state, (os.path.getsize(state_path), want_state)
    assert list(s[:5]) == [STATE_MAGIC, STATE_VERSION, B, T, steps], s[:5]
    assert not s[5:HEADER_INTS].any()
    assert np.array_equal(s[HEADER_INTS:HEADER_INTS + B * T], x.numpy().ravel())
    f = np.memmap(state_path, dtype="<f4", mode="r")
    assert f[HEADER_INTS + 2 * B * T + B * T * V] == np.float32(loss)
    assert np.array_equal(f[f.size - steps:], np.asarray(losses, dtype="<f4"))
    grad_wte = f[HEADER_INTS + 2 * B * T + B * T * V + 1:][:cfg.padded_vocab_size * cfg.channels]
    assert not grad_wte[V * cfg.channels:].any(), "padding rows of the wte grad must be zero"
    return want_model, want_state


# ---------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------
def resolve_config(args):
    """Config and optional initial weights: checkpoint > descriptor/fixture + flags."""
    if args.init_from:
        return read_checkpoint(args.init_from)
    base = descriptor_config(args.descriptor) if args.descriptor else dict(FIXTURE_CONFIG)
    if "vocab_size" in args.explicit and "padded_vocab_size" not in args.explicit:
        base["padded_vocab_size"] = -(-args.explicit["vocab_size"] // 128) * 128
    base.update(args.explicit)
    cfg = GPTConfig(**base)
    if cfg.padded_vocab_size < cfg.vocab_size:
        sys.exit(f"Vp={cfg.padded_vocab_size} < V={cfg.vocab_size}")
    if cfg.channels % cfg.num_heads:
        sys.exit(f"C={cfg.channels} is not divisible by NH={cfg.num_heads}")
    return cfg, None


def main(args):
    t0 = time.time()
    torch.set_default_dtype(torch.float32)
    torch.use_deterministic_algorithms(True)  # harmless on CPU; no fused kernels
    torch.manual_seed(args.seed)

    cfg, flat = resolve_config(args)
    B, T, V = args.B, args.T, cfg.vocab_size
    if T > cfg.max_seq_len:
        sys.exit(f"T={T} > maxT={cfg.max_seq_len}")

    model = GPT(cfg)
    if flat is None:
        model.init_gpt2(args.seed)
    else:
        model.load_llmc(flat)
        del flat

    # The batch: B x (T+1) seeded random tokens; y is x shifted by one.
    rng = np.random.default_rng(args.batch_seed)
    tokens = torch.from_numpy(rng.integers(0, V, size=(B, T + 1), dtype=np.int64))
    x, y = tokens[:, :T].contiguous(), tokens[:, 1:].contiguous()

    # Write the checkpoint of the initial model before any update.
    for path in (args.model_out, args.state_out):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_model(args.model_out, model)

    # One forward+backward of the initial model gives logits, loss and grads,
    # which go into the debug state right away (before any update).
    model.train()
    logits, loss = model(x, y)
    loss.backward()
    loss0 = loss.item()
    write_state(args.state_out, model, x, y, logits.detach(), loss0, args.steps)

    # Then a few AdamW steps on the same batch, as llm.c's test_gpt2.c does;
    # the forward/backward above is step 0's. losses[i] is the loss before the
    # i-th update; they are appended at the end of the state.
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999),
                                  eps=1e-8, weight_decay=0.0)
    losses = []
    for step in range(args.steps):
        if step > 0:
            optimizer.zero_grad(set_to_none=True)
            _, loss = model(x, y)
            loss.backward()
        losses.append(loss.item())
        optimizer.step()
    with open(args.state_out, "ab") as f:
        np.asarray(losses, dtype="<f4").tofile(f)

    model_bytes, state_bytes = check_files(args.model_out, args.state_out, cfg, B, T,
                                           args.steps, x, loss0, losses)

    # Summary.
    print(f"config: V={cfg.vocab_size} Vp={cfg.padded_vocab_size} L={cfg.num_layers} "
          f"NH={cfg.num_heads} C={cfg.channels} maxT={cfg.max_seq_len} B={B} T={T} "
          f"({'init-from ' + args.init_from if args.init_from else f'seed {args.seed}'}, "
          f"batch-seed {args.batch_seed}, lr {args.lr})")
    print(f"parameters: {cfg.num_params():,} (padded vocab), "
          f"{sum(p.numel() for p in model.parameters()):,} in the PyTorch model")
    print(f"loss: {loss0:.6f}")
    print(f"losses of {args.steps} AdamW steps: " + " ".join(f"{l:.6f}" for l in losses))
    print(f"wrote {args.model_out} ({model_bytes:,} bytes)")
    print(f"wrote {args.state_out} ({state_bytes:,} bytes)")
    total = model_bytes + state_bytes
    print(f"total {total:,} bytes; self-check ok; {time.time() - t0:.1f} s")
    if args.is_fixture and total > FIXTURE_MAX_BYTES:
        sys.exit(f"fixture too large: {total} > {FIXTURE_MAX_BYTES} bytes")


if __name__ == "__main__":
    main(ARGS)
