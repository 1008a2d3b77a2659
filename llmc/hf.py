"""
Hugging Face's GPT-2: OpenAI's weights, and any GPT-2 that transformers saved, read into the trainer's layout.

A model is a folder with config.json and model.safetensors, or a name on the Hugging Face hub ("gpt2" is the 124M
model, also gpt2-medium, -large, -xl, or owner/name), which huggingface_hub downloads once into its cache. The tensors
are the same numbers as llm.c's under other names, with two differences: transformers keeps each linear layer's
weight as (in, out), the transpose of ours (its "Conv1D"), and the classifier lm_head is wte itself, which is not
stored again (or stored equal). Weights are read from safetensors only, never from a pickled pytorch_model.bin.
"""

import json
import os
import re

import numpy as np

from llmc.files import GPT2Error, check_regular_file, read_file

HF_NAMES = {"wte": "wte.weight", "wpe": "wpe.weight", "ln1w": "h.{}.ln_1.weight", "ln1b": "h.{}.ln_1.bias",
            "qkvw": "h.{}.attn.c_attn.weight", "qkvb": "h.{}.attn.c_attn.bias", "attprojw": "h.{}.attn.c_proj.weight",
            "attprojb": "h.{}.attn.c_proj.bias", "ln2w": "h.{}.ln_2.weight", "ln2b": "h.{}.ln_2.bias",
            "fcw": "h.{}.mlp.c_fc.weight", "fcb": "h.{}.mlp.c_fc.bias", "fcprojw": "h.{}.mlp.c_proj.weight",
            "fcprojb": "h.{}.mlp.c_proj.bias", "lnfw": "ln_f.weight", "lnfb": "ln_f.bias"}
HF_TRANSPOSED = ("qkvw", "attprojw", "fcw", "fcprojw")


def folder(source):
    """The local folder of a Hugging Face GPT-2: `source` itself, or the hub's copy of the repository it names."""
    if os.path.isdir(source):
        return source
    try:
        import huggingface_hub
    except ImportError:
        raise GPT2Error(f"-e {source}: reading a model from the Hugging Face hub needs huggingface_hub: "
                        "pip install huggingface_hub safetensors") from None
    try:  # the hub's cache, resumed downloads, HF_HUB_OFFLINE and HF_ENDPOINT are huggingface_hub's
        return huggingface_hub.snapshot_download(source, allow_patterns=["config.json", "model.safetensors"])
    except Exception as e:  # it raises its own errors, and its HTTP client's; the first line of theirs, cut short
        detail = str(e).splitlines()[0] if str(e) else ""
        detail = f": {detail[:60]}..." if len(detail) > 60 else f": {detail}" if detail else ""
        raise GPT2Error(f"{source}: not a folder here, and the Hugging Face hub cannot give it ({type(e).__name__}"
                        f"{detail}); offline, -e takes an llm.c model file or a shape such as d12") from e


def unreachable(error, source):
    """Why the hub could not give `source`, in a few words, when `error` is folder()'s (the hub's own error its
    cause): for the lines that say why the default model is missing. None for any other error."""
    cause = error.__cause__
    return f"the Hugging Face hub cannot give {source} ({type(cause).__name__})" if cause else None


def read_config(folder):
    """The model shape in a Hugging Face GPT-2's config.json, as the fields of the trainer's GPT2Config, and the
    file's path (to name it in errors); another architecture is refused."""
    path = os.path.join(folder, "config.json")
    try:
        hf = json.loads(read_file(path))
    except ValueError as e:
        raise GPT2Error(f"{path}: not JSON ({e})") from None
    if not isinstance(hf, dict) or hf.get("model_type") != "gpt2":
        found = hf.get("model_type") if isinstance(hf, dict) else None
        raise GPT2Error(f"{path}: not a GPT-2 (model_type {found!r}, not 'gpt2')")
    if not all(isinstance(hf.get(key), int) for key in ("n_positions", "vocab_size", "n_layer", "n_head", "n_embd")):
        raise GPT2Error(f"{path}: a GPT-2 this trainer cannot run: its sizes are not integers")
    expected = {"activation_function": ("gelu_new", "gelu_pytorch_tanh"),  # both GELU's tanh approximation
                "n_inner": (None, 4 * hf["n_embd"]), "layer_norm_epsilon": (1e-5,), "scale_attn_weights": (True,),
                "scale_attn_by_inverse_layer_idx": (False,), "reorder_and_upcast_attn": (False,)}
    unlike = {key: hf[key] for key, values in expected.items() if key in hf and hf[key] not in values}
    if unlike:
        raise GPT2Error(f"{path}: a GPT-2 this trainer cannot run: " + ", ".join(f"{k} {v}" for k, v in unlike.items()))
    V = hf["vocab_size"]
    return dict(max_seq_len=hf["n_positions"], vocab_size=V, padded_vocab_size=(V + 127) // 128 * 128,
                num_layers=hf["n_layer"], num_heads=hf["n_head"], channels=hf["n_embd"]), path


def weights_file(folder):
    """The folder's model.safetensors, checked to be one file that exists."""
    path = os.path.join(folder, "model.safetensors")
    check_regular_file(path)
    if os.path.exists(path + ".index.json"):
        raise GPT2Error(f"{path}: split over several files (model.safetensors.index.json), which this trainer does "
                        "not read: save the model with a max_shard_size larger than it")
    if not os.path.exists(path):
        raise GPT2Error(f"{path}: missing (weights are read from safetensors only, never from a pickled "
                        "pytorch_model.bin)")
    return path


def read_weights(path, config, params):
    """A Hugging Face GPT-2's weights from its model.safetensors into `params` (the model's tensors, zeros, by
    llm.c's names), in our layout: transposed where it keeps (in, out), wte padded to Vp rows (which stay zero)."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="np") as f:
            names = set(f.keys())
            prefix = "transformer." if "transformer.wte.weight" in names else ""
            known = {prefix + name.format(l) for name in HF_NAMES.values() for l in range(config.num_layers)}
            unknown = sorted(name for name in names - known - {"lm_head.weight"}  # and the causal masks of old saves:
                             if not re.fullmatch(re.escape(prefix) + r"h\.[0-9]+\.attn\.(masked_)?bias", name))
            if unknown:
                raise GPT2Error(f"{path}: tensors that its config.json has no place for: {', '.join(unknown[:3])}")
            bfloat16 = [name for name in names if f.get_slice(name).get_dtype() == "BF16"]
            if bfloat16:
                raise GPT2Error(f"{path}: bfloat16 weights ({bfloat16[0]}...), which safetensors' numpy API cannot "
                                "read: save the model in float32 or float16")

            def tensor(name):
                if prefix + name not in names:
                    raise GPT2Error(f"{path}: no tensor {prefix + name}")
                return f.get_tensor(prefix + name)

            for name, hf_name in HF_NAMES.items():
                ours = getattr(params, name)
                for l, part in enumerate(ours if "{}" in hf_name else [ours]):
                    value = tensor(hf_name.format(l))
                    value = value.T if name in HF_TRANSPOSED else value
                    target = part[:config.vocab_size] if name == "wte" else part
                    if value.shape != target.shape:
                        raise GPT2Error(f"{path}: {prefix + hf_name.format(l)} is {value.shape}, not {target.shape}")
                    target[...] = value
            if "lm_head.weight" in names and not np.array_equal(f.get_tensor("lm_head.weight"),
                                                                params.wte[:config.vocab_size]):
                raise GPT2Error(f"{path}: its lm_head is not its wte: GPT-2 ties them, and so does this trainer")
    except (OSError, ValueError, TypeError, SafetensorError) as e:  # a damaged file, a dtype numpy lacks
        raise GPT2Error(f"{path}: cannot read it as safetensors: {e}") from None
