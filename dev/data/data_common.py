"""What dev/data/tinystories.py and dev/data/fineweb.py share: parallel tokenizing, sharded writing, progress,
resuming, and the counting of documents that could not be used. Also the writers of llm.c's files: token shards
(write_shard) and, for dev/data/hellaswag.py, eval files (write_evalfile), and the download of an input file.

A dataset is one or more *streams* of documents (TinyStories: a val stream and a train stream; FineWeb: one
stream whose first shard is the validation split). A stream is a list of *units* (an input file, or a dataset
from the Hugging Face hub), each a sequence of documents. Every document becomes [EOT] + encode_ordinary(text)
with tiktoken's GPT-2 encoding, and a stream's tokens are cut into llm.c token shards of exactly --shard-size
tokens, the last one shorter; a document that does not fit runs over into the next shard, as in llm.c's
fineweb.py. Documents that are empty (blank, or null) or not valid Unicode (bytes that are not UTF-8, or a lone
surrogate escape in JSON) are skipped, counted, and reported at the end with where the first ones are.

Tokenizing runs in a pool of worker processes (--workers; 1 tokenizes in this process), a bounded number of
batches in flight, their results taken in order, so the output never depends on the number of workers.

Resuming. Every shard is written atomically (write_shard) and read back (read_shard_header). Then
the record <name>.progress.json in the output directory is rewritten, atomically too, with the shard's file
name, its number of tokens, the counts so far, and where the next shard starts: [unit, document within the
unit, token offset within that document]. A rerun with the same inputs (paths, sizes, modification times) and
--shard-size keeps each recorded shard that exists and passes read_shard_header, up to the first that does
not, and goes on from there: units before that position are not opened, documents before it in its unit are
read but not tokenized, and only the one document that straddles the boundary is tokenized again. A resumed
run so writes the same bytes as a fresh run, and a rerun of a finished run writes nothing. When the inputs or
--shard-size changed, the rerun removes the shards the record lists and starts over.
"""

import copy
import glob
import json
import multiprocessing
import os
import random
import signal
import sys
import time
import urllib.request
from collections import deque

import numpy as np

from llmc.data import write_shard
from llmc.files import EVAL_MAGIC, GPT2Error, new_header, process_exists, write_atomically
from llmc.tokenizer import EOT_TOKEN, gpt2_encoding
import train_gpt2 as tg

MAX_SHARD_TOKENS = 2 ** 31 - 1  # a shard's header counts its tokens in an int32
BATCH_CHARS = 1 << 20           # text sent to a worker at a time...
BATCH_DOCS = 4096               # ...or at most this many documents
EMPTY, UNDECODABLE = -1, -2     # a document's token count in tokenize_texts' answer when it has no tokens
PROBLEMS = {"empty": "empty", "undecodable": "not valid UTF-8"}
EXAMPLES_KEPT = 3               # where the first few skipped documents of each kind are, for the report


EVAL_DELIMITER = 2 ** 16 - 1  # starts every example of an eval file, so no token id can be 65535
MAX_EVAL_EXAMPLES = 2 ** 16 - 1  # an example's index is a uint16 (llm.c: fewer than 2**16 examples)
MAX_EVAL_EXAMPLE_BYTES = 2 ** 16 - 1  # and so is its byte count


def eval_example_bytes(context, completions):
    """The bytes an example takes in an eval file: 6 uint16 fields (delimiter, byte count, index, label, number of
    completions, context length), the context's tokens, and for each completion its length and its tokens."""
    return 2 * (6 + len(context) + sum(1 + len(tokens) for tokens in completions))


def write_evalfile(path, examples):
    """llm.c's eval file for multiple-choice evaluations (HellaSwag, MMLU), byte for byte as its write_evalfile:
    header [2] the number of examples, [3] the longest example's bytes; then each example as uint16: 65535, its
    bytes (of these uint16, from the 65535 on), its index, its label, its number of completions, the context's
    length and tokens, and each completion's length and tokens.

    examples: (label, context tokens, [completion tokens, ...]) each. Beyond what llm.c's writer asserts, an empty
    context or completion is refused too: llm.c's loader would stop at it. Returns the longest example's bytes."""
    if not examples:
        raise GPT2Error(f"{path}: no examples to write")
    if len(examples) > MAX_EVAL_EXAMPLES:
        raise GPT2Error(f"{path}: {len(examples):,} examples, more than the {MAX_EVAL_EXAMPLES:,} an eval file's "
                        f"uint16 example index can count")
    stream, longest = [], 0
    for index, (label, context, completions) in enumerate(examples):
        where = f"{path}: example {index}"
        if not completions or not 0 <= label < len(completions):
            raise GPT2Error(f"{where}: label {label} is not the index of one of its {len(completions)} completions")
        for part in [context, *completions]:
            tokens = np.asarray(part, dtype=np.int64)
            if tokens.size == 0:
                raise GPT2Error(f"{where}: an empty context or completion")
            if tokens.min() < 0 or tokens.max() >= EVAL_DELIMITER:
                raise GPT2Error(f"{where}: token ids must be 0..65534 (65535 starts an example)")
        size = eval_example_bytes(context, completions)
        if size > MAX_EVAL_EXAMPLE_BYTES:
            raise GPT2Error(f"{where}: takes {size:,} bytes, more than the {MAX_EVAL_EXAMPLE_BYTES:,} its uint16 byte "
                            f"count can hold")
        longest = max(longest, size)
        stream += [EVAL_DELIMITER, size, index, label, len(completions), len(context), *context]
        for tokens in completions:
            stream += [len(tokens), *tokens]
    write_atomically(path, [new_header(EVAL_MAGIC, 1, len(examples), longest), np.array(stream, dtype="<u2")])
    return longest


# ----------------------------------------------------------------------------------------------------------------
# Tokenizing, in worker processes

def start_worker():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process, which stops the pool
    gpt2_encoding()  # made once per process, and cached


def tokenize_texts(texts):
    """Returns ([EOT] + encode_ordinary(text) for each usable text, concatenated as uint16, and each text's
    number of tokens there, or EMPTY for None or blank text, UNDECODABLE for text that is not valid Unicode)."""
    enc = None  # made on the first usable text: input with none fails without building it
    ids, lengths = [], np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        if text is None or not text.strip():
            lengths[i] = EMPTY
            continue
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: tiktoken would quietly make it U+FFFD
                lengths[i] = UNDECODABLE
                continue
        enc = enc or gpt2_encoding()
        start = len(ids)
        ids.append(EOT_TOKEN)
        ids.extend(enc.encode_ordinary(text))
        lengths[i] = len(ids) - start
    tokens = np.array(ids, dtype=np.int64)
    if tokens.size and tokens.max() >= 2 ** 16:
        raise GPT2Error(f"token id {tokens.max()} does not fit in a shard's uint16")
    return tokens.astype(np.uint16), lengths


class Tokenizer:
    """Tokenizes batches of texts in `workers` processes (in this one when workers is 1), answers in order."""

    def __init__(self, workers):
        self.workers = workers
        self.pool = multiprocessing.Pool(workers, initializer=start_worker) if workers > 1 else None

    def map(self, batches):
        """batches: (tag, texts) pairs; yields (tag, tokens, lengths) in the same order."""
        if self.pool is None:
            for tag, texts in batches:
                yield (tag, *tokenize_texts(texts))
            return
        in_flight = deque()  # bounded, unlike Pool.imap, which would read the whole input ahead
        for tag, texts in batches:
            in_flight.append((tag, self.pool.apply_async(tokenize_texts, (texts,))))
            if len(in_flight) >= 2 * self.workers + 2:
                tag, result = in_flight.popleft()
                yield (tag, *result.get())
        while in_flight:
            tag, result = in_flight.popleft()
            yield (tag, *result.get())

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


# ----------------------------------------------------------------------------------------------------------------
# Progress: a tqdm bar with tokens/s on a terminal when tqdm is installed; otherwise a plain line every so often

class Meter:
    def __init__(self, desc, unit="tokens", every=10.0, total=None, out=None):
        self.desc, self.unit, self.every = desc, unit, every
        self.count, self.start = 0, time.perf_counter()
        self.last = self.start
        self.bar = None
        out = out or sys.stderr
        if out.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(desc=desc, unit=unit, unit_scale=True, total=total, file=out, dynamic_ncols=True)

    def update(self, n):
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self.print_rate(now)

    def print_rate(self, now):
        rate = self.count / max(now - self.start, 1e-9)
        print(f"{self.desc}: {self.count:,} {self.unit}, {rate:,.0f} {self.unit}/s", flush=True)

    def set_description(self, desc):
        self.desc = desc
        if self.bar is not None:
            self.bar.set_description_str(desc)

    def write(self, message):
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.count:
            self.print_rate(time.perf_counter())


# ----------------------------------------------------------------------------------------------------------------
# Inputs: units of documents. documents(start) yields each document's text (None when it is missing) from
# document number `start` on; where(i) says where document i is, for messages.

def read_input(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise GPT2Error(f"{path}: cannot open: {e.strerror}") from None


def parse_json(path, raw, line=None):
    """JSON from bytes (of a whole file, or of its line `line`). Bytes that are not UTF-8 become lone surrogates
    (surrogateescape): inside a string they make that document undecodable, which tokenize_texts counts;
    anywhere else the JSON is malformed."""
    try:
        return json.loads(raw.decode("utf-8", "surrogateescape"))
    except (json.JSONDecodeError, RecursionError) as e:
        what = f"line {line}" if line else "the file"
        where = "nested too deeply" if isinstance(e, RecursionError) else (
            f"{e.msg} at column {e.colno}" if line else f"{e.msg} at line {e.lineno} column {e.colno}")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            where += f"; its byte {bad.start} is not UTF-8"
        raise GPT2Error(f"{path}: {what} is not valid JSON: {where}") from None


def text_field(path, record, field, where):
    if not isinstance(record, dict) or not (record.get(field) is None or isinstance(record[field], str)):
        raise GPT2Error(f"{path}: {where} is not a JSON object with a {field!r} string")
    return record.get(field)


class JsonListUnit:
    """A JSON file holding a list of objects whose `field` is a document (TinyStories' data00.json ...), in the
    order of random.Random(seed).shuffle when a seed is given, each stripped of surrounding whitespace."""

    def __init__(self, path, field, seed=None):
        self.path, self.name, self.field, self.seed = path, path, field, seed
        self.order = None

    def load(self):
        raw = read_input(self.path)
        if not raw.strip():
            raise GPT2Error(f"{self.path}: empty file")
        records = parse_json(self.path, raw)
        if not isinstance(records, list):
            raise GPT2Error(f"{self.path}: expected a JSON list of objects with a {self.field!r} field, "
                            f"found a {type(records).__name__}")
        texts = [text_field(self.path, r, self.field, f"record {i}") for i, r in enumerate(records)]
        self.order = list(range(len(texts)))
        if self.seed is not None:  # the same permutation as shuffling the records themselves
            random.Random(self.seed).shuffle(self.order)
        return texts

    def documents(self, start=0):
        texts = self.load()
        for i in range(start, len(texts)):
            text = texts[self.order[i]]
            yield None if text is None else text.strip()

    def where(self, index):
        return f"{self.path} record {self.order[index]}"


class JsonlUnit:
    """A JSON-lines file, one object a line whose `field` is a document; a blank line is an empty document."""

    def __init__(self, path, field):
        self.path, self.name, self.field = path, path, field

    def documents(self, start=0):
        try:
            f = open(self.path, "rb")
        except OSError as e:
            raise GPT2Error(f"{self.path}: cannot open: {e.strerror}") from None
        with f:
            for i, line in enumerate(f):
                if i < start:
                    continue
                if not line.strip():
                    yield None
                    continue
                record = parse_json(self.path, line, i + 1)
                yield text_field(self.path, record, self.field, f"line {i + 1}")

    def where(self, index):
        return f"{self.path} line {index + 1}"


def import_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise GPT2Error("reading parquet files needs pyarrow: pip install pyarrow") from None
    return pyarrow


class ParquetUnit:
    """A parquet file whose string column `column` holds the documents; resuming skips whole row groups."""

    def __init__(self, path, column):
        self.path, self.name, self.column = path, path, column

    def documents(self, start=0):
        pa = import_pyarrow()
        try:
            parquet = pa.parquet.ParquetFile(self.path)
            schema = parquet.schema_arrow
            if self.column not in schema.names:
                raise GPT2Error(f"{self.path}: no {self.column!r} column (it has {', '.join(schema.names)})")
            kind = schema.field(self.column).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise GPT2Error(f"{self.path}: column {self.column!r} holds {kind}, not strings")
            as_bytes = pa.large_binary() if pa.types.is_large_string(kind) else pa.binary()
            rows = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
            first_group, row = 0, 0
            while first_group < len(rows) and row + rows[first_group] <= start:  # whole row groups to skip
                row += rows[first_group]
                first_group += 1
            groups = range(first_group, parquet.num_row_groups)
            for batch in parquet.iter_batches(batch_size=4096, row_groups=groups, columns=[self.column]):
                # as bytes, so that bytes that are not UTF-8 make one document undecodable, not the whole file
                for value in batch.column(0).cast(as_bytes).to_pylist():
                    if row >= start:
                        yield None if value is None else value.decode("utf-8", "surrogateescape")
                    row += 1
        except (pa.ArrowException, OSError) as e:
            raise GPT2Error(f"{self.path}: cannot read as parquet: {one_line(e)}") from None

    def where(self, index):
        return f"{self.path} row {index}"


class DatasetUnit:
    """A Hugging Face `datasets` Dataset (or anything with len() and slices giving {column: [texts]})."""

    def __init__(self, dataset, column, name):
        self.dataset, self.column, self.name = dataset, column, name

    def documents(self, start=0):
        for i in range(start, len(self.dataset), 1000):
            yield from self.dataset[i:i + 1000][self.column]

    def where(self, index):
        return f"{self.name} row {index}"


def file_identity(paths):
    """What the record remembers of the input files: a changed one makes a rerun start over."""
    identity = []
    for path in paths:
        st = os.stat(path)
        identity.append([os.path.abspath(path), st.st_size, st.st_mtime_ns])
    return identity


def expand_inputs(paths, extensions):
    """The input files: each path as given, or a directory's files with one of `extensions`, sorted."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(p for p in glob.glob(os.path.join(path, "*")) if p.endswith(extensions))
            if not found:
                raise GPT2Error(f"{path}: no {' or '.join(extensions)} files in this directory")
            files.extend(found)
        elif not os.path.exists(path):
            raise GPT2Error(f"{path}: no such file or directory")
        elif not os.path.isfile(path):  # a FIFO would make the reader wait forever
            raise GPT2Error(f"{path}: not a regular file")
        elif not path.endswith(extensions):
            raise GPT2Error(f"{path}: expected a {' or '.join(extensions)} file or a directory of them")
        else:
            files.append(path)
    return files


def download_file(url, path, what):
    """Downloads url to path (through a temporary file, so a broken download never looks finished)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.part"
    print(f"downloading {url} to {path}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            total = response.headers.get("Content-Length")
            meter = Meter(os.path.basename(path), unit="B", total=int(total) if total else None)
            try:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    meter.update(len(chunk))
            finally:
                meter.close()
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise GPT2Error(f"cannot download {what} from {url} ({one_line(e)}); download it yourself and pass it "
                        f"with --input") from None
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# Streams, shards and the record

class Stream:
    """A sequence of units cut into shards.

    key: its name in the record ("val", "train", ...); label: its name in messages; shard_name(index, last)
    gives shard `index`'s file name (last: no shard follows); split(index) says which split shard `index` is;
    patterns: globs of every file name shard_name can give, to find files this run did not write."""

    def __init__(self, key, label, units, shard_name, split, patterns):
        self.key, self.label, self.units = key, label, units
        self.shard_name, self.split, self.patterns = shard_name, split, patterns


def new_counts():
    return {"documents": 0, "empty": 0, "undecodable": 0, "examples": {"empty": [], "undecodable": []}}


class Record:
    """<out_dir>/<name>.progress.json: what each stream has finished, for resuming."""

    def __init__(self, out_dir, name, config):
        self.path = os.path.join(out_dir, f"{name}.progress.json")
        self.config, self.streams = config, {}
        try:
            with open(self.path, encoding="utf-8") as f:
                old = json.load(f)
            old_streams = old["streams"]
            same = old["config"] == config
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            print(f"note: ignoring {self.path}, which is unreadable: starting over")
            return
        if same:
            self.streams = old_streams
            return
        removed = 0
        for state in old_streams.values():
            for shard in state.get("shards", []):
                path = os.path.join(out_dir, shard["file"])
                if os.path.exists(path):
                    os.remove(path)
                    removed += 1
        print(f"the inputs or --shard-size changed since the last run in {out_dir}: removed the {removed} shard(s) "
              f"it wrote, starting over")

    def save(self):
        text = json.dumps({"config": self.config, "streams": self.streams}, indent=1, sort_keys=True) + "\n"
        write_atomically(self.path, [np.frombuffer(text.encode("utf-8"), dtype=np.uint8)])


class ShardWriter:
    """Cuts one stream's documents into shards of exactly shard_size tokens, the last one shorter."""

    def __init__(self, stream, state, out_dir, shard_size, meter, save):
        self.stream, self.state, self.out_dir, self.shard_size = stream, state, out_dir, shard_size
        self.meter, self.save = meter, save
        self.counts = copy.deepcopy(state["shards"][-1]["counts"]) if state["shards"] else new_counts()
        self.chunks, self.count = [], 0  # chunks: [array, start, stop], consecutive ranges merged

    def add(self, tokens, begin, end, unit, doc, skip=0):
        """Adds document `doc` of `unit`, which is tokens[begin:end], from its token `skip` on (nonzero when
        resuming in the middle of it)."""
        position = begin + skip
        while position < end:
            if self.count == self.shard_size:  # written only now, when we know another shard follows
                self.flush([unit, doc, position - begin])
            take = min(self.shard_size - self.count, end - position)
            last = self.chunks[-1] if self.chunks else None
            if last is not None and last[0] is tokens and last[2] == position:
                last[2] += take
            else:
                self.chunks.append([tokens, position, position + take])
            self.count += take
            position += take
        self.counts["documents"] += 1

    def skipped(self, problem, where):
        self.counts[problem] += 1
        if len(self.counts["examples"][problem]) < EXAMPLES_KEPT:
            self.counts["examples"][problem].append(where)

    def flush(self, next_position):
        index = len(self.state["shards"])
        name = self.stream.shard_name(index, next_position is None)
        path = os.path.join(self.out_dir, name)
        write_shard(path, np.concatenate([array[start:stop] for array, start, stop in self.chunks]))
        found = tg.read_shard_header(path)
        if found != self.count:
            raise GPT2Error(f"{path}: holds {found} tokens after writing {self.count}")
        self.state["shards"].append({"file": name, "tokens": self.count, "next": next_position,
                                     "counts": copy.deepcopy(self.counts)})
        self.state["done"] = next_position is None
        self.save()
        self.meter.write(f"wrote {path} ({self.count:,} tokens, {self.stream.split(index)} split)")
        self.meter.set_description(f"{self.stream.label}, shard {index + 1}")
        self.chunks, self.count = [], 0

    def finish(self):
        if self.count == 0:
            raise GPT2Error(f"{self.stream.label}: no usable documents{problems_summary(self.counts, ': ')}")
        self.flush(None)


def finished_shards(out_dir, shards):
    """How many of the recorded shards, from the first on, exist and pass read_shard_header."""
    for i, shard in enumerate(shards):
        try:
            if tg.read_shard_header(os.path.join(out_dir, shard["file"])) != shard["tokens"]:
                return i
        except GPT2Error:
            return i
    return len(shards)


def document_batches(units, unit0, doc0):
    """(unit index, index of the first document, texts) batches from document doc0 of unit unit0 on."""
    for u in range(unit0, len(units)):
        first = doc0 if u == unit0 else 0
        texts, chars = [], 0
        for text in units[u].documents(first):
            texts.append(text)
            chars += len(text) if text else 0
            if chars >= BATCH_CHARS or len(texts) >= BATCH_DOCS:
                yield (u, first), texts
                first += len(texts)
                texts, chars = [], 0
        if texts:
            yield (u, first), texts


def write_stream(stream, writer, tokenizer):
    unit0, doc0, skip0 = writer.state["shards"][-1]["next"] if writer.state["shards"] else (0, 0, 0)
    for (u, first), tokens, lengths in tokenizer.map(document_batches(stream.units, unit0, doc0)):
        offset = 0
        for j, n in enumerate(lengths.tolist()):
            doc = first + j
            if n == EMPTY or n == UNDECODABLE:
                writer.skipped("empty" if n == EMPTY else "undecodable", stream.units[u].where(doc))
                continue
            writer.add(tokens, offset, offset + n, u, doc, skip0 if (u, doc) == (unit0, doc0) else 0)
            offset += n
        writer.meter.update(offset - (skip0 if (u, first) == (unit0, doc0) else 0))
    writer.finish()


def remove_temp_files(out_dir, prefix):
    """Removes what an interrupted run left of its atomic writes (.name.tmpPID), whose process is gone."""
    for path in glob.glob(os.path.join(out_dir, f".{glob.escape(prefix)}*.tmp*")):
        pid = path.rsplit(".tmp", 1)[1]
        if pid.isdigit() and os.path.isfile(path) and not process_exists(int(pid)):
            os.remove(path)


def build_shards(out_dir, name, streams, shard_size, workers, config):
    """Writes (or finishes) every stream's shards in out_dir; returns the record's streams."""
    os.makedirs(out_dir, exist_ok=True)
    remove_temp_files(out_dir, name)
    record = Record(out_dir, name, {"shard_size": shard_size, **config})
    todo = []
    for stream in streams:
        state = record.streams.setdefault(stream.key, {"done": False, "shards": []})
        kept = finished_shards(out_dir, state["shards"])
        if state["done"] and kept == len(state["shards"]):
            print(f"{stream.label}: all {kept} shard(s) already written")
            continue
        if kept < len(state["shards"]):
            print(f"{stream.label}: {state['shards'][kept]['file']} is missing or unfinished")
        del state["shards"][kept:]
        state["done"] = False
        if kept:
            unit, doc, skip = state["shards"][-1]["next"]
            print(f"{stream.label}: resuming after {kept} finished shard(s), in {stream.units[unit].name} at its "
                  f"document {doc}, token {skip}")
        todo.append((stream, state))
    if todo:
        tokenizer = Tokenizer(workers)
        meter = Meter(f"{todo[0][0].label}, shard {len(todo[0][1]['shards'])}")
        try:
            for stream, state in todo:
                meter.set_description(f"{stream.label}, shard {len(state['shards'])}")
                writer = ShardWriter(stream, state, out_dir, shard_size, meter, record.save)
                write_stream(stream, writer, tokenizer)
        finally:
            meter.set_description("tokenized")
            meter.close()
            tokenizer.close()
    report(out_dir, streams, record.streams)
    return record.streams


# ----------------------------------------------------------------------------------------------------------------
# Reporting

def problems_summary(counts, before="", after=""):
    parts = []
    for problem, description in PROBLEMS.items():
        if counts[problem]:
            plural = "s" if counts[problem] > 1 else ""
            parts.append(f"{counts[problem]:,} document{plural} {description} (first: "
                         f"{', '.join(counts['examples'][problem])})")
    return f"{before}{' and '.join(parts)} skipped{after}" if parts else ""


def report(out_dir, streams, states):
    ours, splits = set(), set()
    for stream in streams:
        shards = states[stream.key]["shards"]
        ours.update(shard["file"] for shard in shards)
        for split in dict.fromkeys(stream.split(i) for i in range(len(shards))):
            files = [s for i, s in enumerate(shards) if stream.split(i) == split]
            splits.add(split)
            names = files[0]["file"] + (f" .. {files[-1]['file']}" if len(files) > 1 else "")
            print(f"{split}: {len(files)} shard{'s' if len(files) > 1 else ''}, "
                  f"{sum(s['tokens'] for s in files):,} tokens: {os.path.join(out_dir, names)}")
        counts = shards[-1]["counts"]
        print(f"{stream.label}: {counts['documents']:,} documents{problems_summary(counts, '; ')}")
    if "train" not in splits:
        print("warning: every token fits in the validation shard, so there is no training split: "
              "use a smaller --shard-size", file=sys.stderr)
    for stream in streams:
        for pattern in stream.patterns:
            for path in sorted(glob.glob(os.path.join(out_dir, pattern))):
                if os.path.basename(path) not in ours:
                    print(f"warning: {path} is not from this run, and shard patterns will match it: remove it",
                          file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------
# Command lines

def one_line(error):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def positive_int(limit):
    def parse(value):
        try:
            number = int(value.replace("_", ""))
        except ValueError:
            number = 0
        if not 1 <= number <= limit:
            raise ValueError(value)
        return number
    parse.__name__ = "positive integer"
    return parse


def add_common_arguments(parser, default_shard_size, shard_size_help):
    parser.add_argument("-s", "--shard-size", type=positive_int(MAX_SHARD_TOKENS), default=default_shard_size,
                        help=shard_size_help)
    parser.add_argument("-w", "--workers", type=positive_int(1024), default=os.cpu_count() or 1,
                        help="tokenizing processes (default: the number of cores, %(default)s; 1 tokenizes in this "
                             "process); the output does not depend on it")


def run_cli(function, args):
    """Runs function(args): bad input is one line on stderr and status 1, an interrupt status 130."""
    try:
        function(args)
    except GPT2Error as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:  # what we write: a full disk, an unwritable --out-dir
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0
