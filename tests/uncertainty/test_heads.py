"""Uncertainty heads as plug-ins (umema_jax/uncertainty/heads.py): the paper's UM is one head with the
numbers it had before the interface existed, and a head defined outside the package trains through
launch.py and reports its scores without any change to the package."""
import json
import os
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from umema_jax.backbones.config import get_backbone_config
from umema_jax.model import init_variables, make_model
from umema_jax.uncertainty.heads import HEADS, Head, get_head

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE = os.path.join(REPO, "tests", "fixtures", "heads", "um_reference.npz")


def _perturbed_um_model(task: str):
    """Tiny GPT-2 + LoRA + UM + EMA on XLA's matmul, every parameter perturbed (seed 1), as the reference
    was made (the implementation before the head interface, same construction)."""
    view = types.SimpleNamespace(
        model=types.SimpleNamespace(name="gpt2-tiny", pooling="last", dtype="float32", cpu_matmul="xla",
                                    uncertainty="um", lora=dict(rank=4), um=dict(d_u=16, quant_levels=8, layers=()),
                                    ema=dict(slots=8, d_u=16)),
        task=types.SimpleNamespace(type=task, num_labels=3))
    model = make_model(view, get_backbone_config("gpt2-tiny"), use_lora=True, use_um=True, use_ema=True)
    v = init_variables(model, jax.random.PRNGKey(0))
    leaves, tree = jax.tree.flatten(v["params"])
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    v["params"] = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
                                            if jnp.issubdtype(x.dtype, jnp.floating) else x
                                            for x, k in zip(leaves, keys)])
    return model, v


@pytest.mark.parametrize("task", ["cls", "ner"])
def test_um_as_a_head_gives_the_numbers_of_the_implementation_before_the_interface(task):
    ref = np.load(REFERENCE)
    model, v = _perturbed_um_model(task)
    r = np.random.RandomState(0)
    mask = np.ones((3, 10), np.int32)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    out = model.apply(v, {"input_ids": (r.randint(1, 50, (3, 10)) * mask).astype(np.int32), "attention_mask": mask})
    np.testing.assert_allclose(np.asarray(out.logits), ref[f"{task}/logits"], rtol=1e-5, atol=1e-6)
    for key in ("u_ale", "u_epi", "u_bar", "temperature"):
        np.testing.assert_allclose(np.asarray(out.aux[key]), ref[f"{task}/{key}"], rtol=1e-5, atol=1e-6)
    assert model.exported_scores() == ("u_ale", "u_epi", "u_bar", "temperature")


def test_the_registry_knows_um_and_refuses_an_unknown_head():
    assert get_head("um") is HEADS["um"] and issubclass(HEADS["um"], Head)
    with pytest.raises(ValueError, match="model.uncertainty='nope'"):
        get_head("nope")


TOY_CONFIG = textwrap.dedent('''
    """A toy uncertainty head defined outside the package: a learned confidence on the last token."""
    import dataclasses
    import os
    import sys
    from typing import ClassVar

    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, {repo!r})
    from configs.smoke import get_config as smoke_config
    from umema_jax.uncertainty.heads import Head, HeadOutput, register_head
    from umema_jax.uncertainty.um import last_valid_token


    class ToyModule(nn.Module):
        hidden: int

        @nn.compact
        def __call__(self, embeddings, hidden_states, last_hidden, mask, task_id):
            rep = last_valid_token(last_hidden, mask.astype(jnp.float32))
            h = nn.tanh(nn.Dense(self.hidden, name="probe")(rep))
            confidence = jax.nn.sigmoid(nn.Dense(1, name="confidence")(h)[..., 0])
            return HeadOutput(rep, 1.0 + (1.0 - confidence), {{"toy_u": 1.0 - confidence}})


    @register_head
    @dataclasses.dataclass(frozen=True)
    class ToyHead(Head):
        hidden: int = 8
        name: ClassVar[str] = "toy"
        scores: ClassVar[tuple] = ("toy_u",)

        def build(self, task_type, pooling):
            return ToyModule(self.hidden)


    def get_config():
        c = smoke_config()
        c.model.method, c.model.uncertainty = "lora+um", "toy"
        c.model.toy.hidden = 4
        c.train.epochs = 1
        return c
''')


@pytest.mark.slow
def test_a_head_defined_outside_the_package_trains_through_launch(tmp_path):
    config = tmp_path / "toy_head.py"
    config.write_text(TOY_CONFIG.format(repo=REPO))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "launch.py", f"--config={config}", f"--workdir={tmp_path / 'run'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.load(open(tmp_path / "run" / "results.json"))
    for key in ("auroc_error_toy_u", "aurc_toy_u", "prr_toy_u", "auroc_error_temperature"):
        assert key in results["test"], key
    assert results["params"]["params/um"] == 64 * 4 + 4 + 4 + 1       # the head's parameters, trained
    record = np.load(tmp_path / "run" / "records.npz")
    assert any(k.endswith("toy_u") for k in record.files)
    resolved = json.load(open(tmp_path / "run" / "config.json"))
    assert resolved["model"]["uncertainty"] == "toy" and resolved["model"]["toy"]["hidden"] == 4


def _mc_model(dropout: float, samples: int = 4):
    from umema_jax.adapters.lora import LoraConfig
    from umema_jax.model import UmemaModel
    from umema_jax.uncertainty.mc_dropout import MCDropout
    return UmemaModel(get_backbone_config("gpt2-tiny"), LoraConfig(rank=4, dropout=dropout), num_labels=3,
                      uncertainty=MCDropout(samples=samples), cpu_matmul="xla")


def _eval(model, seed=0):
    import optax
    from umema_jax.train.state import create_train_state, split_params
    from umema_jax.train.step import make_eval_step
    v = init_variables(model, jax.random.PRNGKey(seed))
    v["lora"] = jax.tree.map(lambda x: x + 0.3, v["lora"])            # an adapted model: dropout matters
    trained, frozen = split_params(v["params"], r"^(head|um|ema)/")
    state = create_train_state({"lora": v["lora"], "params": trained}, {}, optax.sgd(0.0), 0)
    r = np.random.RandomState(0)
    batch = {"input_ids": r.randint(1, 50, (3, 8)).astype(np.int32), "attention_mask": np.ones((3, 8), np.int32),
             "example_mask": np.ones(3, np.int32), "labels": np.array([0, 1, 2], np.int32)}
    return jax.jit(make_eval_step(model, "cls"))(state, frozen, batch), v, batch


def test_mc_dropout_averages_sampled_passes_and_scores_their_disagreement():
    """The sampling hook against its definition: the mean of S passes with the LoRA dropout on (the
    hook's fixed keys), the NLL of that mean, predictive entropy and mutual information (entropy of
    the mean minus the mean entropy)."""
    from umema_jax.train.step import EVAL_SAMPLE_SEED
    model = _mc_model(dropout=0.5, samples=4)
    out, v, batch = _eval(model)
    keys = jax.random.split(jax.random.PRNGKey(EVAL_SAMPLE_SEED), 4)
    each = np.stack([np.asarray(jax.nn.softmax(model.apply(v, batch, sample=True, rngs={"dropout": k}).logits))
                     for k in keys])
    mean = each.mean(0)
    entropy = lambda p: -(p * np.log(p)).sum(-1)                        # noqa: E731
    np.testing.assert_allclose(np.asarray(out["probs"]), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(out["nll_sum"]), -np.log(mean[np.arange(3), batch["labels"]]).sum(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out["aux"]["predictive_entropy"]), entropy(mean), rtol=1e-5)
    mi = entropy(mean) - entropy(each).mean(0)
    np.testing.assert_allclose(np.asarray(out["aux"]["mutual_information"]), mi, rtol=1e-4, atol=1e-6)
    assert mi.min() > 0                                                 # the passes disagree
    assert model.exported_scores() == ("predictive_entropy", "mutual_information")   # no temperature of its own


def test_mc_dropout_without_dropout_is_the_deterministic_model():
    model = _mc_model(dropout=0.0)
    out, v, batch = _eval(model)
    plain = np.asarray(jax.nn.softmax(model.apply(v, batch).logits))
    np.testing.assert_allclose(np.asarray(out["probs"]), plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["aux"]["mutual_information"]), 0.0, atol=1e-5)


def test_a_config_defining_a_head_gets_the_one_line_error_for_a_mistyped_key(tmp_path):
    """launch.py executes the config file a second time to name the unknown key; the head it registers
    again must not turn that into a traceback."""
    config = tmp_path / "toy_head.py"
    config.write_text(TOY_CONFIG.format(repo=REPO))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "launch.py", f"--config={config}", "--config.model.toy.hiden=3",
                           f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "unknown config key 'config.model.toy.hiden'" in proc.stderr and "Traceback" not in proc.stderr


def test_registering_the_same_head_definition_again_replaces_it_and_another_is_refused(tmp_path):
    source = textwrap.dedent('''
        import dataclasses
        from typing import ClassVar
        from umema_jax.uncertainty.heads import Head, register_head

        @register_head
        @dataclasses.dataclass(frozen=True)
        class Twice(Head):
            name: ClassVar[str] = "registered_twice"
    ''')
    try:
        for _ in range(2):                                    # the same file executed twice
            exec(compile(source, str(tmp_path / "a.py"), "exec"), {"__file__": str(tmp_path / "a.py")})
        with pytest.raises(ValueError, match="already registered"):
            exec(compile(source, str(tmp_path / "b.py"), "exec"), {"__file__": str(tmp_path / "b.py")})
    finally:
        HEADS.pop("registered_twice", None)
