"""The benchmark times the step training runs: for a training config and the benchmark flags that
describe the same setup, the two jitted train steps trace to the same jaxpr (one assembly path,
`umema_jax/train/assemble.py`)."""
import os
import sys

import jax
import pytest
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs.smoke import get_config  # noqa: E402
from umema_jax import bench, methods  # noqa: E402
from umema_jax.train import sharding as shd  # noqa: E402
from umema_jax.train.build import build_experiment  # noqa: E402
from umema_jax.train.loop import plan_training  # noqa: E402

STEPS = 1_000_000          # the benchmark's schedule length


def training_step(method: str, rank: int):
    """The smoke config of `method`, set to what the benchmark's flags describe (its optimizer settings,
    its schedule length): the plan `train_and_evaluate` would train with."""
    config = get_config()
    config.model.method = method
    config.model.lora.rank, config.model.lora.alpha = rank, 2.0 * rank
    config.optim.update(bench.BENCH_OPTIM)
    config.train.max_steps, config.train.epochs = STEPS, STEPS
    exp = build_experiment(config, methods.from_config(config))
    mesh = shd.make_mesh(1, 1, devices=jax.devices()[:1])
    return plan_training(config, exp, mesh), len(exp.info["labels"]), mesh


def jaxpr(jitted, *args) -> str:
    """The jaxpr a jitted step traces to on these arguments' shapes."""
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
    return str(jitted.trace(*shapes).jaxpr)


@pytest.fixture
def bench_flags():
    yield lambda argv: flags.FLAGS(["bench"] + argv)
    flags.FLAGS.unparse_flags()


@pytest.mark.parametrize("method", ["full"])          # UM + EMA: the richest step
def test_the_benchmark_times_the_step_training_runs(method, bench_flags):
    plan, labels, mesh = training_step(method, rank=8)
    bench_flags([f"--backbone={get_config().model.name}", f"--method={method}", f"--num_labels={labels}",
                 "--seq_len=64", "--batch=8", "--lora_rank=8", "--lora_alpha=16", "--warmup=0",
                 "--eval_steps=0"])
    shared = {"backbone": bench_backbone()}
    shared["batch"] = bench.random_batch(0, shared["backbone"][0].vocab_size)
    runner = bench.Runner(method, mesh, shared)
    trained = jaxpr(plan.steps.train_step, plan.steps.state, plan.steps.frozen, runner.batch)
    timed = jaxpr(runner.train_step, runner.state, runner.frozen, runner.batch)
    assert trained == timed


def test_a_different_setup_traces_to_a_different_step(bench_flags):
    """The comparison can fail: the benchmark at another LoRA rank is another step."""
    plan, labels, mesh = training_step("lora", rank=4)
    bench_flags([f"--backbone={get_config().model.name}", "--method=lora", f"--num_labels={labels}",
                 "--seq_len=64", "--batch=8", "--lora_rank=8", "--lora_alpha=16", "--warmup=0", "--eval_steps=0"])
    shared = {"backbone": bench_backbone()}
    shared["batch"] = bench.random_batch(0, shared["backbone"][0].vocab_size)
    runner = bench.Runner("lora", mesh, shared)
    assert jaxpr(plan.steps.train_step, plan.steps.state, plan.steps.frozen, runner.batch) != \
        jaxpr(runner.train_step, runner.state, runner.frozen, runner.batch)


def bench_backbone():
    from umema_jax.backbones.config import get_backbone_config
    return get_backbone_config(get_config().model.name), None
