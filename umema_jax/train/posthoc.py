"""Post-hoc calibrators on a trained model: the forward passes they need.

At the end of every run, `Trainer.final_evaluation` scores dev and test with the feature step (the eval
step that also returns the task head's input) and hands those passes to `run_calibrators`, which adds a
pass over train for calibrators that fit there; each calibrator of `output.posthoc` is fitted and applied
(`uncertainty.posthoc`). A sampling head (MC dropout) is scored by its own eval step, and the calibrators
then make their own deterministic passes. `train.outputs` writes the results as `<split>_<name>` in
results.json and into the per-example record. `umema_jax.calibrate` does the same for a run that finished
without them.
"""
from __future__ import annotations

import jax
import numpy as np

from umema_jax.train.outputs import reliability_inputs
from umema_jax.train.predict import predict
from umema_jax.uncertainty import posthoc as ph


def split_outputs(preds: dict, encoded, task_type: str) -> ph.Outputs:
    """`train.predict.predict`'s output of the feature step -> rows of scored targets (NER: scored words)."""
    probs, labels = reliability_inputs(task_type, preds, encoded)        # the rows every metric scores
    aux = preds["aux"]
    if task_type == "cls":
        features, temperature = aux["features"], aux["temperature"]
    else:                              # the same sentences as `reliability_inputs` keeps, concatenated
        keep = [i for i, p in enumerate(preds["probs"]) if np.size(p)]
        features = np.concatenate([aux["features"][i] for i in keep]) if keep else np.zeros((0, 0))
        temperature = np.concatenate([aux["temperature"][i] for i in keep]) if keep else np.zeros(0)
    return ph.Outputs(np.asarray(probs, np.float64), np.asarray(labels, np.int64),
                      np.asarray(features, np.float64), np.asarray(temperature, np.float64))


def head_weights(method, state, frozen) -> dict:
    """The task head's kernel [d, C] and bias [C] as the model applies them."""
    variables = method.model_variables(frozen, state.trainable, state.memory, state.extra)
    head = jax.device_get(variables["params"]["head"])
    return {"kernel": np.asarray(head["kernel"]), "bias": np.asarray(head["bias"])}


def calibrator_names(config) -> tuple:
    return ph.parse(config.output.get("posthoc", ""))


def run_calibrators(config, exp, plan, state, frozen, mesh, names=None, computed: dict | None = None) -> dict:
    """Fits and applies the calibrators of `output.posthoc` (or `names`) on `state`; {} when none.
    `computed`: {split: the feature step's predictions} already made on `state` (not made again)."""
    names = calibrator_names(config) if names is None else tuple(names)
    if not names:
        return {}
    splits = ("dev", "test") + (("train",) if any(ph.CALIBRATORS[n].needs_train for n in names) else ())
    outputs = {}
    for split in splits:
        preds = (computed or {}).get(split) or predict(
            plan.steps.feature_step, state, frozen, exp.encoded[split], config.train.eval_batch_size,
            config.data.pad_to_multiple, mesh, config.output.progress_bar, f"{split} features")
        if "features" not in preds["aux"]:
            return {name: ph.failed(name, ValueError("the model's output has no `features`")) for name in names}
        outputs[split] = split_outputs(preds, exp.encoded[split], exp.task_type)
    return ph.calibrate(names, head_weights(plan.method, state, frozen), outputs)
