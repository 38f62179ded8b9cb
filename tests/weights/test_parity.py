"""Our loaders + backbones reproduce HF transformers' logits (fixtures from scripts/make_parity_fixtures.py)."""
import functools
import json
import os
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from umema_jax.backbones import build_backbone
from umema_jax.weights import WeightLoadError, load_backbone_weights
from umema_jax.weights.load import load_gguf

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures", "parity")
TOL = 1e-4


@functools.lru_cache(maxsize=None)
def _fwd(cfg):
    module = build_backbone(cfg)
    return jax.jit(lambda p, ids, mask: module.apply({"params": p}, ids, mask, compute_logits=True).logits)


def _ref(arch):
    r = np.load(os.path.join(FIX, arch, "reference.npz"))
    return r["input_ids"], r["attention_mask"], r["logits"]


def _max_diff(cfg, params, ids, mask, ref):
    out = np.asarray(_fwd(cfg)(params, ids, mask))
    return float(np.abs(np.where(mask[..., None] > 0, out - ref, 0.0)).max())


def _left_pad(ids, mask, logits):
    """Moves every row's real tokens to the right end (left padding)."""
    ids2, mask2, lg2 = np.zeros_like(ids), np.zeros_like(mask), np.zeros_like(logits)
    n = ids.shape[1]
    for b in range(ids.shape[0]):
        k = int(mask[b].sum())
        ids2[b, n - k:], mask2[b, n - k:], lg2[b, n - k:] = ids[b, :k], 1, logits[b, :k]
    return ids2, mask2, lg2


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hf_checkpoint_parity_right_and_left_padding(arch):
    cfg, params = load_backbone_weights(os.path.join(FIX, arch))
    ids, mask, ref = _ref(arch)
    assert mask.min() == 0, "fixture must contain padded rows"
    d_right = _max_diff(cfg, params, ids, mask, ref)
    d_left = _max_diff(cfg, params, *_left_pad(ids, mask, ref))
    print(f"{arch}: parity max|diff| right={d_right:.2e} left={d_left:.2e}")
    assert d_right <= TOL and d_left <= TOL


def test_llama_fixture_exercises_gqa_theta_and_llama3_scaling():
    """The LLaMA fixture really uses GQA, theta != 1e4 and llama3 scaling (dropping it breaks parity)."""
    cfg, params = load_backbone_weights(os.path.join(FIX, "llama"))
    assert cfg.num_kv_heads < cfg.num_heads and cfg.rope_theta != 10000.0
    assert cfg.rope_scaling["rope_type"] == "llama3" and not cfg.tie_word_embeddings
    ids, mask, ref = _ref("llama")
    assert _max_diff(cfg.replace(rope_scaling=None), params, ids, mask, ref) > 1e-3


def _permute(w, n_head):
    """llama.cpp convert_hf_to_gguf's q/k row permutation (HF rotate-half -> GGML interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_llama_gguf(path, folder, with_rope_freqs=True):
    """The tiny HF LLaMA in llama.cpp layout: GGUF names, permuted q/k, F32, rope_freqs for llama3."""
    import gguf
    with open(os.path.join(folder, "config.json")) as f:
        hf = json.load(f)
    st = load_file(os.path.join(folder, "model.safetensors"))
    heads, kv = hf["num_attention_heads"], hf["num_key_value_heads"]
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(hf["num_hidden_layers"])
    w.add_context_length(hf["max_position_embeddings"])
    w.add_embedding_length(hf["hidden_size"])
    w.add_feed_forward_length(hf["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(hf["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(hf["rms_norm_eps"])
    w.add_vocab_size(hf["vocab_size"])
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for key, arr in st.items():
        if key in names:
            name = names[key]
        else:
            i, rest = key[len("model.layers."):].split(".", 1)
            name = f"blk.{i}.{per_layer[rest.rsplit('.', 1)[0]]}.weight"
        if name.endswith("attn_q.weight"):
            arr = _permute(arr, heads)
        elif name.endswith("attn_k.weight"):
            arr = _permute(arr, kv)
        w.add_tensor(name, np.ascontiguousarray(arr, np.float32))
    if with_rope_freqs:   # llama.cpp stores llama3 scaling as per-frequency divisors
        from umema_jax.backbones.layers import rope_inv_freq
        sc = {k: v for k, v in hf["rope_parameters"].items() if k != "rope_theta"}
        hd = hf["hidden_size"] // heads
        base = rope_inv_freq(hd, hf["rope_parameters"]["rope_theta"], None)
        w.add_tensor("rope_freqs.weight", (base / rope_inv_freq(hd, hf["rope_parameters"]["rope_theta"], sc))
                     .astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_loader_unpermutes_qk_and_matches_hf(tmp_path):
    path = str(tmp_path / "tiny-llama.gguf")
    _write_llama_gguf(path, os.path.join(FIX, "llama"))
    cfg, params = load_gguf(path)
    hf_cfg, _ = load_backbone_weights(os.path.join(FIX, "llama"))
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.rope_theta, cfg.tie_word_embeddings) == \
        (hf_cfg.num_heads, hf_cfg.num_kv_heads, hf_cfg.rope_theta, False)
    ids, mask, ref = _ref("llama")
    d = _max_diff(cfg, params, ids, mask, ref)
    print(f"gguf parity max|diff|={d:.2e}")
    assert d <= TOL


def test_msgpack_and_sharded_checkpoints(tmp_path):
    """GPT-2 `flax_model.msgpack` (FlaxConv1D kernels [out,in]) and sharded safetensors give the same params."""
    from flax.serialization import msgpack_serialize
    src = os.path.join(FIX, "gpt2")
    st = load_file(os.path.join(src, "model.safetensors"))
    _, ref_params = load_backbone_weights(src)
    # Flax layout
    fl = tmp_path / "flax"
    fl.mkdir()
    shutil.copy(os.path.join(src, "config.json"), fl / "config.json")
    tree: dict = {}
    for key, arr in st.items():
        *mods, leaf = key.split(".")
        if mods[-1] in ("ln_1", "ln_2", "ln_f") and leaf == "weight":
            leaf = "scale"
        elif mods[-1] in ("wte", "wpe"):
            leaf = "embedding"
        elif leaf == "weight":
            leaf, arr = "kernel", arr.T
        node = tree
        for m in mods:
            node = node.setdefault(m, {})
        node[leaf] = np.ascontiguousarray(arr)
    (fl / "flax_model.msgpack").write_bytes(msgpack_serialize(tree))
    _, p_flax = load_backbone_weights(str(fl))
    # two shards + index, saved without the `transformer.` prefix (as the bare GPT2Model does)
    sh = tmp_path / "sharded"
    sh.mkdir()
    shutil.copy(os.path.join(src, "config.json"), sh / "config.json")
    keys = sorted(st)
    weight_map = {}
    for j, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        fname = f"model-0000{j + 1}-of-00002.safetensors"
        save_file({k.replace("transformer.", ""): st[k] for k in part}, str(sh / fname))
        weight_map.update({k.replace("transformer.", ""): fname for k in part})
    (sh / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _, p_shard = load_backbone_weights(str(sh))
    for other in (p_flax, p_shard):
        jax.tree_util.tree_map(np.testing.assert_array_equal, ref_params, other)


def test_mismatched_checkpoint_lists_every_problem(tmp_path):
    src = os.path.join(FIX, "llama")
    st = load_file(os.path.join(src, "model.safetensors"))
    del st["model.layers.1.mlp.up_proj.weight"]
    st["model.layers.0.self_attn.rotary_extra.weight"] = np.zeros(3, np.float32)
    st["model.norm.weight"] = np.zeros(7, np.float32)
    shutil.copy(os.path.join(src, "config.json"), tmp_path / "config.json")
    save_file(st, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightLoadError) as err:
        load_backbone_weights(str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg
    for piece in ("model.layers.1.mlp.up_proj.weight", "rotary_extra", "model.norm.weight", "(7,)"):
        assert piece in msg


def test_hub_id_offline_fails_with_one_clear_line():
    with pytest.raises(OSError) as err:
        load_backbone_weights("umema-no-such-org/no-such-model")
    assert "umema-no-such-org/no-such-model" in str(err.value) and "\n" not in str(err.value)
