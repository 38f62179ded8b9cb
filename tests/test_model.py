"""UmemaModel (CONTRACTS.md, docs/METHOD.md): step-0 equality of the four variants, the bank's write/read
discipline inside the model, gradients, parameter budget and config plumbing."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from umema_jax.adapters.lora import LoraConfig
from umema_jax.backbones import get_backbone_config
from umema_jax.memory.fusion import EMAConfig
from umema_jax import methods
from umema_jax.model import UmemaModel, extra_param_counts, init_variables
from umema_jax.uncertainty.um import UMConfig, last_valid_token

TINY = get_backbone_config("gpt2-tiny").replace(vocab_size=97)
METHODS = ("lora", "lora+um", "lora+ema", "full")
UM = UMConfig(d_u=8)
EMA = EMAConfig(slots=16, d_u=8)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch(seed=0, bsz=4, n=9, ner=False):
    r = np.random.RandomState(seed)
    lengths = r.randint(3, n + 1, size=bsz)
    lengths[0] = n
    mask = (np.arange(n)[None] < lengths[:, None]).astype(np.int32)
    ids = (r.randint(1, 97, size=(bsz, n)) * mask).astype(np.int32)
    labels = np.where(mask > 0, r.randint(0, 3, size=(bsz, n)), -100) if ner else r.randint(0, 3, size=bsz)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels.astype(np.int32),
            "example_mask": np.ones(bsz, np.int32), "task_id": np.zeros(bsz, np.int32)}


def _model(method, backbone=TINY, **kw):
    """A tiny GPT-2 (vocab 97) model of the paper's variant `method`, with small UM/EMA sizes."""
    kw.setdefault("task_type", "cls")
    cls = methods.get(method)
    return UmemaModel(backbone, LoraConfig(rank=4), num_labels=3, uncertainty=UM if cls.use_um else None,
                      ema_cfg=EMA if cls.use_ema else None, **kw)


def make_model(config, backbone_cfg=None):
    """The model `config.model.method` builds (the method decides the components)."""
    return methods.get(config.model.method)(None).make_model(config, backbone_cfg)


def _perturb_lora(variables):
    """Non-zero LoRA B so the comparison covers an adapted (not just pretrained) backbone."""
    return dict(variables, lora=jax.tree_util.tree_map(lambda x: x + 0.05, variables["lora"]))


def _variant_variables(full_variables, method):
    """The variables a `method` model owns, cut from the `full` model's (same rng, same sub-trees)."""
    use_um, use_ema = {"lora": (0, 0), "lora+um": (1, 0), "lora+ema": (0, 1), "full": (1, 1)}[method]
    keep = {"backbone", "head"} | ({"um"} if use_um else set()) | ({"ema"} if use_ema else set())
    out = {"params": {k: v for k, v in full_variables["params"].items() if k in keep},
           "lora": full_variables["lora"]}
    if use_ema:
        out["memory"] = full_variables["memory"]
        if not use_um:  # without UM the query has no M_U projection
            out["params"]["ema"] = {k: v for k, v in out["params"]["ema"].items() if k != "query_from_um"}
    return out


@pytest.fixture(scope="module")
def full_cls():
    """One real init of the `full` model (initialisation compiles slowly on CPU; applies are cheap)."""
    model = _model("full")
    variables = init_variables(model, jax.random.PRNGKey(1), (2, 8))
    train_apply = jax.jit(lambda v, b: model.apply(v, b, train=True, mutable=["memory"]))
    eval_apply = jax.jit(lambda v, b: model.apply(v, b, train=False, mutable=["memory"]))
    return model, variables, train_apply, eval_apply


def test_same_rng_gives_same_shared_weights_for_every_method(full_cls):
    """init_variables of `lora` and `full` agree on backbone, head and LoRA (so the variants
    cut from one init in the step-0 test are what separate runs with one seed get)."""
    _, full_vars, _, _ = full_cls
    lora_vars = init_variables(_model("lora"), jax.random.PRNGKey(1), (2, 8))
    assert set(lora_vars) == {"params", "lora"} and set(lora_vars["params"]) == {"backbone", "head"}
    for a, b in zip(jax.tree_util.tree_leaves(lora_vars), jax.tree_util.tree_leaves(_variant_variables(full_vars, "lora"))):
        np.testing.assert_array_equal(a, b)
    # Given backbone weights, only the branches and the bank are created, with the same values.
    ema_model = _model("lora+ema")
    lazy = init_variables(ema_model, jax.random.PRNGKey(1), (2, 8), backbone_params=full_vars["params"]["backbone"])
    want = _variant_variables(full_vars, "lora+ema")
    assert jax.tree_util.tree_structure(lazy) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(lazy), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("task_type,pooling,methods", [("cls", "last", METHODS), ("cls", "mean", ("lora", "full")),
                                                       ("ner", "last", ("lora", "full"))])
def test_step0_raw_logits_of_all_variants_equal_plain_lora(full_cls, task_type, pooling, methods):
    """What is equal at step 0: the summary fed to the head, hence raw_logits, for every variant
    (exact for last/NER, float rounding for mean). Calibrated logits are raw / T with T = 1 for
    lora and lora+ema and 1 < T < 1.1 for the UM variants."""
    batch = _batch(ner=task_type == "ner")
    full_vars = _perturb_lora(full_cls[1])
    outs = {}
    for method in methods:
        model = _model(method, task_type=task_type, pooling=pooling)
        outs[method] = jax.jit(lambda v, b: model.apply(v, b, train=False))(_variant_variables(full_vars, method),
                                                                             batch)
    ref = outs["lora"]
    np.testing.assert_array_equal(ref.logits, ref.raw_logits)
    tol = 1e-5 if pooling == "mean" else 0.0
    for method in methods[1:]:
        out = outs[method]
        np.testing.assert_allclose(out.raw_logits, ref.raw_logits, atol=tol, rtol=0, err_msg=method)
        np.testing.assert_allclose(out.logits * out.temperature[..., None], out.raw_logits, rtol=1e-6)
    if "lora+ema" in outs:
        np.testing.assert_array_equal(outs["lora+ema"].logits, ref.logits)
    for method in set(methods) & {"lora+um", "full"}:
        t = np.asarray(outs[method].temperature)
        valid = batch["attention_mask"] > 0 if task_type == "ner" else np.ones(t.shape, bool)
        assert np.all((t[valid] > 1.0) & (t[valid] < 1.1)), method
        want = (4, 9) if task_type == "ner" else (4,)
        for key in ("u_ale", "u_epi", "u_bar", "temperature"):
            assert outs[method].aux[key].shape == want, key
        if method == "full":
            assert outs[method].aux["memory_top_indices"].shape == want + (3,)
            assert outs[method].aux["memory_top_weights"].shape == want + (3,)


def test_param_tree_layout_and_bank_is_not_a_parameter(full_cls):
    model, variables, _, _ = full_cls
    assert set(variables) == {"params", "lora", "memory"}
    assert set(variables["params"]) == {"backbone", "head", "um", "ema"}
    assert set(variables["memory"]) == {"keys", "values", "pointer", "filled"}
    assert variables["memory"]["keys"].shape == (16, TINY.hidden_size)
    assert variables["memory"]["pointer"].dtype == jnp.int32
    assert "c_attn" in str(jax.tree_util.tree_structure(variables["lora"]["backbone"]))


def test_evaluation_never_writes_and_is_order_independent(full_cls):
    model, variables, _, eval_apply = full_cls
    # W_r ≠ 0 and written slots, so the outputs really read the bank (checked below).
    from umema_jax.memory.bank import write_bank
    memory = variables["memory"]
    for row in np.random.RandomState(1).randn(4, TINY.hidden_size).astype(np.float32):
        memory = write_bank(memory, jnp.asarray(row))
    params = dict(variables["params"], ema=jax.tree_util.tree_map(lambda x: x + 0.05, variables["params"]["ema"]))
    variables = dict(variables, params=params, memory=memory)
    a, b = _batch(seed=1), _batch(seed=2)
    other = dict(memory, values=memory["values"][::-1])
    out_other, _ = eval_apply(dict(variables, memory=other), a)
    out_a, mem = eval_apply(variables, a)
    assert float(np.max(np.abs(np.asarray(out_other.logits) - np.asarray(out_a.logits)))) > 1e-4
    for k in ("keys", "values", "pointer", "filled"):
        np.testing.assert_array_equal(mem["memory"][k], variables["memory"][k])
    # b then a gives the same outputs for a as a alone; a permuted batch gives permuted outputs.
    eval_apply(variables, b)
    out_a2, _ = eval_apply(variables, a)
    np.testing.assert_array_equal(out_a.logits, out_a2.logits)
    perm = np.array([2, 0, 3, 1])
    out_p, _ = eval_apply(variables, {k: v[perm] for k, v in a.items()})
    np.testing.assert_allclose(out_p.logits, np.asarray(out_a.logits)[perm], atol=1e-5)


def test_training_writes_one_slot_and_padding_rows_do_not_count(full_cls):
    model = _model("lora+ema")
    variables = _variant_variables(full_cls[1], "lora+ema")
    apply = jax.jit(lambda v, b: model.apply(v, b, train=True, mutable=["memory"]))
    batch = _batch(seed=3)
    _, mut = apply(variables, batch)
    mem0, mem1 = variables["memory"], mut["memory"]
    assert int(mem0["pointer"]) == 0 and int(mem1["pointer"]) == 1
    assert int(mem0["filled"]) == 0 and int(mem1["filled"]) == 1
    np.testing.assert_array_equal(mem1["keys"][1:], mem0["keys"][1:])
    np.testing.assert_array_equal(mem1["values"][1:], mem0["values"][1:])
    np.testing.assert_array_equal(mem1["keys"][0], mem1["values"][0])
    # ū = 0 without UM and W_r = 0 at init: the entry is the plain mean of last-token states.
    from umema_jax.backbones import build_backbone
    bb = build_backbone(TINY, lora=LoraConfig(rank=4))
    hs = jax.jit(bb.apply)({"params": variables["params"]["backbone"], "lora": variables["lora"]["backbone"]},
                           batch["input_ids"], batch["attention_mask"]).last_hidden_state
    c = np.asarray(last_valid_token(hs, jnp.asarray(batch["attention_mask"])))
    np.testing.assert_allclose(mem1["keys"][0], c.mean(0), atol=1e-5)
    # Padding rows (example_mask = 0) with garbage tokens do not count.
    padded = {k: v.copy() for k, v in batch.items()}
    padded["example_mask"][2:] = 0
    padded["input_ids"][2:] = 7
    _, mut_p = apply(variables, padded)
    np.testing.assert_allclose(mut_p["memory"]["keys"][0], c[:2].mean(0), atol=1e-5)
    # A batch made only of padding rows writes nothing.
    _, mut_e = apply(variables, dict(batch, example_mask=np.zeros(4, np.int32)))
    assert int(mut_e["memory"]["pointer"]) == 0
    np.testing.assert_array_equal(mut_e["memory"]["keys"], mem0["keys"])


def test_no_gradient_reaches_the_bank(full_cls):
    """Grad w.r.t. the trainable branches and the bank (as the trainer does: backbone closed over)."""
    model = _model("lora+ema")
    variables = _variant_variables(full_cls[1], "lora+ema")
    batch = _batch(seed=4)
    trainable = {k: v for k, v in variables["params"].items() if k != "backbone"}
    trainable["ema"] = jax.tree_util.tree_map(lambda x: x + 0.01, trainable["ema"])  # W_r ≠ 0: bank on the loss path

    def loss(trainable, memory):
        params = dict(trainable, backbone=variables["params"]["backbone"])
        out, _ = model.apply(dict(variables, params=params, memory=memory), batch, train=True,
                             mutable=["memory"])
        return optax.softmax_cross_entropy_with_integer_labels(out.logits, batch["labels"]).mean()

    # Written slots (a never-written slot is masked out of retrieval, so nothing would be read).
    from umema_jax.memory.bank import write_bank
    memory = variables["memory"]
    for row in np.random.RandomState(0).randn(5, TINY.hidden_size).astype(np.float32):
        memory = write_bank(memory, jnp.asarray(row))
    g_params, g_mem = jax.jit(jax.grad(loss, argnums=(0, 1), allow_int=True))(trainable, memory)
    assert float(jnp.abs(g_mem["keys"]).sum()) == 0.0 and float(jnp.abs(g_mem["values"]).sum()) == 0.0
    assert "memory" not in variables["params"]
    for branch in ("head", "ema"):
        assert sum(float(jnp.abs(x).sum()) for x in jax.tree_util.tree_leaves(g_params[branch])) > 0, branch
    assert sum(float(jnp.abs(x).sum()) for x in jax.tree_util.tree_leaves(g_params["ema"]["retrieved_up"])) > 0


def test_um_and_ema_add_at_most_one_percent_of_backbone_params():
    counts = {}
    for name in ("gpt2", "smollm2-135m", "llama3-8b"):
        c = extra_param_counts(name, uncertainty=UMConfig(), ema_cfg=EMAConfig())
        counts[name] = c
        ratio = (c["um"] + c["ema"]) / c["backbone"]
        print(f"{name}: backbone={c['backbone']:,} um={c['um']:,} ema={c['ema']:,} "
              f"ratio={100 * ratio:.3f}% bank_buffer={c['memory']:,}")
        assert ratio <= 0.01, (name, ratio)
    assert 124e6 < counts["gpt2"]["backbone"] < 125e6
    assert 134e6 < counts["smollm2-135m"]["backbone"] < 136e6
    assert 8.0e9 < counts["llama3-8b"]["backbone"] < 8.1e9


def test_make_model_reads_the_config():
    import ml_collections
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(
        name="gpt2-tiny", method="lora+um", pooling="mean", dtype="float32",
        lora=dict(rank=4, alpha=8.0, dropout=0.1, target_regex=""),
        um=dict(d_u=16, quant_levels=4, layers=[0, -1]), ema=dict(slots=32, tau0=0.5)))
    c.task = ml_collections.ConfigDict(dict(type="ner", num_labels=5))
    m = make_model(c)
    assert (m.pooling, m.task_type, m.num_labels) == ("mean", "ner", 5)
    assert m.lora_cfg.rank == 4 and m.lora_cfg.scale == 2.0 and m.lora_cfg.target_regex is None
    assert m.uncertainty == UMConfig(d_u=16, quant_levels=4, layers=(0, -1))
    assert m.ema_cfg is None                         # lora+um builds no memory
    c.model.method = "full"
    assert make_model(c).ema_cfg.slots == 32 and make_model(c).ema_cfg.tau0 == 0.5
    with pytest.raises(ValueError):
        methods.get("lora+mem")


_SHARDED_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jax.experimental.shard_map import shard_map
    assert jax.device_count() == 2, jax.devices()
    from tests.test_model import _batch, _model
    from umema_jax.model import dummy_batch
    from umema_jax.memory.bank import confidence_weighted_entry
    model = _model("lora+ema")
    # Random values in the init's shapes (no init compile; non-zero W_r so c̃ differs from c).
    shapes = jax.eval_shape(lambda r: model.init({"params": r, "dropout": r}, dummy_batch((2, 8))),
                            jax.random.PRNGKey(0))
    rs = np.random.RandomState(0)
    variables = jax.tree_util.tree_map(
        lambda s: jnp.asarray(0.1 * rs.randn(*s.shape), s.dtype) if jnp.issubdtype(s.dtype, jnp.floating)
        else jnp.zeros(s.shape, s.dtype), shapes)
    batch = _batch(seed=5, bsz=6)
    batch["example_mask"][-1] = 0
    fn = lambda v, b: model.apply(v, b, train=True, mutable=["memory"])[1]["memory"]
    one = jax.jit(fn)(variables, batch)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
    two = jax.jit(fn)(variables, sharded)
    assert int(one["pointer"]) == int(two["pointer"]) == 1
    np.testing.assert_allclose(np.asarray(two["keys"]), np.asarray(one["keys"]), atol=1e-5)
    # shard_map with an axis name: the psum makes the entry global.
    reps = np.random.RandomState(0).randn(6, 8).astype(np.float32)
    ub = np.linspace(0, 0.9, 6).astype(np.float32)
    wm = np.array([1, 1, 1, 1, 1, 0], np.float32)
    ref = confidence_weighted_entry(reps, ub, wm)
    f = shard_map(lambda r, u, w: confidence_weighted_entry(r, u, w, axis_name="data"), mesh=mesh,
                  in_specs=(P("data"), P("data"), P("data")), out_specs=P())
    np.testing.assert_allclose(np.asarray(f(reps, ub, wm)), np.asarray(ref), atol=1e-6)
    print("SHARDED_OK")
""")


def test_two_device_sharded_batch_writes_the_same_slot():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert "SHARDED_OK" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]


def test_every_um_and_ema_setting_is_a_config_key_with_the_dataclass_default():
    """`--config.model.um.X` / `--config.model.ema.X` work for every field, and the
    defaults shown in umema_jax/defaults.py are the ones the branches use."""
    import dataclasses
    from umema_jax.defaults import base_config
    c = base_config()
    for section, cls in ((c.model.um, UMConfig), (c.model.ema, EMAConfig)):
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        assert set(section.keys()) == set(fields), cls.__name__
    c.task = {"type": "cls", "num_labels": 3}
    c.model.name, c.model.method = "gpt2-tiny", "full"
    assert make_model(c).uncertainty == UMConfig() and make_model(c).ema_cfg == EMAConfig()
    c.model.um.temperature_max = 2.0
    c.model.um.layers = (0, -1)
    c.model.ema.slots = 32
    c.model.ema.retrieval = "dot"
    m = make_model(c)
    assert m.uncertainty.temperature_max == 2.0 and m.uncertainty.layers == (0, -1)
    assert m.ema_cfg.slots == 32 and m.ema_cfg.retrieval == "dot" and m.ema_cfg.axis_name is None
