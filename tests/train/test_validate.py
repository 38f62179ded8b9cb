"""Config checks (train/validate.py) and the LoRA alpha default, in-process (no launch.py subprocess)."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)   # configs/*.py are imported as modules

from configs.smoke import get_config  # noqa: E402
from umema_jax.methods import validate_config  # noqa: E402
from umema_jax.train.validate import ConfigError  # noqa: E402


@pytest.mark.parametrize("key, value", [
    ("optim.learning_rate", float("inf")),
    ("optim.learning_rate", float("nan")),
    ("optim.weight_decay", float("inf")),
    ("optim.eps", float("inf")),
    ("model.lora.alpha", float("inf")),
    ("model.lora.alpha", -2.0),
    ("model.um.error_weight", -1.0),
    ("model.um.error_weight", float("nan")),
    ("output.posthoc", "laplace,bogus"),
])
def test_non_finite_or_negative_numbers_are_rejected(key, value):
    c = get_config()
    section, name = key.rsplit(".", 1)
    node = c
    for part in section.split("."):
        node = node[part]
    node[name] = value
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(c)


LORA = dict(use_lora=True, use_um=False, use_ema=False)


def test_lora_alpha_defaults_to_twice_the_rank():
    """Paper: alpha = 2r at every rank of the sweep {4, 8, 16, 32}, i.e. scale 2."""
    from umema_jax.backbones.config import get_backbone_config
    from umema_jax.model import make_model
    from umema_jax.train.assemble import model_config_view
    for rank in (4, 8, 16, 32):
        c = get_config()
        c.model.lora.rank = rank                    # alpha left unset
        validate_config(c)
        model = make_model(model_config_view(c, "cls", 19), get_backbone_config(c.model.name), **LORA)
        assert (model.lora_cfg.alpha, model.lora_cfg.scale) == (2.0 * rank, 2.0), rank
    c = get_config()
    c.model.lora.rank, c.model.lora.alpha = 32, 16.0   # an explicit alpha is kept
    model = make_model(model_config_view(c, "cls", 19), get_backbone_config(c.model.name), **LORA)
    assert model.lora_cfg.scale == 0.5


def test_config_json_records_the_resolved_alpha():
    """launch.py writes and compares alpha resolved, so an old config.json (alpha 16 at rank 8) still resumes."""
    from umema_jax import run
    c = get_config()
    c.model.lora.rank = 32
    assert run.resolved_config(c.to_dict())["model"]["lora"]["alpha"] == 64.0
    old = get_config().to_dict()
    old["model"]["lora"]["alpha"] = 16.0
    assert run.resolved_config(get_config().to_dict()) == run.resolved_config(old)


@pytest.mark.parametrize("key,value,message", [
    ("lr_scale", 0.0, "optim.lr_scale=0.0: must be finite and > 0"),
    ("lr_scale_regex", "(um", "optim.lr_scale_regex='(um': not a regular expression"),
])
def test_lr_scale_settings_are_checked(key, value, message):
    c = get_config()
    c.optim[key] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_config(c)


def _all_methods():
    from umema_jax.methods import REGISTRY
    return sorted(REGISTRY)


@pytest.mark.parametrize("name", _all_methods())
def test_every_method_applies_lr_scale(name):
    """Every method builds its optimizer with `train.state.make_optimizer`, so `optim.lr_scale` is never a
    silent no-op: the first update of a matched leaf is lr_scale times the unscaled one."""
    import jax.numpy as jnp
    import numpy as np
    from umema_jax import methods

    tree = {"params": {"um": {"W": jnp.full((3, 4), 0.5)}, "head": {"kernel": jnp.full((4, 2), -0.5)}}}
    grads = {"params": {"um": {"W": jnp.linspace(-1, 1, 12).reshape(3, 4)},
                        "head": {"kernel": jnp.linspace(1, 2, 8).reshape(4, 2)}}}
    updates = {}
    for scale in (1.0, 0.2):
        c = get_config()
        c.model.method, c.optim.lr_scale, c.optim.warmup_ratio = name, scale, 0.0
        tx, _ = methods.from_config(c).optimizer(10)
        updates[scale] = tx.update(grads, tx.init(tree), tree)[0]["params"]
    np.testing.assert_allclose(updates[0.2]["um"]["W"], 0.2 * updates[1.0]["um"]["W"], rtol=1e-5)
    np.testing.assert_allclose(updates[0.2]["head"]["kernel"], updates[1.0]["head"]["kernel"], rtol=1e-6)


def test_a_key_added_since_a_run_does_not_change_its_identity_but_a_changed_default_does():
    from umema_jax.defaults import base_config
    from umema_jax.train.checkpoint import config_differences
    old, now = base_config().to_dict(), base_config().to_dict()
    del old["optim"]["lr_scale"]                      # a run recorded before the key existed
    assert config_differences(old, now) == []
    old["optim"]["weight_decay"] = 0.5                # a value both record, changed
    assert config_differences(old, now) == ["optim.weight_decay"]
