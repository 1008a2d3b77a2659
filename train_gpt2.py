"""
Train GPT-2 on a CPU, in one file of Python: a port of karpathy/llm.c's train_gpt2.c.

There is no autograd and no framework here. Every layer's forward pass and backward pass is written by hand
as a numba kernel; matrix products go to BLAS through numpy. As in llm.c, all the memory a training step needs
is allocated once, up front, in a few flat buffers:

    parameters | gradients | AdamW first moments | AdamW second moments     (same layout, one float each)
    activations and activation gradients for a batch of (B, T) tokens

and every tensor is a view into one of them. A model that only runs forward (to generate text, or to evaluate)
has its parameters, one layer's activations and a KV cache. The file reads top to bottom:

    1. kernels              each layer's forward beside its backward; attention in blocks, as FlashAttention
    2. the model            GPT-2 itself: its shapes, buffers, forward, backward, llm.c's model file, initialisation,
                            and every model source -e names
    3. the optimizer        AdamW, the gradient norm, learning rate schedules
    4. the data loader      llm.c's token shards, read in llm.c's exact order
    5. generating text      llm.c's draw with temperature, top-k and top-p, and a KV cache
    6. training             one step, the training loop, main

What a learner can take as given lives in llmc/, one module per concern, as llm.c's headers; each import below
says what it brings. Run `python train_gpt2.py --help` for the flags; they are named as in llm.c's train_gpt2.cu.
"""

import contextlib
import dataclasses
import glob
import math
import os
import sys
import time
from collections import namedtuple
from types import SimpleNamespace

from llmc import startup  # first, before numpy and numba load: how their threads share the cores

if __name__ == "__main__":
    startup.quiet_interrupt()  # Ctrl-C while the libraries load and the kernels are made: stop, quietly

import numba
import numpy as np
from numba import njit, prange

from llmc import cli, hf  # the command line (flags, what -e names, how main ends); a Hugging Face GPT-2's files
from llmc.data import DEFAULT_VAL, prepare_default_data  # Tiny Shakespeare, prepared for the default run
from llmc.eval import eval_accuracy, evaluation_sizes, read_eval_file  # HellaSwag, scored as llm.c scores it
from llmc.files import (HEADER_BYTES, MODEL_MAGIC, SHARD_MAGIC, GPT2Error,  # errors, llm.c's 256-int file header,
                        check_file_size, new_header, read_header, write_atomically)  # and durable writes
from llmc.mpi import ONE_PROCESS, Processes  # the processes of an mpirun: rank, all-reduce, ZeRO-1
from llmc.rand import MersenneTwister, XorShift  # llm.c's random number generators, to the bit
from llmc.run_dir import RunDirectory  # -o: its lock, checkpoints, main.log, resuming, pruning
from llmc.tokenizer import TextStream, sampling_tokenizer  # GPT-2's tokenizer file, and tokens printed as text


# ----------------------------------------------------------------------------------------------------------------
# 1. Kernels
#
# Each layer of GPT-2 as a pair of functions: the forward pass, and right below it the backward pass, which takes
# the gradient of the loss with respect to the layer's output (dout) and produces the gradients with respect to
# its inputs and parameters. Shapes are in the comments: B batch, T time, C channels, NH heads, V vocabulary,
# Vp padded vocabulary, OC output channels, N = B*T rows.
#
# The kernels are dtype-generic: the same code runs in float32 for training and in float64 for the gradient
# checks of tests/test_kernels.py. Numba compiles each once per dtype and caches the machine code on disk.
# `prange` loops run in parallel over the cores. Sums and constants take the input's dtype (`x.dtype.type(0)`),
# so that float32 code stays float32; only layernorm's statistics are summed in float64. The fastmath flags
# allow fused multiply-adds but neither reordered sums (LLVM vectorised a reordered sum differently in a kernel
# compiled in the process and in the same kernel loaded from numba's cache, and the last bits of a loss then
# changed between a run and its resumption) nor the assumption that values are finite (a diverging run must
# still show its NaN or inf).

kernel = njit(parallel=True, cache=True, fastmath={"nsz", "arcp", "contract"})
COLUMN_BLOCK = 16  # reductions over rows work on 16 columns at a time: one 64-byte cache line of float32


@kernel
def encoder_forward(out, tokens, wte, wpe):
    # out (B,T,C) = wte[tokens] (token embedding) + wpe[t] (position embedding); tokens (B,T) int32
    B, T, C = out.shape
    for b in prange(B):
        for t in range(T):
            token = tokens[b, t]
            for c in range(C):
                out[b, t, c] = wte[token, c] + wpe[t, c]


@kernel
def encoder_backward(dwte, dwpe, dout, tokens):
    # accumulates into dwte (Vp,C) and dwpe (maxT,C); dout (B,T,C). A token can repeat in a batch, so rows of dwte
    # are shared: the work is split over blocks of channels instead, which never collide.
    B, T, C = dout.shape
    for block in prange((C + COLUMN_BLOCK - 1) // COLUMN_BLOCK):
        c0, c1 = block * COLUMN_BLOCK, min(C, (block + 1) * COLUMN_BLOCK)
        for b in range(B):
            for t in range(T):
                token = tokens[b, t]
                for c in range(c0, c1):
                    dwte[token, c] += dout[b, t, c]
                    dwpe[t, c] += dout[b, t, c]


@kernel
def layernorm_forward(out, mean, rstd, inp, weight, bias):
    # out, inp (N,C); mean, rstd (N,) saved for the backward pass; weight, bias (C,)
    N, C = inp.shape
    for n in prange(N):
        m = 0.0
        for c in range(C):
            m += inp[n, c]
        m /= C
        var = 0.0
        for c in range(C):
            d = inp[n, c] - m
            var += d * d
        var /= C
        s = 1.0 / math.sqrt(var + 1e-5)
        for c in range(C):
            out[n, c] = (inp[n, c] - m) * s * weight[c] + bias[c]
        mean[n] = m
        rstd[n] = s


@kernel
def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    # accumulates into dinp (N,C), dweight (C,), dbias (C,); dout, inp (N,C); mean, rstd (N,)
    N, C = inp.shape
    for n in prange(N):
        # with norm = (inp - mean) * rstd and dnorm = weight * dout:
        # dinp = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
        dnorm_mean = 0.0
        dnorm_norm_mean = 0.0
        for c in range(C):
            norm = (inp[n, c] - mean[n]) * rstd[n]
            dnorm = weight[c] * dout[n, c]
            dnorm_mean += dnorm
            dnorm_norm_mean += dnorm * norm
        dnorm_mean /= C
        dnorm_norm_mean /= C
        for c in range(C):
            norm = (inp[n, c] - mean[n]) * rstd[n]
            dnorm = weight[c] * dout[n, c]
            dinp[n, c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * rstd[n]
    # dweight = sum over rows of dout * norm, dbias = sum over rows of dout
    for block in prange((C + COLUMN_BLOCK - 1) // COLUMN_BLOCK):
        c0, c1 = block * COLUMN_BLOCK, min(C, (block + 1) * COLUMN_BLOCK)
        for n in range(N):
            for c in range(c0, c1):
                dweight[c] += dout[n, c] * (inp[n, c] - mean[n]) * rstd[n]
                dbias[c] += dout[n, c]


@kernel
def bias_forward(out, bias):
    # out (N,OC) += bias (OC,)
    N, OC = out.shape
    for n in prange(N):
        for o in range(OC):
            out[n, o] += bias[o]


@kernel
def bias_backward(dbias, dout):
    # accumulates into dbias (OC,) the sum over rows of dout (N,OC)
    N, OC = dout.shape
    for block in prange((OC + COLUMN_BLOCK - 1) // COLUMN_BLOCK):
        o0, o1 = block * COLUMN_BLOCK, min(OC, (block + 1) * COLUMN_BLOCK)
        for n in range(N):
            for o in range(o0, o1):
                dbias[o] += dout[n, o]


@kernel
def accumulate_into(total, part):
    # total += part, elementwise, for two arrays of the same shape (R,K)
    R, K = total.shape
    for r in prange(R):
        for k in range(K):
            total[r, k] += part[r, k]


def matmul_forward(out, inp, weight, bias):
    # out (N,OC) = inp (N,C) @ weight (OC,C).T + bias (OC,); the product itself is BLAS's
    np.matmul(inp, weight.T, out=out)
    if bias is not None:
        bias_forward(out, bias)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, scratch, accumulate=True):
    # writes dinp (N,C) = dout (N,OC) @ weight (OC,C); dweight (OC,C) gets dout.T @ inp and dbias (OC,) the sum
    # of dout's rows. BLAS cannot add into its output: when dweight holds nothing yet (accumulate=False, right
    # after zero_grad) the product is written there directly, otherwise it goes through `scratch` a block of rows
    # at a time and is added.
    np.matmul(dout, weight, out=dinp)
    if not accumulate:
        np.matmul(dout.T, inp, out=dweight)
    else:
        OC, C = dweight.shape
        rows = scratch.size // C
        for start in range(0, OC, rows):
            stop = min(OC, start + rows)
            block = scratch[:(stop - start) * C].reshape(stop - start, C)
            np.matmul(dout[:, start:stop].T, inp, out=block)
            accumulate_into(dweight[start:stop], block)
    if dbias is not None:
        bias_backward(dbias, dout)


# Attention. Each head h looks at its own hs = C/NH channels of the queries, keys and values that the qkv matmul
# made. Written as plain loops, as llm.c's attention_forward is, for each b, h and query position t:
#     w[t, t2] = softmax over t2 <= t of s[t, t2],  s[t, t2] = (q[t] . k[t2]) / sqrt(hs)   the weights (T,T)
#     out[t] = sum over t2 <= t of w[t, t2] v[t2]
# llm.c stores w for the backward pass (and s too), B*NH*T*T floats a layer each: for GPT-2 124M at T=1024 and B=4
# the weights alone are 2.4 GB, and their masked half is zeros. Here, as in FlashAttention (Dao et al., 2022),
# no T x T matrix is ever stored. The forward pass goes through the scores a block at a time and keeps one float per
# query, the log-sum-exp lse[t] = log(sum over t2 <= t of exp(s[t, t2])); the backward pass makes each block's
# weights again from it: w[t, t2] = exp(s[t, t2] - lse[t]).
#
# The forward pass takes the queries SMALL_BLOCK at a time, and their keys LARGE_BLOCK at a time up to the diagonal.
# The products of each block go to BLAS, over all the heads as a batch, and the softmax is a kernel (the online
# softmax, below); heads() views a (B,T,C) buffer as (B,NH,T,hs) with no copy.
#
# Generating text one token at a time, the queries of the new positions attend to the keys and values of all the
# positions before them too. A KV cache keeps those: then the T new positions start at `pos`, the keys and values
# are the cache's first pos+T positions, and query t sees keys 0..pos+t.

# Forward: 256 queries x 1024 keys; backward: 256 keys x 1024 queries. Few, large blocks: each matrix of a batched
# product wakes BLAS's threads (which sleep when idle, see llmc/startup.py), and smaller blocks made the attention
# slower at T=1024 (dev/bench.py --attention; the README has the figures). The scratch stays small: a block of
# scores is B*NH*256*1024 floats at most, 48 MB at B=4, NH=12 (training has two, the scores and their gradients).
SMALL_BLOCK, LARGE_BLOCK = 256, 1024


def heads(x, NH):
    # splitting the last axis, whose stride is one element, always gives a view: matmul's out= writes through it
    B, T, C = x.shape
    return x.reshape(B, T, NH, C // NH).transpose(0, 2, 1, 3)


def split_qkv(qkv, NH):
    # (B,T,3C) -> the (B,NH,T,hs) views of the queries, keys and values
    C = qkv.shape[2] // 3
    return [heads(qkv[:, :, i * C:(i + 1) * C], NH) for i in range(3)]


def block_of(buffer, *shape):
    # a block's (B,NH,rows,columns) view at the start of a flat scratch buffer
    return buffer.reshape(-1)[:math.prod(shape)].reshape(shape)


def batched_matmul(out, a, b, scratch, add):
    # out = a @ b, or with add, out += a @ b: BLAS (through numpy's matmul) cannot add into its output, so the
    # product goes to scratch first
    if not add:
        np.matmul(a, b, out=out)
    else:
        part = block_of(scratch, *out.shape)
        np.matmul(a, b, out=part)
        out += part


def attention_forward(out, lse, qkv, NH, scores, rowmax, rowsum, partial, kv_cache=None, pos=0):
    # out (B,T,C); lse (B,NH,T) each query's log-sum-exp, saved for the backward pass; qkv (B,T,3C). Scratch:
    # scores (>= B*NH*SMALL_BLOCK*LARGE_BLOCK, or T and pos+T where smaller), rowmax and rowsum (B,NH,>=SMALL_BLOCK),
    # partial (as many floats as out). kv_cache (B,maxT,2C) when generating: this call's keys and values are
    # written at positions pos..pos+T-1
    B, T, C3 = qkv.shape
    q, k, v = split_qkv(qkv, NH)
    if kv_cache is not None:
        C = C3 // 3
        kv_cache[:, pos:pos + T] = qkv[:, :, C:]
        k, v = heads(kv_cache[:, :pos + T, :C], NH), heads(kv_cache[:, :pos + T, C:], NH)
    scale = qkv.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    out_heads = heads(out, NH)
    for q0 in range(0, T, SMALL_BLOCK):
        q1 = min(T, q0 + SMALL_BLOCK)
        out_block = out_heads[:, :, q0:q1]
        for k0 in range(0, pos + q1, LARGE_BLOCK):  # query q0+i sees keys up to pos+q0+i
            k1 = min(pos + q1, k0 + LARGE_BLOCK)
            block = block_of(scores, B, NH, k1 - k0, q1 - q0)
            np.matmul(k[:, :, k0:k1], q[:, :, q0:q1].transpose(0, 1, 3, 2), out=block)
            attention_softmax(block, rowmax, rowsum, out_block, lse, q0, scale, pos + q0 - k0,
                              first=k0 == 0, last=k1 == pos + q1)
            batched_matmul(out_block, block.transpose(0, 1, 3, 2), v[:, :, k0:k1], partial, add=k0 > 0)


# The online softmax. A softmax needs the max and the sum of all of a query's scores, but its keys come block after
# block: the online softmax keeps, for each query, the running max m, the running sum l and the output so far,
# unnormalised, and for each new block of scores s (R queries x Kb keys) and values v (Kb,hs):
#     m' = max(m, max over the block of s);   c = exp(m - m')      (the terms so far, rescaled to the new max)
#     l = c * l + sum of exp(s - m');    out = c * out + exp(s - m') @ v;    m = m'
# and in the end out / l is the output and m + log(l) the log-sum-exp. A query with at most LARGE_BLOCK keys
# needs one block, and no rescaling. (The kernel keeps m unscaled, as BLAS makes q.k, and multiplies by 1/sqrt(hs)
# inside each exp.) A block of scores is stored keys x queries, (Kb, R) per head, so that the max and the sums over
# keys run along rows of queries: SIMD does them with no sum reordered.

@kernel
def attention_softmax(scores, rowmax, rowsum, out, lse, t0, scale, diagonal, first, last):
    # One step of the online softmax. scores (B,NH,Kb,R): q.k of Kb keys (rows) with the R queries from t0
    # (columns), in place -> exp(scale * (score - m')), 0 where masked: key j is seen by query i if j <= i + diagonal.
    # rowmax, rowsum (B,NH,>=R): each query's running max m (of the unscaled scores) and sum l; out (B,NH,R,hs) its
    # output so far, rescaled by c here. The first block of keys starts them. After the last, the weights and the
    # output so far are divided by l (so that the next product completes the output) and lse (B,NH,T) is written.
    B, NH, Kb, R = scores.shape
    hs = out.shape[3]
    zero = scores.dtype.type(0)  # an integer 0 in `x if c else 0` would make the result float64
    for bh in prange(B * NH):
        b, h = bh // NH, bh % NH
        m, l = rowmax[b, h], rowsum[b, h]
        newmax, rescale = np.empty(R, scores.dtype), np.zeros(R, scores.dtype)
        for i in range(R):
            newmax[i] = -np.inf if first else m[i]
        for j in range(Kb):
            row = scores[b, h, j]
            for i in range(R):
                if j <= i + diagonal:
                    newmax[i] = max(newmax[i], row[i])
        for i in range(R):
            if first:
                l[i] = 0
            else:
                rescale[i] = fast_exp((m[i] - newmax[i]) * scale)  # c
                l[i] *= rescale[i]
            m[i] = newmax[i]
        for j in range(Kb):
            row = scores[b, h, j]
            for i in range(R):
                e = fast_exp((row[i] - m[i]) * scale)
                row[i] = e if j <= i + diagonal else zero
                l[i] += row[i]
        if last:
            for i in range(R):
                lse[b, h, t0 + i] = m[i] * scale + math.log(l[i])
                l[i] = scores.dtype.type(1) / l[i]
                rescale[i] *= l[i]
            for j in range(Kb):
                row = scores[b, h, j]
                for i in range(R):
                    row[i] *= l[i]
        if not first:
            for i in range(R):
                for d in range(hs):
                    out[b, h, i, d] *= rescale[i]


@njit(cache=True, inline="always", fastmath={"nsz", "arcp", "contract"})
def fast_exp(x):
    # e^x, in float64 whatever x is, and returned in x's type. C's exp and expf are calls that a loop cannot
    # vectorise (numba has no vector math library without Intel's SVML); this is arithmetic that it can, several
    # times faster over an array. x = n ln2 + r with |r| <= ln2 / 2, and e^x = 2^n e^r: 2^n is n put in a float's
    # exponent bits, e^r the Taylor series to r^12 (3e-16 relative error in float64; in float32 the rounding of the
    # exact e^x). ln2 is split in two so that n times its first part is exact. Below -708 the result is 0 (not a
    # subnormal), NaN stays NaN. (2^n is made as 2 * 2^(n-1), which has an exponent for every n from -1021 to 1024.)
    y = np.float64(x)
    clamped = min(max(y, -708.0), 710.0)
    n = math.floor(clamped * 1.4426950408889634 + 0.5)  # round(y / ln2)
    r = (clamped - n * 0.6931471803691238) - n * 1.9082149292705877e-10
    e_r = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r * (
        1 / 5040 + r * (1 / 40320 + r * (1 / 362880 + r * (1 / 3628800 + r * (1 / 39916800 + r / 479001600)))))))))))
    e = e_r * 2.0 * np.int64((np.int64(n) + 1022) << 52).view(np.float64)  # inf from 709.79 (e^x > the largest float64)
    e = 0.0 if y < -708.0 else e
    e = math.inf if y > 710.0 else e
    e = y if y != y else e
    return type(x)(e)


def attention_backward(dqkv, dout, qkv, out, lse, NH, scores, dscores, rowdot, partial):
    # writes dqkv (B,T,3C); dout, out (B,T,C); qkv (B,T,3C); lse (B,NH,T) from the forward pass. Scratch: scores
    # and dscores as the forward's scores, rowdot (B,NH,T), partial (as many floats as out). The keys go
    # SMALL_BLOCK at a time, each with the queries that see it LARGE_BLOCK at a time: the forward's blocks, turned.
    B, T, C3 = qkv.shape
    q, k, v = split_qkv(qkv, NH)
    dq, dk, dv = split_qkv(dqkv, NH)
    dout_heads = heads(dout, NH)
    scale = qkv.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    attention_row_dots(rowdot, dout, out)
    for k0 in range(0, T, SMALL_BLOCK):
        k1 = min(T, k0 + SMALL_BLOCK)
        for q0 in range(k0, T, LARGE_BLOCK):  # the queries from k0 on see keys of this block
            q1 = min(T, q0 + LARGE_BLOCK)
            w, dw = block_of(scores, B, NH, k1 - k0, q1 - q0), block_of(dscores, B, NH, k1 - k0, q1 - q0)
            np.matmul(k[:, :, k0:k1], q[:, :, q0:q1].transpose(0, 1, 3, 2), out=w)             # the scores again
            np.matmul(v[:, :, k0:k1], dout_heads[:, :, q0:q1].transpose(0, 1, 3, 2), out=dw)  # dw = dout @ v.T
            attention_softmax_backward(w, dw, lse, rowdot, q0, scale, q0 - k0)
            # with the weights w (queries, keys), which the blocks hold turned: dv = w.T @ dout, dk = dscore.T @ q
            # and dq = dscore @ k; a key block's dv and dk, and a query block's dq, add up over the blocks
            batched_matmul(dv[:, :, k0:k1], w, dout_heads[:, :, q0:q1], partial, add=q0 > k0)
            batched_matmul(dk[:, :, k0:k1], dw, q[:, :, q0:q1], partial, add=q0 > k0)
            batched_matmul(dq[:, :, q0:q1], dw.transpose(0, 1, 3, 2), k[:, :, k0:k1], partial, add=k0 > 0)


@kernel
def attention_row_dots(rowdot, dout, out):
    # rowdot (B,NH,T) = dout . out over each head's channels; dout, out (B,T,C)
    B, NH, T = rowdot.shape
    hs = out.shape[2] // NH
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        for h in range(NH):
            total = out.dtype.type(0)
            for c in range(h * hs, (h + 1) * hs):
                total += dout[b, t, c] * out[b, t, c]
            rowdot[b, h, t] = total


@kernel
def attention_softmax_backward(scores, dscores, lse, rowdot, t0, scale, diagonal):
    # scores (B,NH,Kb,R): q.k of Kb keys (rows) with the R queries from t0 (columns), in place -> the weights
    # w = exp(scale * score - lse), 0 where masked (key j is seen by query i if j <= i + diagonal). dscores, in
    # place: from d(loss)/d(w) to d(loss)/d(score), through the softmax: dscore = scale * w * (dw - rowdot), where
    # rowdot = sum over keys of w * dw = dout . out (the same sum, by out = w @ v and dw = dout @ v.T)
    B, NH, Kb, R = scores.shape
    zero = scores.dtype.type(0)
    for bhj in prange(B * NH * Kb):
        b, h, j = bhj // (NH * Kb), (bhj // Kb) % NH, bhj % Kb
        row, drow = scores[b, h, j], dscores[b, h, j]
        row_lse, row_dot = lse[b, h, t0:t0 + R], rowdot[b, h, t0:t0 + R]
        for i in range(R):
            w = fast_exp(row[i] * scale - row_lse[i])
            w = w if j <= i + diagonal else zero
            row[i] = w
            drow[i] = w * (drow[i] - row_dot[i]) * scale


GELU_SCALE = math.sqrt(2.0 / math.pi)


@njit(cache=True, inline="always")
def fast_tanh(y):
    # tanh(y) = 1 - 2 / (exp(2y) + 1): an exponential vectorises (fast_exp) where C's tanhf does not, and this is as
    # accurate to the float32 rounding of GELU's output (exp(2y) = inf for large y gives 1, as it should). The
    # float32 constants keep a float32 y in float32 (an integer constant would make it float64); float64 stays.
    one, two = np.float32(1), np.float32(2)
    return one - two / (fast_exp(two * y) + one)


@kernel
def gelu_forward(out, inp):
    # out, inp (N,4C): GELU with the tanh approximation, as GPT-2 uses. The constants take the input's dtype,
    # so that float32 is computed in float32
    N, K = inp.shape
    one, half = inp.dtype.type(1), inp.dtype.type(0.5)
    scale, cube = inp.dtype.type(GELU_SCALE), inp.dtype.type(0.044715)
    for n in prange(N):
        for k in range(K):
            x = inp[n, k]
            out[n, k] = half * x * (one + fast_tanh(scale * (x + cube * x * x * x)))


@kernel
def gelu_backward(dinp, inp, dout):
    # writes dinp (N,4C) = dout * gelu'(inp); dinp may be dout itself
    N, K = inp.shape
    one, half, three = inp.dtype.type(1), inp.dtype.type(0.5), inp.dtype.type(3)
    scale, cube = inp.dtype.type(GELU_SCALE), inp.dtype.type(0.044715)
    for n in prange(N):
        for k in range(K):
            x = inp[n, k]
            tanh_out = fast_tanh(scale * (x + cube * x * x * x))
            sech2 = one - tanh_out * tanh_out
            local_grad = half * (one + tanh_out) + half * x * sech2 * scale * (one + three * cube * x * x)
            dinp[n, k] = dout[n, k] * local_grad


@kernel
def residual_forward(out, residual):
    # out (N,C) += residual (N,C): a block's output is added back onto its input. The backward pass of a sum
    # hands the same gradient to both inputs, so the model keeps one gradient buffer for the residual stream and
    # needs no residual_backward kernel.
    N, C = out.shape
    for n in prange(N):
        for c in range(C):
            out[n, c] += residual[n, c]


LANES = 16  # reductions along a row keep 16 partial results: one 64-byte SIMD register of float32


@kernel
def crossentropy_forward(losses, logsumexp, logits, targets, V):
    # losses, logsumexp (N,); logits (N,Vp); targets (N,). Only the first V of the Vp columns are real tokens:
    # loss = -log softmax(logits[:V])[target] = logsumexp(logits[:V]) - logits[target]. The max and the sum run in
    # LANES partial results, combined at the end: one running sum would wait for each addition before the next
    # (reordering them is not allowed, see above), while LANES independent ones fill a SIMD register.
    N = logits.shape[0]
    full = V - V % LANES
    for n in prange(N):
        row = logits[n]
        maxes = np.full(LANES, -np.inf, logits.dtype)
        for i0 in range(0, full, LANES):
            for lane in range(LANES):
                maxes[lane] = max(maxes[lane], row[i0 + lane])
        maxval = maxes.max()
        for i in range(full, V):
            maxval = max(maxval, row[i])
        sums = np.zeros(LANES, logits.dtype)
        for i0 in range(0, full, LANES):
            for lane in range(LANES):
                sums[lane] += fast_exp(row[i0 + lane] - maxval)
        expsum = logits.dtype.type(0)
        for lane in range(LANES):
            expsum += sums[lane]
        for i in range(full, V):
            expsum += fast_exp(row[i] - maxval)
        logsumexp[n] = maxval + math.log(expsum)
        losses[n] = logsumexp[n] - row[targets[n]]


@kernel
def crossentropy_backward(dlogits, logits, logsumexp, targets, dloss, V):
    # writes dlogits (N,Vp) = (softmax(logits) - onehot(target)) * dloss, zero in the padded columns; dlogits may
    # be logits itself. dloss is the gradient of the loss we minimise with respect to each row's loss: 1/N for a
    # mean over N rows.
    N, Vp = logits.shape
    dloss = logits.dtype.type(dloss)
    for n in prange(N):
        for i in range(V):
            dlogits[n, i] = fast_exp(logits[n, i] - logsumexp[n]) * dloss
        dlogits[n, targets[n]] -= dloss
        for i in range(V, Vp):
            dlogits[n, i] = 0


# ----------------------------------------------------------------------------------------------------------------
# 2. The model
#
# GPT-2: token and position embeddings, then L blocks of (layernorm, causal self-attention, residual, layernorm,
# MLP with GELU, residual), a final layernorm, and logits over the vocabulary from the token embedding matrix
# itself (weight tying). The vocabulary is padded from V to Vp rows (50257 to 50304 for GPT-2), which llm.c
# does for faster kernels; the padded rows stay zero and the loss never looks at them.

@dataclasses.dataclass(frozen=True)
class GPT2Config:
    max_seq_len: int        # maxT
    vocab_size: int         # V
    padded_vocab_size: int  # Vp
    num_layers: int         # L
    num_heads: int          # NH
    channels: int           # C


def parameter_shapes(config):
    """The 16 parameter tensors, in llm.c's order, which is also their order in a checkpoint."""
    Vp, C, L, maxT = config.padded_vocab_size, config.channels, config.num_layers, config.max_seq_len
    return {
        "wte": (Vp, C), "wpe": (maxT, C),
        "ln1w": (L, C), "ln1b": (L, C), "qkvw": (L, 3 * C, C), "qkvb": (L, 3 * C),
        "attprojw": (L, C, C), "attprojb": (L, C), "ln2w": (L, C), "ln2b": (L, C),
        "fcw": (L, 4 * C, C), "fcb": (L, 4 * C), "fcprojw": (L, C, 4 * C), "fcprojb": (L, C),
        "lnfw": (C,), "lnfb": (C,),
    }


def activation_shapes(config, B, T, training, pos=0):
    """Everything the forward pass keeps for a batch of B sequences of T positions starting at `pos`, and when
    training, the scratch the backward pass needs. The backward pass needs every layer's activations; a model that
    only runs forward (generating, evaluating) needs one layer's at a time, so there every layer reuses the same
    buffers (Ls = 1)."""
    C, L, NH, Vp = config.channels, config.num_layers, config.num_heads, config.padded_vocab_size
    Ls = L if training else 1
    shapes = {
        "encoded": (B, T, C),                                              # wte[token] + wpe[pos + t]
        "ln1": (Ls, B, T, C), "ln1_mean": (Ls, B, T), "ln1_rstd": (Ls, B, T),
        "qkv": (Ls, B, T, 3 * C), "atty": (Ls, B, T, C),                 # atty: attention's output
        "att_lse": (Ls, B, NH, T),                                        # each query's log-sum-exp of scores
        "residual2": (Ls, B, T, C),                                        # after the attention's residual
        "ln2": (Ls, B, T, C), "ln2_mean": (Ls, B, T), "ln2_rstd": (Ls, B, T),
        "fch": (Ls, B, T, 4 * C),
        "fch_gelu": (B, T, 4 * C),  # one layer's: the backward pass computes it again, to save memory
        "residual3": (Ls, B, T, C),                                        # after the MLP's residual: the output
        "lnf": (B, T, C), "lnf_mean": (B, T), "lnf_rstd": (B, T),
        "logits": (B, T, Vp),                                              # the backward pass turns them into dlogits
        "logsumexp": (B, T), "losses": (B, T),
        # attention's scratch (see attention_forward): a block of scores, and each query's running max and sum
        "att_scores": (B, NH, min(pos + T, LARGE_BLOCK), min(T, SMALL_BLOCK)),
        "att_max": (B, NH, min(T, SMALL_BLOCK)), "att_sum": (B, NH, min(T, SMALL_BLOCK)), "att_partial": (B, T, C),
    }
    if training:  # the gradients of the residual stream and of the tensors each layer's backward pass goes through
        shapes.update({"dresidual": (B, T, C), "dln": (B, T, C), "datty": (B, T, C), "dqkv": (B, T, 3 * C),
                       "datt_scores": (B, NH, min(T, SMALL_BLOCK), min(T, LARGE_BLOCK)), "att_rowdot": (B, NH, T),
                       "dfch": (B, T, 4 * C),
                       "dweight_block": (4 * C * C,)})                     # see matmul_backward
    return shapes


def num_parameters(config):
    return sum(math.prod(shape) for shape in parameter_shapes(config).values())


def zeros(size, dtype):
    """A flat buffer of zeros, written now, by all the cores. (np.zeros maps pages that the first write to each then
    faults in: inside the first training step's kernels, where GPT-2 124M's 2 GB of them made the step slower.)"""
    memory = np.empty(size, dtype=dtype)
    fill_zeros(memory)
    return memory


@kernel
def fill_zeros(x):
    # x (n,) = 0
    for i in prange(x.shape[0]):
        x[i] = 0


def point_tensors(memory, shapes):
    """Views a flat buffer as named tensors of the given shapes, one after another (llm.c's malloc_and_point)."""
    tensors, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        tensors[name] = memory[offset:offset + size].reshape(shape)
        offset += size
    return SimpleNamespace(**tensors)


Capacity = namedtuple("Capacity", "B T context")  # what a model is allocated for: see GPT2.allocate


def rows(x):
    """(..., K) as (N, K): the kernels see a batch of B*T positions as N rows."""
    return x.reshape(-1, x.shape[-1])


class GPT2:
    """The parameters, in one flat buffer; allocate() adds the activations, and the gradients when training."""

    def __init__(self, config, params_memory):
        self.config = config
        self.shapes = parameter_shapes(config)
        self.num_parameters = num_parameters(config)
        assert params_memory.shape == (self.num_parameters,)
        self.dtype = params_memory.dtype
        self.params_memory = params_memory
        self.params = point_tensors(self.params_memory, self.shapes)
        self.grads_memory = self.acts_memory = None

    def allocate(self, B, T, training=False, context=None):
        """Allocates the activations for forward passes of up to B sequences of up to T positions; with training,
        also the gradients (same layout as the parameters) and the backward pass's scratch. Without, the model only
        runs forward, as generating text or evaluating does, and keeps a KV cache instead: each layer's keys and
        values of the first `context` positions (T unless given) of every sequence, (L, B, context, 2C), which
        lets a forward pass continue a sequence from `pos`."""
        if training and context:
            raise ValueError("a model allocated for training keeps no KV cache, and so has no context to size")
        context = context or T
        if context < T:
            raise ValueError(f"a context of {context} positions is shorter than T={T}")
        for what, length in ((f"sequence length T={T}", T), (f"context of {context} positions", context)):
            if length > self.config.max_seq_len:
                raise GPT2Error(f"{what} is longer than the model's maximum {self.config.max_seq_len}")
        shapes = activation_shapes(self.config, B, T, training, pos=0 if training else context - T)
        sizes = {name: (math.prod(shape),) for name, shape in shapes.items()}
        self.acts_memory = zeros(sum(size for size, in sizes.values()), self.dtype)
        self.act_regions = point_tensors(self.acts_memory, sizes)  # one flat region per activation
        self.capacity, self.training = Capacity(B, T, T if training else context), training
        C, L = self.config.channels, self.config.num_layers
        self.kv_cache = None if training else zeros(L * B * context * 2 * C, self.dtype).reshape(L, B, context, 2 * C)
        if training and self.grads_memory is None:
            self.grads_memory = zeros(self.num_parameters, self.dtype)
            self.grads = point_tensors(self.grads_memory, self.shapes)
            self.grads_are_zero = True

    def activations(self, B, T, pos=0):
        """Views of the activation buffer for a batch of (B, T) positions from `pos`, which must fit in what
        allocate() made room for: each activation is the start of its region."""
        return SimpleNamespace(**{name: getattr(self.act_regions, name)[:math.prod(shape)].reshape(shape)
                                  for name, shape in activation_shapes(self.config, B, T, self.training, pos).items()})

    def check_tokens(self, tokens, what):
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            bad = tokens[(tokens < 0) | (tokens >= self.config.vocab_size)][0]
            raise GPT2Error(f"{what} token id {bad} is out of range for vocab size {self.config.vocab_size}")

    def forward(self, inputs, targets=None, pos=0):
        """inputs, targets (B,T) int32. Computes the logits, and with targets the mean loss, which it returns.
        With pos > 0 (a model allocated without training, which keeps a KV cache), the inputs are positions pos to
        pos+T-1 of sequences whose first pos positions an earlier call has run."""
        if self.acts_memory is None:
            raise RuntimeError("call allocate(B, T) before forward")
        B, T = inputs.shape
        if B > self.capacity.B or T > self.capacity.T or pos + T > self.capacity.context:
            raise ValueError(f"batch ({B}, {pos} + {T}) does not fit the (B, T, context) {tuple(self.capacity)} "
                             "allocated")
        if pos and self.training:
            raise RuntimeError("forward from pos > 0 needs the KV cache of a model allocated without training")
        self.check_tokens(inputs, "input")
        cfg, p, a = self.config, self.params, self.activations(B, T, pos)
        encoder_forward(a.encoded, inputs, p.wte, p.wpe[pos:])
        residual = a.encoded
        for l in range(cfg.num_layers):
            i = l if self.training else 0  # the layer's activations; without training, one set serves every layer
            kv_cache = None if self.training else self.kv_cache[l, :B]
            # attention: residual2 = residual + attproj(attention(qkv(layernorm(residual))))
            layernorm_forward(rows(a.ln1[i]), a.ln1_mean[i].ravel(), a.ln1_rstd[i].ravel(), rows(residual),
                              p.ln1w[l], p.ln1b[l])
            matmul_forward(rows(a.qkv[i]), rows(a.ln1[i]), p.qkvw[l], p.qkvb[l])
            attention_forward(a.atty[i], a.att_lse[i], a.qkv[i], cfg.num_heads, a.att_scores, a.att_max, a.att_sum,
                              a.att_partial, kv_cache, pos)
            matmul_forward(rows(a.residual2[i]), rows(a.atty[i]), p.attprojw[l], p.attprojb[l])
            residual_forward(rows(a.residual2[i]), rows(residual))
            # MLP: residual3 = residual2 + fcproj(gelu(fc(layernorm(residual2))))
            layernorm_forward(rows(a.ln2[i]), a.ln2_mean[i].ravel(), a.ln2_rstd[i].ravel(), rows(a.residual2[i]),
                              p.ln2w[l], p.ln2b[l])
            matmul_forward(rows(a.fch[i]), rows(a.ln2[i]), p.fcw[l], p.fcb[l])
            gelu_forward(rows(a.fch_gelu), rows(a.fch[i]))
            matmul_forward(rows(a.residual3[i]), rows(a.fch_gelu), p.fcprojw[l], p.fcprojb[l])
            residual_forward(rows(a.residual3[i]), rows(a.residual2[i]))
            residual = a.residual3[i]  # the next layer reads it before its MLP overwrites residual3[i]
        layernorm_forward(rows(a.lnf), a.lnf_mean.ravel(), a.lnf_rstd.ravel(), rows(residual), p.lnfw, p.lnfb)
        matmul_forward(rows(a.logits), rows(a.lnf), p.wte, None)  # weight tying: the classifier is wte
        self.inputs, self.targets = inputs, targets
        if targets is None:
            return None
        self.check_tokens(targets, "target")
        crossentropy_forward(a.losses.ravel(), a.logsumexp.ravel(), rows(a.logits), targets.ravel(), cfg.vocab_size)
        return float(a.losses.mean())

    def zero_grad(self):
        self.grads_memory.fill(0)
        self.grads_are_zero = True  # the next backward pass may write weight gradients instead of adding them

    def backward(self, loss_scale=1.0):
        """Accumulates into the gradients d(loss_scale * mean loss)/d(parameters) for the last forward pass.
        Gradient accumulation over k micro-batches passes loss_scale = 1/k."""
        if not self.training or self.targets is None:
            raise RuntimeError("backward needs a model allocated for training and a forward pass with targets")
        cfg, p, g = self.config, self.params, self.grads
        B, T = self.inputs.shape
        a = self.activations(B, T)
        accumulate = not self.grads_are_zero  # see matmul_backward
        dlogits = rows(a.logits)  # dlogits overwrite the logits in place
        crossentropy_backward(dlogits, rows(a.logits), a.logsumexp.ravel(), self.targets.ravel(),
                              loss_scale / (B * T), cfg.vocab_size)
        dresidual = rows(a.dresidual)  # the gradient of the residual stream, walked back through the layers
        dresidual.fill(0)
        dln, datty, dfch = rows(a.dln), rows(a.datty), rows(a.dfch)
        matmul_backward(dln, g.wte, None, dlogits, rows(a.lnf), p.wte, a.dweight_block, accumulate)
        layernorm_backward(dresidual, g.lnfw, g.lnfb, dln, rows(a.residual3[-1]), p.lnfw,
                           a.lnf_mean.ravel(), a.lnf_rstd.ravel())
        for l in reversed(range(cfg.num_layers)):
            residual = a.encoded if l == 0 else a.residual3[l - 1]
            # MLP, backwards; dresidual holds d(loss)/d(residual3[l]), which is also d(loss)/d(fcproj output)
            gelu_forward(rows(a.fch_gelu), rows(a.fch[l]))  # recomputed rather than kept for every layer
            matmul_backward(dfch, g.fcprojw[l], g.fcprojb[l], dresidual, rows(a.fch_gelu), p.fcprojw[l],
                            a.dweight_block, accumulate)
            gelu_backward(dfch, rows(a.fch[l]), dfch)
            matmul_backward(dln, g.fcw[l], g.fcb[l], dfch, rows(a.ln2[l]), p.fcw[l], a.dweight_block, accumulate)
            layernorm_backward(dresidual, g.ln2w[l], g.ln2b[l], dln, rows(a.residual2[l]), p.ln2w[l],
                               a.ln2_mean[l].ravel(), a.ln2_rstd[l].ravel())
            # attention, backwards; dresidual now holds d(loss)/d(residual2[l])
            matmul_backward(datty, g.attprojw[l], g.attprojb[l], dresidual, rows(a.atty[l]), p.attprojw[l],
                            a.dweight_block, accumulate)
            attention_backward(a.dqkv, a.datty, a.qkv[l], a.atty[l], a.att_lse[l], cfg.num_heads, a.att_scores,
                               a.datt_scores, a.att_rowdot, a.att_partial)
            matmul_backward(dln, g.qkvw[l], g.qkvb[l], rows(a.dqkv), rows(a.ln1[l]), p.qkvw[l], a.dweight_block,
                            accumulate)
            layernorm_backward(dresidual, g.ln1w[l], g.ln1b[l], dln, rows(residual), p.ln1w[l],
                               a.ln1_mean[l].ravel(), a.ln1_rstd[l].ravel())
        encoder_backward(g.wte, g.wpe, a.dresidual, self.inputs)
        self.grads_are_zero = False


# llm.c's model file (a checkpoint's model_%08d.bin, or llm.c's gpt2_124M.bin): header [2] maxT [3] V [4] L [5] NH
# [6] C [7] Vp, then the 16 tensors. Version 3 stores float32, version 5 bfloat16 (the top 16 bits of a float32),
# which we widen on load.

def checked_config(source, **sizes):
    """The GPT2Config of these sizes; refuses a model shape the kernels cannot run, naming where it came from."""
    c = GPT2Config(**sizes)
    if min(vars(c).values()) < 1 or c.padded_vocab_size < c.vocab_size:
        raise GPT2Error(f"{source}: not a valid model: {vars(c)}")
    if c.channels % c.num_heads:
        raise GPT2Error(f"{source}: {c.channels} channels do not split into {c.num_heads} heads")
    return c


def read_model_header(path):
    """The model's shape, and the header it came from."""
    header = read_header(path, MODEL_MAGIC, (3, 5))
    return checked_config(path, max_seq_len=int(header[2]), vocab_size=int(header[3]), num_layers=int(header[4]),
                          num_heads=int(header[5]), channels=int(header[6]), padded_vocab_size=int(header[7])), header


def read_model_file(path, dtype=np.float32):
    config, header = read_model_header(path)
    stored = np.dtype("<f4") if header[1] == 3 else np.dtype("<u2")
    check_file_size(path, HEADER_BYTES + num_parameters(config) * stored.itemsize)
    data = np.fromfile(path, dtype=stored, offset=HEADER_BYTES)
    if header[1] == 5:
        data = (data.astype(np.uint32) << 16).view(np.float32)
    return GPT2(config, data.astype(dtype))


def write_model_file(path, model):
    c = model.config
    header = new_header(MODEL_MAGIC, 3, c.max_seq_len, c.vocab_size, c.num_layers, c.num_heads, c.channels,
                        c.padded_vocab_size)
    write_atomically(path, [header, model.params_memory.astype("<f4")])


# A model from scratch: GPT-2 or GPT-3 shapes by depth or channels (llm.c's -e d12, gpt2:d24, gpt3:c768, whose
# sizes llmc/cli.py's descriptor_sizes gives), with llm.c's initialisation: normal weights of std 0.02, the
# projections into the residual stream scaled down by 1/sqrt(2L), biases 0 and layernorm weights 1, all drawn from
# llm.c's Mersenne Twister seeded 42.

def config_from_descriptor(descriptor):
    return checked_config(descriptor, **cli.descriptor_sizes(descriptor))


def build_from_random(config):
    """A model of this shape, initialised as llm.c's gpt2_build_from_random."""
    model = GPT2(config, np.zeros(num_parameters(config), dtype=np.float32))
    p, L, rng = model.params, config.num_layers, MersenneTwister(42)
    residual_scale = np.float32(1.0) / np.sqrt(np.float32(2.0 * L))  # float32 arithmetic, as in llm.c
    for name in ("ln1w", "ln2w", "lnfw"):
        getattr(p, name)[...] = 1.0
    rng.fill_normal(p.wte[:config.vocab_size].reshape(-1), 0.02)  # the padded rows stay zero
    rng.fill_normal(p.wpe.reshape(-1), 0.02)
    for l in range(L):
        for name, std in (("qkvw", 0.02), ("attprojw", np.float32(0.02) * residual_scale), ("fcw", 0.02),
                          ("fcprojw", np.float32(0.02) * residual_scale)):
            rng.fill_normal(getattr(p, name)[l].reshape(-1), std)
    return model


# Every model source -e names: an llm.c model file, a Hugging Face GPT-2 (llmc/hf.py), or a shape.

def config_from_hf(folder):
    sizes, path = hf.read_config(folder)
    return checked_config(path, **sizes)


def gpt2_config(source):
    """The shape of the model -e names, without reading its weights."""
    kind = cli.model_kind(source)
    if kind == "llm.c":
        return read_model_header(source)[0]
    return config_from_hf(hf.folder(source)) if kind == "hf" else config_from_descriptor(source)


def load_gpt2(source):
    """The model -e names: an llm.c model file (.bin), a Hugging Face GPT-2 (a folder or a hub name), or a shape
    (d12, gpt2:d12, gpt3:c768) initialised as llm.c does. Parameters only: allocate() adds what running it needs."""
    kind = cli.model_kind(source)
    if kind == "llm.c":
        return read_model_file(source)
    if kind == "shape":
        return build_from_random(config_from_descriptor(source))
    folder = hf.folder(source)
    config, weights_file = config_from_hf(folder), hf.weights_file(folder)
    model = GPT2(config, zeros(num_parameters(config), np.float32))
    hf.read_weights(weights_file, config, model.params)
    return model


# ----------------------------------------------------------------------------------------------------------------
# 3. The optimizer: AdamW, as llm.c's gpt2_update
#
# m and v are running averages of the gradient and of its square; their bias-corrected ratio sets each
# parameter's step. Weight decay is decoupled (it shrinks the parameter directly) and, as in llm.c's full
# trainer, applies only to the embeddings and the weight matrices (one 2-D matrix per layer; stored here as
# one (L, out, in) tensor), not to the biases or layernorms. m and v exist only in a model that trains: they are
# the optimizer's, not the model's.

@kernel
def adamw_kernel(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, grad_scale, beta1_correction,
                 beta2_correction):
    # params, grads, m, v (P,): one parameter tensor, flat; the scalars have the parameters' dtype
    one = params.dtype.type(1)
    for i in prange(params.shape[0]):
        grad = grads[i] * grad_scale
        m[i] = beta1 * m[i] + (one - beta1) * grad
        v[i] = beta2 * v[i] + (one - beta2) * grad * grad
        m_hat = m[i] / beta1_correction
        v_hat = v[i] / beta2_correction
        params[i] -= lr * (m_hat / (math.sqrt(v_hat) + eps) + weight_decay * params[i])


DECAYED = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")  # the matrices; not the biases or layernorms


class AdamW:
    def __init__(self, model, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, shard=None):
        """Updates the parameters `shard` = (start, stop) of the flat buffer (default: all of them), and keeps m and
        v for those only (a slice: ZeRO-1, llmc/mpi.py)."""
        self.model, self.beta1, self.beta2, self.eps, self.weight_decay = model, beta1, beta2, eps, weight_decay
        self.start, self.stop = shard or (0, model.num_parameters)
        self.m_memory = zeros(self.stop - self.start, model.dtype)  # the parameters' layout, from start to stop
        self.v_memory = zeros(self.stop - self.start, model.dtype)
        self.grads = model.grads_memory[self.start:self.stop]

    def update(self, lr, t, grad_scale=1.0):
        """One AdamW step; t counts steps from 1. The gradients are multiplied by grad_scale first (for
        clipping). The arithmetic is in the parameters' dtype, float32 as in llm.c; the bias corrections
        1 - beta**t are computed in double first, as PyTorch does, and then rounded."""
        model, f, start = self.model, self.model.dtype.type, self.start
        offset = 0
        for name, shape in model.shapes.items():  # each tensor's part in start..stop
            first, last = max(offset, start), min(offset + math.prod(shape), self.stop)
            if first < last:
                adamw_kernel(model.params_memory[first:last], self.grads[first - start:last - start],
                             self.m_memory[first - start:last - start], self.v_memory[first - start:last - start],
                             f(lr), f(self.beta1), f(self.beta2), f(self.eps),
                             f(self.weight_decay if name in DECAYED else 0.0), f(grad_scale),
                             f(1.0 - self.beta1 ** t), f(1.0 - self.beta2 ** t))
            offset += math.prod(shape)


@kernel
def sum_of_squares(x):
    # x (P,) -> sum of x[i]^2 in float64. Each block of 65536 values has its own partial sum, added up in order
    # afterwards: a plain parallel reduction would add the threads' partial sums in whatever order the threads
    # finish, and the last bits of the norm, and so of a clipped update, would change from run to run.
    block = 65536
    partial = np.zeros((x.shape[0] + block - 1) // block)
    for j in prange(partial.shape[0]):
        total = 0.0
        for i in range(j * block, min(x.shape[0], (j + 1) * block)):
            total += x[i] * x[i]
        partial[j] = total
    return partial.sum()


def gradient_norm(grads, processes=ONE_PROCESS):
    """The L2 norm of all the gradients together (grads: the flat buffer), which clipping compares to its
    threshold. With ZeRO-1, grads is this process's slice, and the slices' sums of squares add up over the
    processes."""
    return math.sqrt(processes.sum_over_slices(sum_of_squares(grads)))


# Learning rate schedules, as llm.c's llmc/schedulers.h: a linear warmup over the first `warmup` steps, then "cosine" or
# "linear" decay to lr * final_frac at the last step, "wsd" (warmup, stable, decay) holding lr until 80% of the
# steps and then decaying as 1 - sqrt, or "constant".

def learning_rate(schedule, step, lr, warmup, final_frac, num_steps):
    if schedule == "constant":
        return lr
    if step < warmup:
        return lr * (step + 1) / warmup
    min_lr = lr * final_frac
    if schedule == "wsd":
        decay_start = int(0.8 * num_steps)
        if step < decay_start:
            return lr
        return min_lr + (1.0 - math.sqrt((step - decay_start) / (num_steps - decay_start))) * (lr - min_lr)
    decay = (step - warmup) / max(num_steps - warmup, 1)
    if schedule == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * decay)) * (lr - min_lr)
    return lr - decay * (lr - min_lr)  # linear


# ----------------------------------------------------------------------------------------------------------------
# 4. The data loader: llm.c's token shards, in llm.c's order
#
# A shard is a header ([2] = number of tokens) and then the tokens as uint16. The loader reads batches of B*T+1
# consecutive tokens: inputs are the first B*T, targets the same shifted by one. It walks the shards matched by a
# glob pattern in sorted order, and each shard in steps of B*T tokens. With shuffling on (llm.c shuffles the
# training set, not the validation set), each epoch visits the shards in a random order and each shard's batches
# in a random order, drawn from a Mersenne Twister seeded 42, exactly as llm.c's llmc/dataloader.h does, so the same
# files give the same batches in the same order as llm.c.

def read_shard_header(path):
    """Checks a token shard's header and size; returns its number of tokens."""
    header = read_header(path, SHARD_MAGIC, (1,))
    num_tokens = int(header[2])
    check_file_size(path, HEADER_BYTES + 2 * num_tokens)
    return num_tokens


class DataLoader:
    def __init__(self, pattern, B, T, vocab_size, shuffle=False, process_rank=0, num_processes=1):
        self.files = sorted(glob.glob(pattern))
        if not self.files:
            raise GPT2Error(f"no token shards match {pattern!r}")
        self.B, self.T, self.vocab_size, self.shuffle = B, T, vocab_size, shuffle
        self.tokens_per_sample = num_processes * B * T   # one step of all processes together
        self.local_offset = process_rank * B * T         # where this process's part of a sample starts
        self.num_tokens = self.num_batches = 0  # in all the shards
        for path in self.files:
            n = read_shard_header(path)
            if n < self.tokens_per_sample + 1:
                raise GPT2Error(f"{path}: {n} tokens, fewer than B*T+1 = {self.tokens_per_sample + 1}")
            self.num_tokens += n
            self.num_batches += (n - 1) // self.tokens_per_sample
        if shuffle:  # the same order on every process: llm.c seeds 42 + rank, and its ranks can read the same
            self.rng = MersenneTwister(42)  # batches twice and miss others (its issue #792)
            self.shard_order = np.arange(len(self.files))
        self.reset()

    def open_shard(self, index):
        """Maps the index-th shard of this epoch's order into memory."""
        path = self.files[self.shard_order[index] if self.shuffle else index]
        self.shard = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES)
        if self.shard.max() >= self.vocab_size:
            position = int(np.argmax(self.shard >= self.vocab_size))
            raise GPT2Error(f"{path}: token id {self.shard[position]} at token {position} is out of range for "
                            f"vocab size {self.vocab_size}")
        # the last token of a shard is only ever a target, hence the -1
        self.shard_num_samples = (self.shard.size - 1) // self.tokens_per_sample

    def start_shard(self, index):
        self.shard_index, self.sample_index = index, 0
        self.open_shard(index)
        if self.shuffle:
            self.sample_order = self.rng.permutation(self.shard_num_samples)

    def reset(self):
        """Back to the start of the first shard; with shuffling, a new epoch in a new order."""
        if self.shuffle:
            self.shard_order = self.shard_order[self.rng.permutation(len(self.files))]
        self.start_shard(0)

    def next_batch(self):
        """Returns (inputs, targets), each (B,T) int32."""
        if self.sample_index >= self.shard_num_samples:  # this shard is done: the next one, or a new epoch
            if self.shard_index == len(self.files) - 1:
                self.reset()
            else:
                self.start_shard(self.shard_index + 1)
        sample = self.sample_order[self.sample_index] if self.shuffle else self.sample_index
        start = sample * self.tokens_per_sample + self.local_offset
        buffer = np.array(self.shard[start:start + self.B * self.T + 1], dtype=np.int32)
        self.sample_index += 1
        return buffer[:-1].reshape(self.B, self.T), buffer[1:].reshape(self.B, self.T)

    def resume(self, shard_index, sample_index, shard_order=None, sample_order=None, rng_state=None):
        """Continues from a saved position: llm.c's dataloader_resume, and with shuffling the saved orders."""
        if self.shuffle:
            self.shard_order, self.sample_order = shard_order, sample_order
            self.rng.bit_generator.state = rng_state
        self.shard_index, self.sample_index = shard_index, sample_index
        self.open_shard(shard_index)


# ----------------------------------------------------------------------------------------------------------------
# 5. Generating text
#
# A model continues a text one token at a time: it gives the probabilities of the next token, one is drawn, and
# it becomes the input of the next position. Recomputing the whole sequence for each new token would repeat the
# same work over and over: position t's keys and values never change once computed, since a position only
# attends to those before it. So a model allocated without training keeps every layer's keys and values in its
# KV cache (see attention_forward): the prompt runs once, all its positions together, which fills the cache; then
# each new token runs alone, one position, attending to the cached keys and values. A step then costs about one
# read of the weights (every matrix is multiplied by a single row), and memory is the parameters, the cache and
# one layer's activations: no gradients, no optimizer state.
#
# The draw is llm.c's: softmax over the V real tokens, and the first token where the running sum of the
# probabilities passes a uniform "coin" from the xorshift generator, seeded 1337 in the trainer. A temperature
# divides the logits first (below 1 sharpens the distribution, 0 always takes the most likely token), and top-k
# and top-p (nucleus) sampling draw only from the most likely tokens.

@njit(cache=True)
def sample_token(logits, V, coin, temperature=1.0, top_k=0, top_p=1.0):
    # logits (Vp,) -> a token id below V; coin is uniform in [0, 1). In float32, as llm.c's softmax and
    # sample_mult: with the defaults, exactly those
    if np.float32(temperature) == 0:
        return np.argmax(logits[:V])
    maxval = logits[:V].max()
    probs = np.exp((logits[:V] - maxval) / np.float32(temperature))
    probs /= probs.sum()
    if 0 < top_k < V or top_p < 1:
        probs = keep_most_likely(probs, top_k, top_p)
    cdf = np.float32(0.0)
    for i in range(V):
        cdf += probs[i]
        if coin < cdf:
            return i
    for i in range(V - 1, -1, -1):  # the sum fell short of the coin by a rounding: the last token that may come
        if probs[i] > 0:
            return i
    return V - 1


@njit(cache=True)
def keep_most_likely(probs, top_k, top_p):
    # probs (V,) -> the probabilities of the top_k most likely tokens (all if 0) and, of those, of the fewest most
    # likely whose probabilities add up to top_p or more (of the top_k's sum), rescaled to sum to 1; the others 0.
    # Equal probabilities are taken in the order of their token ids. Sorting all V tokens for every draw would
    # cost more than a GPT-2 124M forward pass, so only candidates are sorted: the top_k found by a partition,
    # or, for top-p alone, the tokens above the largest threshold whose tokens reach top_p of the sum.
    V = len(probs)
    k = V if top_k <= 0 else min(top_k, V)
    candidates = np.arange(V)
    if k < V:
        candidates = np.nonzero(probs >= np.partition(probs, V - k)[V - k])[0]  # the k-th largest, and above
    elif top_p < 1:
        for threshold in (1e-3, 1e-5, 1e-7):
            above = np.nonzero(probs >= threshold)[0]
            if probs[above].sum() >= top_p * probs.sum():
                candidates = above
                break
    order = candidates[np.argsort(-probs[candidates], kind="mergesort")]  # most likely first
    keep = min(k, len(order))
    if top_p < 1:
        target = top_p * (probs[order[:k]].sum() if k < V else probs.sum())
        running = np.float32(0.0)
        for n in range(keep):
            running += probs[order[n]]
            if running >= target:
                keep = n + 1
                break
    kept = np.zeros_like(probs)
    kept[order[:keep]] = probs[order[:keep]]
    return kept / kept.sum()


def generate(model, prompt, num_tokens, rng, temperature=1.0, top_k=0, top_p=1.0):
    """Yields num_tokens new tokens, one at a time, drawn after `prompt` (a list of token ids) with the coins of
    rng (XorShift). The model is allocated without training, for B=1, T >= len(prompt) and a context of at least
    len(prompt) + num_tokens - 1 positions (the last token drawn never runs through it)."""
    T, context = model.capacity.T, model.capacity.context
    if model.training or not 1 <= len(prompt) <= T or len(prompt) + num_tokens - 1 > context:
        raise ValueError(f"a prompt of {len(prompt)} tokens and {num_tokens} new tokens do not fit the "
                         f"(B, T, context) {tuple(model.capacity)} of a model allocated without training")
    V, top_k = model.config.vocab_size, min(int(top_k), model.config.vocab_size)
    model.forward(np.array([prompt], dtype=np.int32))  # the whole prompt at once
    logits = model.activations(1, len(prompt)).logits[0, -1]
    for n in range(num_tokens):
        token = int(sample_token(logits, V, rng.random_f32(), float(temperature), top_k, float(top_p)))
        yield token
        if n + 1 < num_tokens:
            pos = len(prompt) + n  # the new token's position: it attends to the cache's first pos positions
            with one_numba_thread():
                model.forward(np.array([[token]], dtype=np.int32), pos=pos)
            logits = model.activations(1, 1, pos).logits[0, 0]


@contextlib.contextmanager
def one_numba_thread():
    """One position is too little work to share: waking numba's other threads for each small kernel cost more
    than it saved. Numba's kernels then keep to the calling thread; the matrix products still use all of BLAS's."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------------
# 6. Training
#
# One optimizer step is llm.c's loop body: forward and backward passes over grad_accum_steps micro-batches, their
# gradients adding up, the gradient norm (and clipping), and AdamW. With many processes (mpirun, llmc/mpi.py), each
# runs it on its own rows, and the lines marked "processes" combine their work.

def train_step(model, optimizer, next_batch, grad_accum_steps, lr, step, grad_clip=0.0, processes=ONE_PROCESS):
    """One optimizer step on batches from next_batch(). Returns the mean loss and the gradient norm."""
    model.zero_grad()
    loss = 0.0
    for _ in range(grad_accum_steps):
        loss += model.forward(*next_batch()) / grad_accum_steps
        model.backward(loss_scale=1.0 / (grad_accum_steps * processes.count))  # processes: the mean of all rows
    loss = processes.average(loss)  # processes
    if not math.isfinite(loss):
        raise GPT2Error(f"the training loss is {loss} at step {step}: the run diverged (lower -l?)", every_process=True)
    processes.sum_gradients(model, optimizer)  # processes: one all-reduce (or reduce-scatter) per step
    norm = gradient_norm(optimizer.grads, processes)  # processes: with ZeRO-1, the slices' sums of squares added up
    if not math.isfinite(norm):
        raise GPT2Error(f"the gradient norm is {norm} at step {step}: the run diverged (lower -l?)", every_process=True)
    grad_scale = grad_clip / norm if 0 < grad_clip < norm else 1.0
    optimizer.update(lr, step + 1, grad_scale)
    processes.gather_parameters(model)  # processes: with ZeRO-1, every process's updated slice to every process
    return loss, norm


def validation_loss(model, loader, max_batches, step, processes=ONE_PROCESS):
    loader.reset()
    num_batches = min(max_batches, loader.num_batches)
    loss = processes.average(sum(model.forward(*loader.next_batch()) for _ in range(num_batches)) / max(num_batches, 1))
    if not math.isfinite(loss):
        raise GPT2Error(f"the validation loss is {loss} at step {step}: the run diverged", every_process=True)
    return loss


def print_sample(sampler, tokenizer, gen_tokens, sample_rng):
    """llm.c's sample: gen_tokens tokens from EOT, printed as they come."""
    pieces, eot = tokenizer
    print("generating:\n---")
    stream = TextStream(pieces)
    for token in generate(sampler, [eot], gen_tokens - 1, sample_rng):
        stream.write(token)
    stream.end()
    print("\n---")


# Setting up a run, as llm.c's main does before its loop: the model, AdamW, the data, and models for evaluating and
# sampling that share the parameters; and writing a checkpoint.

def check_inputs(args, processes):
    """What is quick to check comes first, so that a run that cannot start stops before a model is built: -e (but on
    the Hugging Face hub), then the default data, which is prepared the first time (by rank 0, the others waiting)."""
    with processes.together():
        source = cli.model_source(args.model)
        if cli.model_kind(source) != "hf":
            gpt2_config(source)
        if processes.rank == 0 and args.max_steps != 0:
            prepare_default_data(args.train_data, args.val_data)


def load_run_model(args, run_dir):
    """The model to train: from the checkpoint being resumed, which must have the shape -e names, or from -e. The
    default -e, llm.c's gpt2_124M.bin, is without that file the same weights from the Hugging Face hub (gpt2), or
    offline its shape (d12), trained from scratch."""
    source = cli.model_source(args.model)
    if run_dir.resume_step is not None:
        model = read_model_file(run_dir.checkpoint_files(run_dir.resume_step)[0])
        run_dir.check_model(model.config, gpt2_config("d12" if source != args.model else source), args.model)
        return model
    if source == args.model:
        return load_gpt2(source)
    try:  # the default run, as llm.c's demo: fine-tune GPT-2 124M
        model = load_gpt2(source)
        print(f"{args.model} not found: fine-tuning OpenAI's GPT-2 124M from the Hugging Face hub ({source})")
        return model
    except GPT2Error as e:  # offline: say so in two short lines, and what would fetch the real weights
        why = hf.unreachable(e, source) or str(e)
        print(f"{args.model} not found, and {why}\ntraining GPT-2 124M's shape (d12) from scratch; for OpenAI's "
              f"weights, run once online or put {args.model} here")
        return load_gpt2("d12")


def build_model(args, run_dir, processes):
    """The model, allocated for batches of (B, T), and AdamW (none with -x 0, which only evaluates)."""
    with processes.together():
        model = load_run_model(args, run_dir)
        cfg = model.config
        print(f"model: max_seq_len {cfg.max_seq_len}, vocab_size {cfg.vocab_size}, padded_vocab_size "
              f"{cfg.padded_vocab_size}, num_layers {cfg.num_layers}, num_heads {cfg.num_heads}, channels "
              f"{cfg.channels}, num_parameters {model.num_parameters:,}")
        training = args.max_steps != 0  # -x 0 only evaluates: no gradients, no optimizer state
        model.allocate(args.batch_size, args.seq_len, training=training)  # refuses a T over the model's maximum
        optimizer = AdamW(model, args.beta1, args.beta2, eps=1e-8, weight_decay=args.weight_decay,
                          shard=processes.optimizer_shard(model.num_parameters)) if training else None
    return model, optimizer


def data_loaders(args, config, processes):
    """The training and validation loaders, each process reading its rows. As llm.c, overfitting (-a 1) trains
    on the first batches of the validation set, unshuffled."""
    B, T, V, rank, count = args.batch_size, args.seq_len, config.vocab_size, processes.rank, processes.count
    if args.max_steps == 0:  # evaluating only: no training data, and the default validation data only if there
        has_val = args.val_data and (args.val_data != DEFAULT_VAL or os.path.exists(DEFAULT_VAL))
        return None, DataLoader(args.val_data, B, T, V, process_rank=rank, num_processes=count) if has_val else None
    train_loader = DataLoader(args.val_data if args.overfit else args.train_data, B, T, V, shuffle=not args.overfit,
                              process_rank=rank, num_processes=count)
    val_loader = DataLoader(args.val_data, B, T, V, process_rank=rank, num_processes=count) if args.val_data else None
    return train_loader, val_loader


def evaluation_model(args, model, processes):
    """A model to score --eval-data's examples (the same parameters, no gradients), and the examples; or
    (None, None)."""
    with processes.together():
        examples = read_eval_file(args.eval_data, model.config.vocab_size) if args.eval_data else None
    if not examples:
        return None, None
    evaluator = GPT2(model.config, model.params_memory)
    B, T, context = evaluation_sizes(examples, model.config.max_seq_len)
    evaluator.allocate(B, T, context=context)
    print(f"eval: {len(examples):,} examples of {args.eval_data}, up to {evaluator.capacity.B} completions "
          f"and {evaluator.capacity.context} positions each")
    return evaluator, examples


def sampling_model(args, model, processes):
    """A model to sample from (the same parameters, a KV cache) and the tokenizer, or (None, None): rank 0 samples,
    with -s, if the tokenizer's vocabulary is the model's."""
    with processes.together():
        tokenizer = sampling_tokenizer(model.config.vocab_size) if processes.rank == 0 and args.sample_every else None
    if not tokenizer:
        return None, None
    if args.gen_tokens > model.config.max_seq_len:
        raise GPT2Error(f"-g {args.gen_tokens} tokens per sample is more than the model's context of "
                        f"{model.config.max_seq_len}")
    sampler = GPT2(model.config, model.params_memory)
    sampler.allocate(1, 1, context=args.gen_tokens)
    return sampler, tokenizer


FIRST_RUN_COMPILES = 19  # the kernels (and signatures) load_kernels compiles in a process of its own, on a first run


def load_kernels():
    """Runs every kernel of a training step and of generation once, on a tiny model: numba loads them from its
    cache, or compiles them on the first run (saying which, one by one), here rather than inside the first step."""
    print("loading the numba kernels (a first run compiles them: about 30 s on 2 cores; later runs load them in a "
          "second)", flush=True)
    started = time.perf_counter()
    config = GPT2Config(max_seq_len=4, vocab_size=8, padded_vocab_size=8, num_layers=1, num_heads=2, channels=16)
    model = GPT2(config, np.full(num_parameters(config), 0.01, dtype=np.float32))
    tokens = np.zeros((2, 4), dtype=np.int32)
    with cli.compile_progress(FIRST_RUN_COMPILES):
        model.allocate(2, 4, training=True)
        train_step(model, AdamW(model), lambda: (tokens, tokens), 1, 0.0, 0)
        sampler = GPT2(config, model.params_memory)
        sampler.allocate(1, 2, context=4)
        for temperature, top_k, top_p in ((1.0, 0, 1.0), (0.0, 0, 1.0), (0.5, 2, 0.9)):
            list(generate(sampler, [0, 1], 3, XorShift(), temperature, top_k, top_p))
    print(f"kernels ready in {time.perf_counter() - started:.1f} s")


def write_checkpoint(run_dir, step, model, optimizer, loader, sample_rng, args, processes):
    """llm.c's checkpoint of `step`: the model file (rank 0's), every process's training state, and last the
    DONE_ file, once all of them are on the disk (llmc/run_dir.py)."""
    with processes.together():
        processes.check_same_parameters(model)
        if processes.rank == 0:
            write_model_file(run_dir.checkpoint_files(step)[0], model)
        run_dir.write_state(step, optimizer, loader, sample_rng, args)
    run_dir.complete(step, args.checkpoints_keep)


# The training loop, as llm.c's main: at each step validate, evaluate, sample and checkpoint when it is time, then
# take one optimizer step and print what it did. A resumed run starts at its checkpoint's step, whose validation,
# evaluation, sample and checkpoint the stopped run did.

def train(args, processes):
    started = time.perf_counter()
    run_dir = RunDirectory.open(args, processes)  # -o, and the step of the checkpoint to resume from with -y 1
    check_inputs(args, processes)
    model, optimizer = build_model(args, run_dir, processes)
    train_loader, val_loader = data_loaders(args, model.config, processes)
    args = cli.complete_settings(args, train_loader.num_tokens if train_loader else 0, processes.count)
    grad_accum_steps = args.total_batch_size // (args.batch_size * args.seq_len * processes.count)
    cli.print_plan(args, train_loader, val_loader, grad_accum_steps, processes)
    evaluator, examples = evaluation_model(args, model, processes)
    sampler, tokenizer = sampling_model(args, model, processes)
    sample_rng = XorShift(1337)
    if run_dir.resume_step is not None:
        run_dir.resume(optimizer, train_loader, sample_rng, args)  # AdamW's moments, the data's place, the RNG
        if run_dir.resume_step == args.max_steps:
            return  # a finished run, as resume() said
    else:
        run_dir.start_log()
    cli.print_memory(model, optimizer, args, processes, started)
    load_kernels()

    start_step, training_time = run_dir.resume_step or 0, 0.0
    for step in range(start_step, args.max_steps + 1):
        last_step = step == args.max_steps
        cli.stop_if_interrupted()
        if step != run_dir.resume_step:  # (the stopped run did these before the checkpoint it resumes from)
            if val_loader and args.val_every and (step % args.val_every == 0 or last_step):
                val_loss = validation_loss(model, val_loader, args.val_max_steps, step, processes)
                print(f"val loss {val_loss:f}")
                run_dir.log(f"s:{step} tel:{val_loss:.4f}\n")
            if examples and ((args.val_every and step % args.val_every == 0) or last_step):
                eval_start = time.perf_counter()
                right, total = eval_accuracy(evaluator, examples, processes)
                print(f"eval accuracy {right}/{total} = {right / total:.4f} ({time.perf_counter() - eval_start:.1f} s)")
                run_dir.log(f"s:{step} eval:{right / total:.4f}\n")
            if tokenizer and ((step > 0 and step % args.sample_every == 0) or last_step):
                print_sample(sampler, tokenizer, args.gen_tokens, sample_rng)
            if args.output_dir and ((args.checkpoint_every and step > 0 and step % args.checkpoint_every == 0)
                                    or last_step):  # with -o, the trained model is never thrown away
                write_checkpoint(run_dir, step, model, optimizer, train_loader, sample_rng, args, processes)
        if last_step:
            break

        if args.overfit:
            train_loader.reset()
        lr = learning_rate(args.schedule, step, args.learning_rate, args.warmup, args.final_frac, args.max_steps)
        step_start = time.perf_counter()
        loss, norm = train_step(model, optimizer, train_loader.next_batch, grad_accum_steps, lr, step, args.grad_clip,
                                processes)
        took = time.perf_counter() - step_start
        training_time += took
        eta = training_time / (step + 1 - start_step) * (args.max_steps - step - 1)
        print(f"step {step}: train loss {loss:f} (took {took * 1000:.0f} ms) | norm {norm:.4f} | lr {lr:.2e} | "
              f"{args.total_batch_size / took:.0f} tok/s | ETA {cli.format_duration(eta)}", flush=True)
        run_dir.log(f"s:{step} trl:{loss:.4f} lr:{lr:.6f} norm:{norm:.2f}\n")
    print(f"total time {time.perf_counter() - started:.1f} s")


def main(argv=None):
    with cli.ExitStatus() as status:  # bad input: one line and exit status 1; Ctrl-C: `interrupted` and 130
        args = cli.parse_args(argv)  # a bad flag: one line and exit status 2
        processes = status.processes = Processes.start(args.zero)
        if processes.rank != 0:  # only rank 0 prints, and the errors that every process raised alike
            sys.stdout = open(os.devnull, "w")
        if args.zero and processes.count == 1:
            print("-z 1: ZeRO-1 splits AdamW's state over the processes of an mpirun; one process keeps it whole")
        with np.errstate(all="ignore"):  # a run that diverges is told in one line, by the checks of the loss and norm
            train(args, processes)
    return status.code


if __name__ == "__main__":
    sys.exit(main())
