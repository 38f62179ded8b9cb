"""The method interface: registry ↔ config ↔ validation ↔ runner, and every new method end to end."""
import json

import jax
import pytest

from umema_jax.defaults import base_config
from umema_jax import methods
from umema_jax.experiments import profiles as P
from umema_jax.train.checkpoint import config_identity
from umema_jax.methods import validate_config
from umema_jax.train.validate import ConfigError


def test_every_registered_method_is_selectable_and_its_hyperparameters_are_config_keys():
    c = base_config()
    for name, cls in methods.REGISTRY.items():
        assert cls.name == name and cls.family in ("adapter", "full_weight")
        if cls.defaults:
            assert c.methods[name].to_dict() == cls.defaults
    assert {"lora", "lora+um", "lora+ema", "full", "full_ft", "lisa"} <= set(methods.names())
    # the runner sees LISA and full FT as implemented, in their own LR family
    for label in ("LISA", "full FT"):
        row = next(m for m in P.BASELINES if m.label == label)
        name = P.method_name(row)
        assert name is not None and methods.get(name).family == row.family == "full_weight"


@pytest.mark.parametrize("key,value,match", [
    ("methods.lisa.gamma", 0, "methods.lisa.gamma=0"),
    ("methods.lisa.interval_steps", -1, "methods.lisa.interval_steps=-1"),
])
def test_bad_method_hyperparameters_fail_in_one_line_naming_the_key(key, value, match):
    c = base_config()
    c.model.init_from_scratch, c.model.name, c.model.method = True, "gpt2-tiny", "lisa"
    section, leaf = key.rsplit(".", 1)
    c.methods.lisa[leaf] = value
    with pytest.raises(ConfigError, match=match):
        validate_config(c)
    c = base_config()
    c.model.init_from_scratch, c.model.name, c.model.method = True, "gpt2-tiny", "full_ft"
    c.methods.full_ft.param_dtype = "float16"
    with pytest.raises(ConfigError, match="methods.full_ft.param_dtype='float16'"):
        validate_config(c)
    c.model.method = "nope"
    with pytest.raises(ConfigError, match="model.method='nope'"):
        validate_config(c)


def test_only_the_selected_methods_section_decides_a_runs_identity():
    a, b = base_config(), base_config()
    b.methods.lisa.gamma = 8
    assert config_identity(a) == config_identity(b)           # a lora run ignores LISA's keys
    a.model.method = b.model.method = "lisa"
    assert config_identity(a) != config_identity(b)
    assert not any(k.startswith("methods.") for k in config_identity(base_config()))   # lora: as before


def test_branch_settings_decide_identity_only_for_methods_that_build_the_branch():
    """A new UM default must not make a LoRA run unresumable (the UM `temperature_input`)."""
    a, b = base_config(), base_config()
    b.model.um.temperature_max = 7.0
    b.model.ema.slots = 8
    identity = lambda c: config_identity(c, methods.unused_config_prefixes(c.model.method))   # noqa: E731
    assert identity(a) == identity(b)                                    # lora builds neither branch
    for method, differs in (("lora+um", "model.um."), ("lora+ema", "model.ema."), ("full", "model.")):
        a.model.method = b.model.method = method
        diff = {k for k in set(identity(a)) | set(identity(b)) if identity(a).get(k) != identity(b).get(k)}
        assert diff and all(k.startswith(differs) for k in diff), (method, diff)


def test_full_ft_trains_end_to_end_on_the_smoke_config(tmp_path):
    from umema_jax.run import run_config
    from configs.smoke import get_config
    config = get_config()
    config.model.method = "full_ft"
    config.output.tensorboard = False
    config.train.epochs = 1
    results = run_config(config, str(tmp_path))
    saved = json.load(open(tmp_path / "results.json"))
    assert saved["test"]["accuracy"] == results["test"]["accuracy"]
    assert results["params"]["frozen"] == 0 and results["params"]["lora"] == 0
    assert results["params"]["trainable"] == results["params"]["total"]
    assert saved["method_info"] == {"name": "full_ft", "family": "full_weight", "hp": {"param_dtype": "float32"}}


@pytest.mark.parametrize("name", methods.names())
def test_only_make_model_bind_and_train_batches_keep_state_on_the_method(name):
    """Build and loop-start hooks other than the three documented ones leave the method's attributes as
    they found them, so no hook depends on another having run as a side effect."""
    from umema_jax.backbones.config import get_backbone_config
    from umema_jax.model import init_variables
    from umema_jax.train.assemble import model_config_view
    from umema_jax.train.state import create_train_state
    c = base_config()
    c.model.name, c.model.method, c.model.init_from_scratch = "gpt2-tiny", name, True
    method = methods.from_config(c)
    model = method.make_model(model_config_view(c, "cls", 3), get_backbone_config("gpt2-tiny"))
    variables = init_variables(model, jax.random.PRNGKey(0))
    method.bind(model, dict(variables["params"]))
    before = dict(vars(method))
    trained, _ = method.split(dict(variables["params"]))
    trainable = method.init_trainable({"lora": variables.get("lora", {}), "params": trained})
    tx, _ = method.optimizer(10)
    create_train_state(trainable, variables.get("memory", {}), tx, 0, method)   # init_opt_state, init_extra
    method.count_trainable(trainable)
    after = vars(method)
    changed = sorted(k for k in set(before) | set(after) if k not in before or k not in after
                     or after[k] is not before[k])
    assert changed == []
