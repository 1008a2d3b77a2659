"""
llmc/hf.py and dev/hf_gpt2.py: Hugging Face GPT-2 in and out, with no network and no PyTorch. Small folders in
transformers' layout are written here with numpy and safetensors, read by the trainer (-e FOLDER), converted to
llm.c's file and back by dev/hf_gpt2.py; the hub's download is replaced by a stand-in. (`python -m dev.hf_gpt2
check` compares with transformers itself.)
"""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import train_gpt2 as tg
from dev import hf_gpt2
from llmc import cli
from llmc.files import GPT2Error
from llmc.mpi import ONE_PROCESS
from llmc.run_dir import RunDirectory
from llmc.tokenizer import gpt2_encoding_offline
from tests.helpers import run_main, write_tokens

V, MAX_T, L, NH, C = 50, 16, 2, 2, 8


def hf_gpt2_folder(path, prefix="transformer.", lm_head=False, seed=0, **config_changes):
    """A random GPT-2 as transformers saves it: config.json, and model.safetensors with Conv1D weights (in, out)."""
    rng = np.random.default_rng(seed)
    shapes = {"wte.weight": (V, C), "wpe.weight": (MAX_T, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for l in range(L):
        shapes.update({f"h.{l}.ln_1.weight": (C,), f"h.{l}.ln_1.bias": (C,), f"h.{l}.attn.c_attn.weight": (C, 3 * C),
                       f"h.{l}.attn.c_attn.bias": (3 * C,), f"h.{l}.attn.c_proj.weight": (C, C),
                       f"h.{l}.attn.c_proj.bias": (C,), f"h.{l}.ln_2.weight": (C,), f"h.{l}.ln_2.bias": (C,),
                       f"h.{l}.mlp.c_fc.weight": (C, 4 * C), f"h.{l}.mlp.c_fc.bias": (4 * C,),
                       f"h.{l}.mlp.c_proj.weight": (4 * C, C), f"h.{l}.mlp.c_proj.bias": (C,)})
    tensors = {prefix + name: (0.3 * rng.standard_normal(shape)).astype(np.float32) for name, shape in shapes.items()}
    if lm_head:
        tensors["lm_head.weight"] = tensors[prefix + "wte.weight"].copy()
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"))
    config = {"model_type": "gpt2", "vocab_size": V, "n_positions": MAX_T, "n_embd": C, "n_layer": L, "n_head": NH,
              "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, **config_changes}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return str(path), {name.removeprefix(prefix): value for name, value in tensors.items()}


def test_both_key_layouts_load_transposed_and_padded(tmp_path):
    for prefix, lm_head in (("transformer.", False), ("", True)):
        folder, tensors = hf_gpt2_folder(tmp_path / f"hf{prefix}", prefix, lm_head)
        model = tg.load_gpt2(folder)
        assert (model.config.vocab_size, model.config.padded_vocab_size) == (V, 128)
        p = model.params
        np.testing.assert_array_equal(p.wte[:V], tensors["wte.weight"])
        assert np.all(p.wte[V:] == 0)  # the padded rows
        np.testing.assert_array_equal(p.qkvw[1], tensors["h.1.attn.c_attn.weight"].T)  # Conv1D: (in, out)
        np.testing.assert_array_equal(p.fcprojw[0], tensors["h.0.mlp.c_proj.weight"].T)
        np.testing.assert_array_equal(p.ln2b[1], tensors["h.1.ln_2.bias"])
        np.testing.assert_array_equal(p.lnfw, tensors["ln_f.weight"])


def forward_logits(model, tokens):
    model.allocate(*tokens.shape)
    model.forward(tokens)
    return model.activations(*tokens.shape).logits[:, :, :V].copy()


def numpy_gpt2_logits(tensors, tokens):
    """transformers' GPT-2 forward pass, written out in float64 from its own tensors (no trainer code)."""
    def layernorm(x, w, b):
        return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b

    t = {name: value.astype(np.float64) for name, value in tensors.items()}
    T = tokens.shape[1]
    x = t["wte.weight"][tokens] + t["wpe.weight"][:T]
    for l in range(L):
        h = layernorm(x, t[f"h.{l}.ln_1.weight"], t[f"h.{l}.ln_1.bias"])
        q, k, v = np.split(h @ t[f"h.{l}.attn.c_attn.weight"] + t[f"h.{l}.attn.c_attn.bias"], 3, axis=-1)
        q, k, v = (a.reshape(*a.shape[:2], NH, C // NH).transpose(0, 2, 1, 3) for a in (q, k, v))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(C // NH) + np.triu(np.full((T, T), -np.inf), 1)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        y = (weights @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = x + y @ t[f"h.{l}.attn.c_proj.weight"] + t[f"h.{l}.attn.c_proj.bias"]
        h = layernorm(x, t[f"h.{l}.ln_2.weight"], t[f"h.{l}.ln_2.bias"]) @ t[f"h.{l}.mlp.c_fc.weight"]
        h = h + t[f"h.{l}.mlp.c_fc.bias"]
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
        x = x + h @ t[f"h.{l}.mlp.c_proj.weight"] + t[f"h.{l}.mlp.c_proj.bias"]
    return layernorm(x, t["ln_f.weight"], t["ln_f.bias"]) @ t["wte.weight"].T


def test_logits_of_the_folder_and_of_its_llmc_file(tmp_path):
    folder, tensors = hf_gpt2_folder(tmp_path / "hf")
    tokens = np.random.default_rng(1).integers(0, V, (2, MAX_T), dtype=np.int32)
    from_folder = forward_logits(tg.load_gpt2(folder), tokens)
    np.testing.assert_allclose(from_folder, numpy_gpt2_logits(tensors, tokens), rtol=0, atol=1e-4)
    assert hf_gpt2.main(["import", folder, "-o", str(tmp_path / "model.bin")]) == 0
    np.testing.assert_array_equal(forward_logits(tg.load_gpt2(str(tmp_path / "model.bin")), tokens), from_folder)


def test_import_then_export_gives_the_same_tensors(tmp_path):
    folder, tensors = hf_gpt2_folder(tmp_path / "hf")
    assert hf_gpt2.main(["import", folder, "-o", str(tmp_path / "model.bin")]) == 0
    assert hf_gpt2.main(["export", str(tmp_path / "model.bin"), "-o", str(tmp_path / "out")]) == 0
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(exported) == sorted("transformer." + name for name in tensors)  # no padded rows, no lm_head
    for name, value in tensors.items():
        np.testing.assert_array_equal(exported["transformer." + name], value)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["model_type"], config["n_layer"], config["n_head"], config["n_embd"], config["vocab_size"],
            config["n_positions"]) == ("gpt2", L, NH, C, V, MAX_T)
    assert not (tmp_path / "out" / "vocab.json").exists()  # not GPT-2's vocabulary: no GPT-2 tokenizer
    assert hf_gpt2.main(["export", str(tmp_path / "model.bin"), "-o", str(tmp_path / "out")]) == 1  # not empty


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_exported_files_have_the_permissions_of_the_users_umask(tmp_path, umask):
    # files written for other programs (transformers, another user's job) get what every file of the user gets
    folder, _ = hf_gpt2_folder(tmp_path / "hf")
    assert hf_gpt2.main(["import", folder, "-o", str(tmp_path / "model.bin")]) == 0
    previous = os.umask(umask)
    try:
        assert hf_gpt2.main(["export", str(tmp_path / "model.bin"), "-o", str(tmp_path / "out")]) == 0
    finally:
        os.umask(previous)
    modes = {name: os.stat(tmp_path / "out" / name).st_mode & 0o777 for name in os.listdir(tmp_path / "out")}
    assert modes == {"config.json": 0o666 & ~umask, "model.safetensors": 0o666 & ~umask}, modes


def test_export_of_gpt2s_vocabulary_carries_its_tokenizer(tmp_path):
    config = tg.GPT2Config(max_seq_len=8, vocab_size=50257, padded_vocab_size=50304, num_layers=1, num_heads=1,
                           channels=4)
    model = tg.GPT2(config, np.ones(tg.num_parameters(config), dtype=np.float32))
    tg.write_model_file(str(tmp_path / "model.bin"), model)
    assert hf_gpt2.main(["export", str(tmp_path / "model.bin"), "-o", str(tmp_path / "out")]) == 0
    vocab = json.loads((tmp_path / "out" / "vocab.json").read_text(encoding="utf-8"))
    merges = (tmp_path / "out" / "merges.txt").read_text(encoding="utf-8").splitlines()
    encoding = gpt2_encoding_offline()
    assert len(vocab) == 50257 and vocab["<|endoftext|>"] == 50256 and vocab["Hello"] == encoding.encode("Hello")[0]
    assert merges[0].startswith("#version") and len(merges) == 50001
    tokenizer_config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert tokenizer_config["eos_token"] == "<|endoftext|>"


def test_bfloat16_import_is_llmcs_version_5(tmp_path):
    folder, tensors = hf_gpt2_folder(tmp_path / "hf")
    assert hf_gpt2.main(["import", folder, "-o", str(tmp_path / "bf16.bin"), "--dtype", "bfloat16"]) == 0
    assert np.fromfile(tmp_path / "bf16.bin", dtype="<i4", count=2).tolist() == [20240326, 5]
    widened = tg.load_gpt2(str(tmp_path / "bf16.bin")).params.wte[:V]
    exact = tensors["wte.weight"]
    assert np.all(widened.view(np.uint32) & 0xFFFF == 0)  # bfloat16 values
    assert np.abs(widened - exact).max() <= np.abs(exact).max() / 256  # rounded to nearest: half a bf16 step


def test_training_from_the_folder_is_training_from_its_llmc_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder, _ = hf_gpt2_folder(tmp_path / "hf")
    assert hf_gpt2.main(["import", folder, "-o", "model.bin"]) == 0
    rng = np.random.default_rng(2)
    write_tokens(tmp_path / "train.bin", rng.integers(0, V, 400))
    write_tokens(tmp_path / "val.bin", rng.integers(0, V, 100))
    argv = ["-i", "train.bin", "-j", "val.bin", "-b", "2", "-t", "8", "-x", "4", "-v", "2", "-s", "0"]
    runs = []
    for source in (folder, "model.bin"):
        code, out, err = run_main(["-e", source] + argv, capsys)
        assert code == 0, err
        runs.append([line.split(" (took")[0] for line in out.splitlines() if line.startswith(("step ", "val "))])
    assert runs[0] == runs[1] and len(runs[0]) == 7


@pytest.mark.parametrize("case, fragment", [
    ("not gpt2", "not a GPT-2 (model_type 'llama', not 'gpt2')"),
    ("activation", "a GPT-2 this trainer cannot run: activation_function relu"),
    ("no safetensors", "model.safetensors: missing (weights are read from safetensors only, never from a pickled"),
    ("untied", "its lm_head is not its wte"),
    ("shape", "transformer.wte.weight is (50, 8), not (50, 7)"),
    ("no tensor", "no tensor transformer.ln_f.bias"),
    ("damaged", "cannot read it as safetensors"),
    ("layer-scaled attention", "a GPT-2 this trainer cannot run: scale_attn_by_inverse_layer_idx True"),
    ("extra tensor", "tensors that its config.json has no place for: transformer.h.2.ln_1.weight"),
    ("sharded", "split over several files (model.safetensors.index.json)"),
    ("bfloat16", "bfloat16 weights (transformer."),
])
def test_what_is_not_a_gpt2_it_can_load_is_refused(tmp_path, capsys, case, fragment):
    changes = {"not gpt2": {"model_type": "llama"}, "activation": {"activation_function": "relu"},
               "shape": {"n_embd": 7, "n_head": 1},
               "layer-scaled attention": {"scale_attn_by_inverse_layer_idx": True}}.get(case, {})
    folder, tensors = hf_gpt2_folder(tmp_path / "hf", lm_head=case == "untied", **changes)
    weights = os.path.join(folder, "model.safetensors")
    if case == "no safetensors":
        os.replace(weights, os.path.join(folder, "pytorch_model.bin"))
    elif case == "untied":
        tensors = load_file(weights)
        tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
        save_file(tensors, weights)
    elif case == "no tensor":
        tensors = load_file(weights)
        del tensors["transformer.ln_f.bias"]
        save_file(tensors, weights)
    elif case == "damaged":
        with open(weights, "r+b") as f:
            f.truncate(300)
    elif case == "extra tensor":
        tensors = load_file(weights)
        tensors["transformer.h.2.ln_1.weight"] = np.ones(C, np.float32)
        save_file(tensors, weights)
    elif case == "sharded":
        os.replace(weights, os.path.join(folder, "model-00001-of-00001.safetensors"))
        with open(weights + ".index.json", "w") as f:
            json.dump({"weight_map": {}}, f)
    elif case == "bfloat16":  # safetensors' numpy API writes no bfloat16: the file's layout, written out
        tensors = load_file(weights)
        header, body, offset = {}, b"", 0
        for name, value in tensors.items():
            data = (value.view(np.uint32) >> 16).astype("<u2").tobytes()
            header[name] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [offset, offset + len(data)]}
            body, offset = body + data, offset + len(data)
        encoded = json.dumps(header).encode()
        with open(weights, "wb") as f:
            f.write(len(encoded).to_bytes(8, "little") + encoded + body)
    code, out, err = run_main(["-e", folder, "-i", "x.bin", "-s", "0"], capsys)
    assert code == 1 and err.count("\n") == 1 and fragment in err, err


def test_a_hub_name_is_downloaded_through_huggingface_hub(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    folder, _ = hf_gpt2_folder(tmp_path / "hub_copy")
    calls = []

    def stand_in(repo_id, allow_patterns=None, **kwargs):  # the hub, as huggingface_hub would answer from its cache
        calls.append((repo_id, allow_patterns))
        if repo_id != "someone/tiny-gpt2":  # what it raises offline, for a repository not in its cache
            raise huggingface_hub.errors.LocalEntryNotFoundError(f"{repo_id} is not in the cache")
        return folder

    monkeypatch.setattr(huggingface_hub, "snapshot_download", stand_in)
    assert tg.load_gpt2("someone/tiny-gpt2").config.vocab_size == V
    assert calls == [("someone/tiny-gpt2", ["config.json", "model.safetensors"])]  # never a pickled checkpoint
    with pytest.raises(GPT2Error, match="^someone/missing: not a folder here, and the Hugging Face hub cannot give it "
                                        r"\(LocalEntryNotFoundError: someone/missing is not in the cache\); offline, -e "
                                        "takes an llm.c model file or a shape such as d12$"):
        tg.load_gpt2("someone/missing")


def test_the_default_run_fine_tunes_gpt2_or_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    from huggingface_hub.errors import LocalEntryNotFoundError
    monkeypatch.chdir(tmp_path)  # no gpt2_124M.bin here
    loaded = []

    def load(source):
        loaded.append(source)
        if source == "gpt2" and offline:  # as hf.folder raises it, from the hub's error
            raise GPT2Error("gpt2: not a folder here, ...") from LocalEntryNotFoundError("")
        return source

    monkeypatch.setattr(tg, "load_gpt2", load)
    args = cli.parse_args([])
    for offline in (False, True):
        loaded.clear()
        model = tg.load_run_model(args, RunDirectory(None, ONE_PROCESS))  # a fresh run
        out = capsys.readouterr().out
        if offline:
            assert (model, loaded) == ("d12", ["gpt2", "d12"])
            assert out.splitlines() == [
                "gpt2_124M.bin not found, and the Hugging Face hub cannot give gpt2 (LocalEntryNotFoundError)",
                "training GPT-2 124M's shape (d12) from scratch; for OpenAI's weights, run once online or put "
                "gpt2_124M.bin here"]
        else:
            assert (model, loaded) == ("gpt2", ["gpt2"])
            assert "gpt2_124M.bin not found: fine-tuning OpenAI's GPT-2 124M from the Hugging Face hub (gpt2)" in out


def test_equivalent_spellings_of_gpt2_load(tmp_path):
    # n_inner 4*n_embd is the default it spells out; gelu_pytorch_tanh is GELU's same tanh approximation
    folder, tensors = hf_gpt2_folder(tmp_path / "hf", n_inner=4 * C, activation_function="gelu_pytorch_tanh")
    tokens = np.random.default_rng(3).integers(0, V, (1, MAX_T), dtype=np.int32)
    np.testing.assert_allclose(forward_logits(tg.load_gpt2(folder), tokens), numpy_gpt2_logits(tensors, tokens),
                               rtol=0, atol=1e-4)


def test_export_refuses_a_file_and_leaves_nothing_behind(tmp_path, capsys):
    folder, _ = hf_gpt2_folder(tmp_path / "hf")
    assert hf_gpt2.main(["import", folder, "-o", str(tmp_path / "model.bin")]) == 0
    (tmp_path / "a_file").write_text("")
    assert hf_gpt2.main(["export", str(tmp_path / "model.bin"), "-o", str(tmp_path / "a_file")]) == 1
    assert "a_file: not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert hf_gpt2.main(["export", str(tmp_path / "model.bin"), "-o", str(tmp_path / "empty") + "/."]) == 0
    assert "no tokenizer files: a vocabulary of 50 tokens is not GPT-2's" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "empty")) == ["config.json", "model.safetensors"]
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]
