"""
GPT-2's tokenizer: its byte-pair encoding (tiktoken), llm.c's tokenizer file, and tokens printed as text.

tiktoken downloads its two BPE files on first use; with no network the same encoding is built from the identical
files in llmc/gpt2/ (OpenAI's, MIT-licensed), after checking their sha256. llm.c's tokenizer file holds, for each
token id, its bytes (a 1-byte length, then the bytes), which is all that decoding needs.
"""

import codecs
import functools
import hashlib
import os
import sys
import unicodedata

import numpy as np

from llmc.files import HEADER_BYTES, TOKENIZER_MAGIC, GPT2Error, new_header, read_file, read_header, write_atomically

EOT_TOKEN = 50256  # <|endoftext|>, which separates documents and starts every sample
BPE_FILES_SHA256 = {"vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
                    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"}


@functools.cache
def gpt2_encoding():
    """tiktoken's "gpt2" encoding, downloaded (or cached) by tiktoken, or else built offline."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception:  # no network: tiktoken raises whatever its HTTP client raises
        return gpt2_encoding_offline()


BPE_FILES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpt2")
TOKENIZER_FILE = "gpt2_tokenizer.bin"  # where the trainer reads and writes it: the working directory


def gpt2_encoding_offline():
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str
    paths = {name: os.path.join(BPE_FILES_DIR, name) for name in BPE_FILES_SHA256}
    for name, path in paths.items():
        digest = hashlib.sha256(read_file(path)).hexdigest()
        if digest != BPE_FILES_SHA256[name]:
            raise GPT2Error(f"{path}: sha256 {digest} is not GPT-2's {BPE_FILES_SHA256[name]}")
    ranks = data_gym_to_mergeable_bpe_ranks(paths["vocab.bpe"], paths["encoder.json"])
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT_TOKEN}, explicit_n_vocab=EOT_TOKEN + 1)


def token_pieces(encoding):
    """The bytes of each token id, which is all that decoding needs."""
    return [encoding.decode_single_token_bytes(i) for i in range(encoding.n_vocab)]


def write_tokenizer_file(path, encoding):
    """llm.c's tokenizer file, version 2: header [2] number of tokens, [3] the EOT token id."""
    pieces = token_pieces(encoding)
    body = b"".join(bytes([len(piece)]) + piece for piece in pieces)
    write_atomically(path, [new_header(TOKENIZER_MAGIC, 2, len(pieces), encoding.eot_token),
                            np.frombuffer(body, dtype=np.uint8)])


def read_tokenizer_file(path):
    """Returns the list of each token's bytes and the EOT token id (version 1 files have none: GPT-2's)."""
    header = read_header(path, TOKENIZER_MAGIC, (1, 2))
    num_tokens = int(header[2])
    eot = int(header[3]) if header[1] == 2 else EOT_TOKEN
    if not 0 <= eot < num_tokens:
        raise GPT2Error(f"{path}: EOT token id {eot} is out of range for its {num_tokens} tokens")
    data = read_file(path)[HEADER_BYTES:]
    pieces, offset = [], 0
    for _ in range(num_tokens):
        if offset >= len(data) or offset + 1 + data[offset] > len(data):
            raise GPT2Error(f"{path}: truncated: {len(pieces)} of {num_tokens} tokens")
        pieces.append(data[offset + 1:offset + 1 + data[offset]])
        offset += 1 + data[offset]
    return pieces, eot


def sampling_tokenizer(vocab_size, path=TOKENIZER_FILE):
    """(pieces, eot) of llm.c's tokenizer file, to print the trainer's samples with (written from tiktoken's GPT-2
    encoding if it is not there); None if its vocabulary is not the model's."""
    if not os.path.exists(path):
        print(f"writing {path} from tiktoken's GPT-2 encoding")
        write_tokenizer_file(path, gpt2_encoding())
    pieces, eot = read_tokenizer_file(path)
    if len(pieces) != vocab_size:
        print(f"sampling off: the model's vocabulary ({vocab_size} tokens) is not the tokenizer's "
              f"({len(pieces)}, {path})")
        return None
    return pieces, eot


def printable(text):
    """Drops control characters but whitespace, as llm.c's safe_printf drops the single bytes that are neither
    printable nor space: a sample's text then cannot move the terminal's cursor or change its colours."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cc" or ch in " \t\n\v\f\r")


class TextStream:
    """Prints tokens as text as they come. The bytes of the tokens are decoded as one stream: a character split
    over two tokens is printed whole once its last byte came, never as two replacement characters."""

    def __init__(self, pieces, out=None):
        self.pieces, self.out = pieces, out or sys.stdout
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, token):
        self.out.write(printable(self.decoder.decode(self.pieces[token])))
        self.out.flush()

    def end(self):  # bytes left of a character that never ended print as one replacement character
        self.out.write(printable(self.decoder.decode(b"", final=True)))
        self.out.flush()
