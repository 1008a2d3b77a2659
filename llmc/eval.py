"""
Multiple-choice evaluation, as llm.c's: its eval file (HellaSwag's, written by dev/data/hellaswag.py) and its score.

An eval file is a header ([2] = number of examples, [3] = the longest example's bytes), then each example as a
stream of uint16: 65535 (a delimiter), the example's bytes, its index, its label (the right completion), its number
of completions, its context (a length, then the tokens), and each completion (a length, then the tokens). The score
is llm.c's acc_norm: each completion runs after its example's context, and the completion whose tokens have the
lowest mean loss is the model's answer.
"""

import numpy as np

from llmc.files import EVAL_MAGIC, HEADER_BYTES, GPT2Error, read_file, read_header


def read_eval_file(path, vocab_size):
    """The examples of an eval file, every field checked: [(label, context tokens, [completion tokens, ...])]."""
    header = read_header(path, EVAL_MAGIC, (1,))
    num_examples, longest = int(header[2]), int(header[3])
    if num_examples < 1:
        raise GPT2Error(f"{path}: its header counts {num_examples} examples")
    body = read_file(path)[HEADER_BYTES:]
    data = np.frombuffer(body[:len(body) // 2 * 2], dtype="<u2")
    examples, offset, largest = [], 0, 0
    for index in range(num_examples):
        where = f"{path}: example {index}"
        if offset + 6 > len(data):
            raise GPT2Error(f"{path}: truncated: {index} of {num_examples} examples")
        delimiter, size, stored_index, label, count = (int(v) for v in data[offset:offset + 5])
        if delimiter != 65535:
            raise GPT2Error(f"{where}: no delimiter (65535) where it should start")
        if size % 2 or not 12 <= size <= longest:
            raise GPT2Error(f"{where}: a byte count of {size}, where the header's longest example is {longest}")
        if offset + size // 2 > len(data):
            raise GPT2Error(f"{path}: truncated: example {index} is {size} bytes, {2 * (len(data) - offset)} are left")
        if stored_index != index:
            raise GPT2Error(f"{where}: holds the index {stored_index}")
        stream, parts, at = data[offset + 5:offset + size // 2], [], 0
        for _ in range(1 + count):  # the context, then the completions: each a length and that many tokens
            length = int(stream[at]) if at < len(stream) else 0
            if length == 0 or at + 1 + length > len(stream):
                raise GPT2Error(f"{where}: an empty context or completion, or one that runs past its {size} bytes")
            parts.append(stream[at + 1:at + 1 + length].astype(np.int32))
            at += 1 + length
        if at != len(stream):
            raise GPT2Error(f"{where}: its {size} bytes are not its fields' {2 * (5 + at)}")
        if not label < count:
            raise GPT2Error(f"{where}: label {label} of {count} completions")
        bad = [token for part in parts for token in part if token >= vocab_size]
        if bad:
            raise GPT2Error(f"{where}: token id {bad[0]} is out of range for vocab size {vocab_size}")
        examples.append((label, parts[0], parts[1:]))
        offset, largest = offset + size // 2, max(largest, size)
    if 2 * offset != len(body) or largest != longest:
        raise GPT2Error(f"{path}: its size or its header's longest example ({longest} bytes) disagrees with its "
                        f"{num_examples} examples")
    return examples


def share_of_examples(examples, processes):
    """This process's share of the examples: consecutive ones, as llm.c's evalloader_reset splits them."""
    per_process = -(-len(examples) // processes.count)
    return examples[processes.rank * per_process:(processes.rank + 1) * per_process]


def fit_to_context(context, completions, max_seq_len):
    """An example cut to fit the model, whose positions take the context and each completion but its last token
    (which predicts nothing that counts): the context keeps its last tokens, as many as leave room for the
    longest completion, and at least one; a completion longer than the rest of the room keeps its first tokens."""
    room = max(max_seq_len + 1 - max(map(len, completions)), 1)
    return context[-room:], [completion[:max_seq_len + 1 - min(room, len(context))] for completion in completions]


def evaluation_sizes(examples, max_seq_len):
    """What a model that scores these examples must be allocated for, (B, T, context): a row per completion, and a
    KV cache for the longest context and completion."""
    fitted = [fit_to_context(context, completions, max_seq_len) for _, context, completions in examples]
    rows = max(len(completions) for _, completions in fitted)
    T = max(max(len(context), max(map(len, completions)) - 1) for context, completions in fitted)
    context = max(len(context) + max(map(len, completions)) - 1 for context, completions in fitted)
    return rows, T, context


def completion_losses(evaluator, context, completions):
    """Each completion's mean loss per token after the context. The context runs once; its keys and values, in the
    KV cache's first row, are copied to a row for each completion, and the completions run together from there.
    The context's last logits predict each completion's first token; a completion's last token predicts nothing
    that counts, so it never runs."""
    P, n, V = len(context), len(completions), evaluator.config.vocab_size
    evaluator.forward(np.array([context], np.int32))
    logits = evaluator.activations(1, P).logits[0, -1, :V].astype(np.float64)
    logsumexp = logits.max() + np.log(np.exp(logits - logits.max()).sum())
    loss_sums = [logsumexp - logits[completion[0]] for completion in completions]
    evaluator.kv_cache[:, 1:n, :P] = evaluator.kv_cache[:, :1, :P]
    T = max(map(len, completions)) - 1
    if T:
        inputs, targets = np.zeros((n, T), np.int32), np.zeros((n, T), np.int32)
        for r, completion in enumerate(completions):  # shorter ones padded after their end, which they never see
            inputs[r, :len(completion) - 1], targets[r, :len(completion) - 1] = completion[:-1], completion[1:]
        evaluator.forward(inputs, targets, pos=P)
        losses = evaluator.activations(n, T, P).losses
        loss_sums = [total + losses[r, :len(c) - 1].sum() for r, (total, c) in enumerate(zip(loss_sums, completions))]
    return [total / len(completion) for total, completion in zip(loss_sums, completions)]


def eval_accuracy(evaluator, examples, processes):
    """llm.c's multiple-choice score (acc_norm, as its evalloader_stat_losses): each completion runs after its
    example's context, and the mean loss of its tokens says how unlikely the model finds it; the completion with
    the lowest is the model's answer (the first of equal ones), right if it is the label. Each process scores its
    share of the examples; returns (right answers, examples) over all the processes."""
    right = 0
    for label, context, completions in share_of_examples(examples, processes):
        context, completions = fit_to_context(context, completions, evaluator.config.max_seq_len)
        right += int(np.argmin(completion_losses(evaluator, context, completions)) == label)
    return processes.sum(right), len(examples)
