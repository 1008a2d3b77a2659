"""
GPT-2 between Hugging Face's layout and llm.c's model file, without PyTorch.

    python -m dev.hf_gpt2 import gpt2 -o gpt2_124M.bin                 # from the hub (or a local folder)
    python -m dev.hf_gpt2 import gpt2-xl -o gpt2_1558M.bin --dtype bfloat16
    python -m dev.hf_gpt2 export out/d12/model_00000040.bin -o hf_d12  # for transformers' from_pretrained
    python -m dev.hf_gpt2 check                                        # against transformers (needs torch too)

import reads a folder with config.json and model.safetensors, or downloads those two files of a hub repository
(the trainer's own loader, train_gpt2.load_gpt2), and writes llm.c's model file: version 3 (float32) or version 5
(bfloat16, rounded to nearest even as llm.c's export does). export writes what
transformers.GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained load: config.json,
model.safetensors (float32, keys with the "transformer." prefix, lm_head tied to wte and not stored, as
transformers saves a GPT-2) and GPT-2's tokenizer (vocab.json, merges.txt, tokenizer_config.json), as llm.c's
dev/eval/export_hf.py does with PyTorch. The padded vocabulary rows are dropped on export and zero on import, so
import then export gives back the same tensors.

check (torch and transformers installed) makes a small random GPT-2 with transformers, saves it, loads it with the
trainer and compares the logits; then exports the trainer's model and loads that into transformers.
"""

import argparse
import json
import os
import shutil
import sys

if __name__ == "__main__" and not __package__:  # run as a file, where `import dev` cannot work
    sys.exit("error: run it from the repository's root, as a module: python -m dev.hf_gpt2")

import numpy as np

import train_gpt2 as tg
from llmc.files import MODEL_MAGIC, GPT2Error, new_header, write_atomically
from llmc.hf import HF_NAMES, HF_TRANSPOSED
from llmc.tokenizer import BPE_FILES_DIR, EOT_TOKEN, gpt2_encoding_offline

LOGITS_TOLERANCE = 1e-4


def import_model(source, out_path, dtype):
    model = tg.load_gpt2(source)
    c = model.config
    if dtype == "float32":
        tg.write_model_file(out_path, model)
    else:  # llm.c's version 5: bfloat16, the top 16 bits of each float32 after rounding to nearest even
        bits = model.params_memory.astype("<f4").view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
        header = new_header(MODEL_MAGIC, 5, c.max_seq_len, c.vocab_size, c.num_layers, c.num_heads,
                            c.channels, c.padded_vocab_size)
        write_atomically(out_path, [header, rounded])
    print(f"wrote {out_path}: {model.num_parameters:,} parameters in {dtype}, L={c.num_layers} C={c.channels} "
          f"NH={c.num_heads} V={c.vocab_size} (padded to {c.padded_vocab_size}) maxT={c.max_seq_len}")


def hf_config(config):
    hf = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
          "n_positions": config.max_seq_len, "n_ctx": config.max_seq_len, "n_embd": config.channels,
          "n_layer": config.num_layers, "n_head": config.num_heads, "n_inner": None,
          "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
          "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "scale_attn_weights": True,
          "torch_dtype": "float32"}
    if config.vocab_size > EOT_TOKEN:  # GPT-2's vocabulary, whose EOT begins and ends a text
        hf.update(bos_token_id=EOT_TOKEN, eos_token_id=EOT_TOKEN)
    return hf


def hf_tensors(model):
    """The trainer's parameters under transformers' names, in its layout."""
    tensors = {}
    for name, hf_name in HF_NAMES.items():
        ours = getattr(model.params, name)
        for l, part in enumerate(ours if "{}" in hf_name else [ours]):
            value = part[:model.config.vocab_size] if name == "wte" else part
            value = value.T if name in HF_TRANSPOSED else value
            tensors["transformer." + hf_name.format(l)] = np.ascontiguousarray(value, dtype=np.float32)
    return tensors


def export_model(path, out_dir):
    model = tg.load_gpt2(path)
    out_dir = os.path.normpath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise GPT2Error(f"{out_dir}: not a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise GPT2Error(f"{out_dir}: not empty; export into a new or empty folder")
    tmp = f"{out_dir}.tmp{os.getpid()}"  # renamed to out_dir once whole
    try:
        write_export(model, tmp)
        if os.path.exists(out_dir):
            os.rmdir(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out_dir}: {', '.join(sorted(os.listdir(out_dir)))}")
    if model.config.vocab_size != EOT_TOKEN + 1:
        print(f"(no tokenizer files: a vocabulary of {model.config.vocab_size} tokens is not GPT-2's)")


def write_export(model, tmp):
    from safetensors.numpy import save_file
    os.makedirs(tmp)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(hf_config(model.config), f, indent=2)
    save_file(hf_tensors(model), os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    umask = os.umask(0o022)  # safetensors writes 0600; a file for other programs gets what the user's umask gives
    os.umask(umask)
    os.chmod(os.path.join(tmp, "model.safetensors"), 0o666 & ~umask)
    if model.config.vocab_size == EOT_TOKEN + 1:  # GPT-2's vocabulary: its tokenizer too
        with open(os.path.join(BPE_FILES_DIR, "encoder.json"), "rb") as f:
            vocab = json.load(f)
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        shutil.copyfile(os.path.join(BPE_FILES_DIR, "vocab.bpe"), os.path.join(tmp, "merges.txt"))
        with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "GPT2Tokenizer", "model_max_length": model.config.max_seq_len,
                       "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                       "add_prefix_space": False}, f, indent=2)


def our_logits(model, tokens):
    model.allocate(*tokens.shape)
    model.forward(tokens)
    return model.activations(*tokens.shape).logits[:, :, :model.config.vocab_size].copy()


def check(work_dir):
    """Our logits against transformers', on a random GPT-2 saved by transformers, and on our export of it."""
    import torch
    import transformers
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    reference = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-zero biases and layernorm parameters, so that every tensor is checked
        for parameter in reference.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    saved = os.path.join(work_dir, "transformers_saved")
    reference.save_pretrained(saved, safe_serialization=True)
    tokens = np.random.default_rng(0).integers(0, 50257, (2, 64), dtype=np.int32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    ours = our_logits(tg.load_gpt2(saved), tokens)
    imported = float(np.abs(ours - expected).max())
    print(f"transformers {transformers.__version__} GPT-2 (L=2, C=64, V=50257), random -> -e {saved}: "
          f"largest logit difference {imported:.2e}")
    model_path = os.path.join(work_dir, "imported.bin")
    import_model(saved, model_path, "float32")
    exported = os.path.join(work_dir, "exported")
    export_model(model_path, exported)
    loaded = transformers.GPT2LMHeadModel.from_pretrained(exported).eval()
    with torch.no_grad():
        again = loaded(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    round_trip = float(np.abs(again - expected).max())
    print(f"our export of it -> transformers' from_pretrained: largest logit difference {round_trip:.2e}")
    text = "Hello world, said the GPT-2 tokenizer."
    tokenizer_ok = (transformers.AutoTokenizer.from_pretrained(exported).encode(text)
                    == gpt2_encoding_offline().encode(text))
    print(f"our export's tokenizer -> AutoTokenizer.from_pretrained: {'the' if tokenizer_ok else 'NOT the'} "
          "tokens of tiktoken's GPT-2 encoding")
    ok = imported <= LOGITS_TOLERANCE and round_trip <= LOGITS_TOLERANCE and tokenizer_ok
    print("ok" if ok else f"FAILED: tolerance {LOGITS_TOLERANCE}")
    return 0 if ok else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dev.hf_gpt2", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    to_llmc = commands.add_parser("import", help="a Hugging Face GPT-2 (hub name or folder) to llm.c's model file")
    to_llmc.add_argument("source", help="hub name (gpt2, gpt2-medium, owner/name) or folder")
    to_llmc.add_argument("-o", "--output", required=True, help="llm.c model file to write")
    to_llmc.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                         help="float32: version 3; bfloat16: version 5 (default %(default)s)")
    to_hf = commands.add_parser("export", help="llm.c's model file to a folder transformers loads")
    to_hf.add_argument("model", help="llm.c model file (.bin), or anything else train_gpt2.py's -e takes (d12: "
                                     "llm.c's initialisation of that shape)")
    to_hf.add_argument("-o", "--output", required=True, help="folder to write (new or empty)")
    against = commands.add_parser("check", help="compare with transformers (needs torch and transformers)")
    against.add_argument("--work-dir", default="hf_check", help="where the check writes its files")
    args = parser.parse_args(argv)
    try:
        if args.command == "import":
            import_model(args.source, args.output, args.dtype)
        elif args.command == "export":
            export_model(args.model, args.output)
        else:
            return check(args.work_dir)
    except (GPT2Error, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ImportError as e:
        print(f"error: {e.name} is needed: pip install -r dev/requirements-dev.txt transformers", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
