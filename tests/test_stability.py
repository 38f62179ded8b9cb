"""Stability of the full method: the guards that stop the collapse, and a short real-model
training run on a learnable task where LoRA + UM + EMA must not fall below LoRA."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from umema_jax.adapters.lora import LoraConfig
from umema_jax.backbones import get_backbone_config
from umema_jax.memory.fusion import EMAConfig
from umema_jax.model import UmemaModel, init_variables
from umema_jax.uncertainty.um import UMConfig, UncertaintyModule

from tests.train.standins import synthetic_encoded, tiny_config

TINY = get_backbone_config("gpt2-tiny").replace(vocab_size=50)


def _um_inputs(seed=0, bsz=4, n=7, d=16, layers=3):
    r = np.random.RandomState(seed)
    mask = np.ones((bsz, n), np.int32)
    mask[1, 5:] = 0
    emb = jnp.asarray(r.randn(bsz, n, d), jnp.float32)
    hidden = jnp.asarray(r.randn(layers, bsz, n, d), jnp.float32)
    return emb, hidden, hidden[-1], jnp.asarray(mask), jnp.zeros((bsz,), jnp.int32)


@pytest.mark.parametrize("t_max", [3.0, 0.0])
def test_temperature_stays_bounded_when_m_u_is_scaled_by_100(t_max):
    """The unbounded METHOD form follows a growing M_U without limit (T ≈ 20 in the collapsed run);
    the bounded form never leaves [1, t_max]."""
    inputs = _um_inputs()
    module = UncertaintyModule(UMConfig(d_u=8, temperature_max=t_max, temperature_input="raw"))   # METHOD's T input
    params = jax.jit(module.init)(jax.random.PRNGKey(0), *inputs)["params"]
    params = dict(params)
    # w_T along M_U's mean direction (so w_T·M_U > 0), then M_U × 100.
    m_u = module.apply({"params": params}, *inputs).memory_embedding
    direction = jnp.mean(m_u, 0) / jnp.linalg.norm(jnp.mean(m_u, 0))
    params["w_T"] = {"kernel": 0.1 * direction[:, None], "bias": params["w_T"]["bias"]}
    params["W_m"] = jax.tree.map(lambda x: 100.0 * x, params["W_m"])        # M_U × 100
    out = module.apply({"params": params}, *inputs)
    m_u_norm = float(jnp.linalg.norm(out.memory_embedding, axis=-1).mean())
    t = np.asarray(out.temperature)
    if t_max:
        assert np.all((t >= 1.0) & (t <= t_max)), t
        tok = np.asarray(out.token_temperature)
        assert np.all((tok >= 1.0) & (tok <= t_max)), tok
    else:
        assert m_u_norm > 10 and np.max(t) > 5.0, (m_u_norm, t)   # what the bound prevents


def test_unit_temperature_input_ignores_the_scale_of_m_u():
    """With `temperature_input='unit'` the temperature head reads M_U's direction: scaling M_U by 100
    leaves T unchanged (with 'raw' the same scaling moves T), and one sign-coherent Adam step of size
    lr on w_T moves the head's logit by at most lr·sqrt(d_u) (raw: lr·‖M_U‖₁)."""
    inputs = _um_inputs()
    temps = {}
    for kind in ("raw", "unit"):
        module = UncertaintyModule(UMConfig(d_u=8, temperature_input=kind))
        params = dict(jax.jit(module.init)(jax.random.PRNGKey(0), *inputs)["params"])
        m_u = module.apply({"params": params}, *inputs).memory_embedding
        params["w_T"] = {"kernel": 0.3 * jnp.mean(m_u, 0)[:, None] / jnp.linalg.norm(jnp.mean(m_u, 0)),
                         "bias": params["w_T"]["bias"]}
        before = np.asarray(module.apply({"params": params}, *inputs).temperature)
        params["W_m"] = jax.tree.map(lambda x: 100.0 * x, params["W_m"])
        after = np.asarray(module.apply({"params": params}, *inputs).temperature)
        temps[kind] = (before, after)
    np.testing.assert_allclose(temps["unit"][1], temps["unit"][0], rtol=1e-5)
    assert np.max(np.abs(temps["raw"][1] - temps["raw"][0])) > 1e-2, temps["raw"]

    from umema_jax.uncertainty.um import temperature_input
    m = jnp.asarray(np.random.RandomState(1).randn(5, 64) * 30.0, jnp.float32)
    step = 5e-3 * jnp.sign(m[0])                          # the largest Adam step along example 0
    assert float(jnp.max(jnp.abs(temperature_input(m, "unit") @ step))) <= 5e-3 * 8.0 + 1e-6
    assert float(jnp.abs(temperature_input(m, "raw")[0] @ step)) > 5e-3 * 8.0 * 10
    with pytest.raises(ValueError, match="temperature_input"):
        temperature_input(m, "cosine")


def test_bounded_temperature_equals_the_method_form_near_one():
    from umema_jax.uncertainty.um import calibration_temperature
    base = jnp.linspace(-8.0, -3.0, 6)
    u = jnp.linspace(0.0, 1.0, 6)
    paper = calibration_temperature(base, jnp.float32(-4.0), u)
    bounded = calibration_temperature(base, jnp.float32(-4.0), u, 3.0)
    np.testing.assert_allclose(bounded, paper, atol=2e-4)
    assert np.all(np.diff(np.asarray(calibration_temperature(jnp.zeros(5), jnp.float32(0.0),
                                                             jnp.linspace(0, 4, 5), 3.0))) > 0)


def _experiment(method: str, ema: EMAConfig, um: UMConfig, seed: int = 0):
    """Real UmemaModel (tiny random GPT-2, LoRA r=4) on a learnable synthetic task."""
    from umema_jax.train.loop import Experiment
    from umema_jax.train.state import split_params
    from umema_jax import methods
    cls = methods.get(method)
    model = UmemaModel(TINY, LoraConfig(rank=4), num_labels=3, uncertainty=um if cls.use_um else None,
                       ema_cfg=ema if cls.use_ema else None)
    variables = init_variables(model, jax.random.PRNGKey(seed), batch_shape=(2, 12))
    trained, frozen = split_params(variables["params"], r"^(head|um|ema)/")
    enc = {s: synthetic_encoded(k, seed=i, last_token=True) for i, (s, k) in enumerate(
        (("train", 192), ("dev", 48), ("test", 96)))}

    def evaluate(split, preds):
        labels = np.asarray(enc[split].labels)
        acc = float((np.asarray(preds["probs"]).argmax(-1) == labels).mean())
        return {"accuracy": acc, "primary": acc, "loss": preds["nll_sum"] / preds["targets"]}

    return Experiment(model=model, frozen=frozen, trainable={"lora": variables["lora"], "params": trained},
                      memory=variables.get("memory", {}), task_type="cls", encoded=enc, evaluate=evaluate)


PAPER_FORM = (UMConfig(d_u=8, temperature_max=0.0),
              EMAConfig(slots=16, d_u=8, retrieval="dot", query_norm=False, mask_unwritten=False))
STABLE = (UMConfig(d_u=8), EMAConfig(slots=16, d_u=8))


def _train(method, branches, tmp_path, lr):
    from umema_jax.train.loop import train_and_evaluate
    um, ema = branches
    config = tiny_config(**{"optim.learning_rate": lr, "train.epochs": 4, "train.batch_size": 16,
                            "train.checkpoint_every_steps": 1000})
    result = train_and_evaluate(config, str(tmp_path / method), _experiment(method, ema, um))
    return result.test["accuracy"]


def test_full_method_is_not_below_lora_on_a_learnable_task(tmp_path):
    lr = 2e-2
    lora = _train("lora", STABLE, tmp_path, lr)
    full = _train("full", STABLE, tmp_path, lr)
    assert lora > 0.5, lora          # the task is learnable at this LR (chance: 1/3)
    assert full >= lora - 0.05, (full, lora)
