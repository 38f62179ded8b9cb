"""The training loop: steps, evaluation, early stopping, checkpoints, resume, outputs.

Everything that decides results is a pure function of the config and the
restored checkpoint: batch order from (seed, epoch), dropout keys from
(rng, step), evaluation at fixed steps, final numbers from the best
checkpoint *read back from disk* (also in an uninterrupted run). That is why a
run killed at any point and re-run with the same command ends with
bit-identical metrics on CPU.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

from umema_jax.data.pipeline import eval_batches, num_eval_batches
from umema_jax.train import sharding as shd
from umema_jax.train.checkpoint import Checkpoints
from umema_jax.train.logging import make_tracker
from umema_jax.train.progress import Progress
from umema_jax.train.method import METRIC_PREFIX, Method
from umema_jax.train.assemble import Setup, assemble_steps
from umema_jax.train.telemetry import PREFIX as TELEMETRY_PREFIX

HOST_ONLY_KEYS = ("example_index",)   # batch keys the pipeline adds for bookkeeping; never sent to devices


class NonFiniteLoss(RuntimeError):
    """Loss or gradient became NaN/inf; the state was not updated and the last checkpoint is good."""


class Interrupted(RuntimeError):
    """SIGINT/SIGTERM: the state was checkpointed; re-running the same command resumes."""


def _on_disk(step: int | None) -> str:
    return (f"last good checkpoint kept at step {step} (re-running resumes from it)" if step is not None
            else "no checkpoint was saved yet (re-running starts from step 0)")


@dataclasses.dataclass
class Experiment:
    """What the loop needs, built by `umema_jax.train.build` (or by tests with stand-ins)."""
    model: Any                       # flax module honouring the model contract
    frozen: dict                     # frozen part of `params` (never trained nor checkpointed)
    trainable: dict                  # {'lora': …, 'params': …}
    memory: dict                     # initial `memory` collection ({} without EMA)
    task_type: str                   # cls | ner
    encoded: dict                    # split name -> EncodedDataset
    evaluate: Callable[[str, dict], dict]   # (split, predictions) -> metrics; must hold `primary`
    info: dict = dataclasses.field(default_factory=dict)
    method: Any = None               # a train.method.Method (umema_jax/methods); None = the plain hooks


@dataclasses.dataclass
class RunResult:
    dev: dict
    test: dict
    predictions: dict                # split -> per-example predictions (see `predict`)
    best_step: int
    steps: int
    stopped_early: bool
    epoch_times: list
    history: list
    train_time_s: float = 0.0        # training loop wall time over all sessions (with dev evals, checkpoints)
    method_state: dict = dataclasses.field(default_factory=dict)   # the method's host state at the end of
    #                                  training (`Controller.state_dict`: traffic, rank history, active layers)


class _Signals:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (save, then exit)."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:       # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None:    # second Ctrl-C: stop waiting
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _device_batch(batch: dict, mesh) -> dict:
    return shd.put_batch({k: v for k, v in batch.items() if k not in HOST_ONLY_KEYS}, mesh)


def _per_row(x: np.ndarray, rows: int) -> bool:
    return x.ndim >= 1 and x.shape[0] == rows


def predict(eval_fn, state, frozen, encoded, batch_size: int, pad_multiple: int, mesh,
            progress: bool = False, desc: str = "eval") -> dict:
    """Runs the model over every example once; returns host arrays indexed like `encoded`.

    cls: `probs [N,C]`, aux leaves with a per-example axis `[N,…]`.
    ner: `probs` list of `[words_i, C]` (first sub-token of every kept word),
    per-token aux leaves likewise; per-sentence aux as `[N]`.
    Also the summed NLL and target count (loss over real rows only).
    """
    n = len(encoded)
    ner = encoded.task_type == "ner"
    probs: list = [None] * n
    aux: dict = {}
    nll_sum, targets = 0.0, 0.0
    bar = Progress(num_eval_batches(encoded, batch_size), desc=desc, enabled=progress, leave=False)
    for batch in eval_batches(encoded, batch_size, pad_multiple=pad_multiple):
        out = jax.device_get(eval_fn(state, frozen, _device_batch(batch, mesh)))
        nll_sum += float(out["nll_sum"])
        targets += float(out["targets"])
        rows = batch["input_ids"].shape[0]
        for row, idx in enumerate(batch["example_index"]):
            if idx < 0:
                continue
            if ner:
                pos = np.nonzero(encoded.word_index[idx] >= 0)[0]
                probs[idx] = out["probs"][row, pos]
            else:
                probs[idx] = out["probs"][row]
            for k, v in out["aux"].items():
                v = np.asarray(v)
                if not _per_row(v, rows):
                    continue
                per = v[row]
                if ner and per.ndim >= 1 and per.shape[0] == batch["input_ids"].shape[1]:
                    per = per[np.nonzero(encoded.word_index[idx] >= 0)[0]]
                aux.setdefault(k, [None] * n)[idx] = per
        bar.update(1, tokens=int((batch["attention_mask"] * batch["example_mask"][:, None]).sum()))
    bar.close()
    result = {"probs": probs if ner else np.stack(probs), "nll_sum": nll_sum, "targets": targets,
              "aux": {}}
    for k, vals in aux.items():
        if all(np.ndim(v) == 0 for v in vals) or not ner:
            try:
                result["aux"][k] = np.stack(vals)
                continue
            except ValueError:
                pass
        result["aux"][k] = vals
    return result


@dataclasses.dataclass
class Plan:
    """What a run trains with, before its first step: the method, its batches, the step counts and the
    assembled steps (`train.assemble`)."""
    method: Any
    batches: Any
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    steps: Any                # train.assemble.Steps


def plan_training(config, exp: Experiment, mesh) -> Plan:
    """The run's batches and step counts, then its optimizer, state and jitted steps (one assembly,
    shared with the benchmark)."""
    tcfg, dcfg = config.train, config.data
    for name, size in (("train.batch_size", tcfg.batch_size // tcfg.grad_accum_steps),
                       ("train.eval_batch_size", tcfg.eval_batch_size)):
        if size % shd.batch_divisor(mesh):
            raise ValueError(f"{name}={size} (per micro-batch) must be divisible by the {shd.batch_divisor(mesh)} "
                             f"devices the batch is split over")
    method = exp.method if exp.method is not None else Method(config)
    batches = method.train_batches(exp.encoded["train"], tcfg.batch_size, config.seed, dcfg.pad_to_multiple)
    spe = batches.steps_per_epoch
    total_steps = spe * tcfg.epochs if tcfg.max_steps < 0 else min(tcfg.max_steps, spe * tcfg.epochs)
    steps = assemble_steps(Setup(model=exp.model, frozen=exp.frozen, trainable=exp.trainable, memory=exp.memory),
                           method, task_type=exp.task_type, total_steps=total_steps,
                           grad_accum_steps=tcfg.grad_accum_steps, seed=config.seed, mesh=mesh,
                           fsdp_rules=config.mesh.fsdp_rules)
    return Plan(method=method, batches=batches, steps_per_epoch=spe, total_steps=total_steps,
                eval_every=tcfg.eval_every_steps or spe, steps=steps)


def train_and_evaluate(config, workdir: str, exp: Experiment, mesh=None) -> RunResult:
    """Trains with early stopping, checkpoints as it goes, resumes when `workdir` holds a checkpoint."""
    tcfg, dcfg = config.train, config.data
    mesh = mesh if mesh is not None else shd.make_mesh(config.mesh.data, config.mesh.model)
    plan = plan_training(config, exp, mesh)
    method, batches, spe, total_steps, eval_every = (plan.method, plan.batches, plan.steps_per_epoch,
                                                     plan.total_steps, plan.eval_every)
    steps = plan.steps
    state, frozen, train_fn, eval_fn = steps.state, steps.frozen, steps.train_step, steps.eval_step
    state_sh, frozen_sh = steps.state_sharding, steps.frozen_sharding
    controller = method.controller(total_steps, spe)
    controller.experiment, controller.mesh = exp, mesh

    def host_hook(result) -> None:
        """Takes a controller hook's (state, frozen); a replaced state goes back onto the state's shardings."""
        nonlocal state, frozen
        new_state, new_frozen = result
        if new_state is not state:
            state = jax.device_put(new_state, state_sh)
        if new_frozen is not frozen:
            frozen = jax.device_put(new_frozen, frozen_sh)
        meta["method"] = controller.state_dict()

    ckpt = Checkpoints(workdir, max_to_keep=tcfg.max_to_keep, config=config, unused=method.unused_config_prefixes())
    meta = {"epoch": 0, "step_in_epoch": 0, "best_metric": None, "best_step": None,
            "evals_since_best": 0, "stopped_early": False, "history": [], "epoch_times": [], "method": {}}
    try:
        restored = ckpt.restore_latest(state)        # CheckpointError: another config / none intact
    except BaseException:
        ckpt.close()
        raise
    resume_step = 0                      # logs and best-checkpoints past this step are from a dead run
    if restored is not None:
        state, meta = restored
        resume_step = int(state.step)
        controller.load_state_dict(meta.get("method") or {})
        host_hook(controller.after_restore(state, frozen))
    ckpt.discard_after(resume_step)
    tracker = make_tracker(workdir, tensorboard=config.output.tensorboard, resume_step=resume_step)
    controller.log = lambda at, scalars: tracker.log(at, "method", scalars)
    start = int(jax.device_get(state.step))
    bar = Progress(total_steps, initial=start, desc="train", enabled=config.output.progress_bar)
    if restored is not None:
        bar.write(f"resumed from step {resume_step} (epoch {meta['epoch']}, batch {meta['step_in_epoch']})")

    def evaluate_dev(step: int) -> None:
        preds = predict(eval_fn, state, frozen, exp.encoded["dev"], tcfg.eval_batch_size,
                        dcfg.pad_to_multiple, mesh, config.output.progress_bar, "dev")
        metrics = exp.evaluate("dev", preds)
        primary = float(metrics["primary"])
        tracker.log(step, "dev", metrics)
        meta["history"].append({"step": step, "dev_primary": primary})
        improved = meta["best_metric"] is None or primary > meta["best_metric"]
        if improved:
            meta.update(best_metric=primary, best_step=step, evals_since_best=0)
            ckpt.save_best(step, state, dict(meta), primary)   # before `latest`: see discard_after
        else:
            meta["evals_since_best"] += 1
        bar.write(f"step {step}: dev {metrics.get('primary_name', 'primary')}={primary:.4f}"
                  f"{' (best)' if improved else ''}")

    pending: list = []          # (step, metrics on device): fetched one step late, no sync in the hot path
    window: dict = {}
    epoch_clock = time.perf_counter()

    def drain(keep: int = 0) -> None:
        """Fetches queued step metrics (all but the newest `keep`), stopping on a non-finite loss."""
        while len(pending) > keep:
            step, m = pending.pop(0)
            m = jax.device_get(m)
            if not int(m["finite"]):
                raise NonFiniteLoss(f"non-finite loss/gradient at step {step} (loss={float(m['loss'])}, "
                                    f"grad_norm={float(m['grad_norm'])})")   # + what is on disk: below
            for k in ("loss", "grad_norm", "learning_rate", "tokens"):
                window.setdefault(k, []).append(float(m[k]))
            for k in m:        # UM/EMA telemetry (train/telemetry.py) and method metrics, averaged over the window
                if k.startswith((TELEMETRY_PREFIX, METRIC_PREFIX)):
                    window.setdefault(k, []).append(float(m[k]))
            bar.update(1, tokens=int(m["tokens"]), loss=float(m["loss"]))
            if step % tcfg.log_every_steps == 0 or step == total_steps:
                logged = {k: float(np.mean(v)) for k, v in window.items()}
                logged["learning_rate"] = window["learning_rate"][-1]
                logged["tokens"] = float(np.sum(window["tokens"]))
                tracker.log(step, "train", logged)
                window.clear()

    train_time_base, session_clock = float(meta.get("train_time_s", 0.0)), time.perf_counter()

    def checkpoint(step: int) -> None:
        drain()
        meta["train_time_s"] = train_time_base + time.perf_counter() - session_clock
        ckpt.save_latest(step, state, dict(meta))

    step = start
    try:
        with _Signals() as signals:
            if step < total_steps and not meta["stopped_early"]:
                for epoch, k, batch in batches.iterate(meta["epoch"], meta["step_in_epoch"], tcfg.epochs):
                    host_hook(controller.before_step(step, state, frozen))
                    state, m = train_fn(state, frozen, _device_batch(batch, mesh))
                    step += 1
                    pending.append((step, m))
                    drain(keep=1)
                    meta["epoch"], meta["step_in_epoch"] = (epoch + 1, 0) if k + 1 == spe else (epoch, k + 1)
                    if k + 1 == spe:
                        drain()
                        meta["epoch_times"].append(time.perf_counter() - epoch_clock)
                        epoch_clock = time.perf_counter()
                        host_hook(controller.end_epoch(epoch, step, state, frozen))
                    at_eval = step % eval_every == 0 or step == total_steps
                    if at_eval:
                        drain()
                        evaluate_dev(step)
                        if tcfg.early_stopping_patience and meta["evals_since_best"] >= tcfg.early_stopping_patience:
                            meta["stopped_early"] = True
                    if at_eval or step % tcfg.checkpoint_every_steps == 0 or step == total_steps \
                            or meta["stopped_early"]:
                        checkpoint(step)
                    if signals.received is not None:
                        checkpoint(step)
                        raise Interrupted(f"interrupted by signal {signals.received} at step {step}")
                    if step >= total_steps or meta["stopped_early"]:
                        break
            drain()
            checkpoint(step)
            ckpt.wait()
    except BaseException as err:
        # Every other way out: finish the pending saves (else the interpreter's exit kills them
        # half-written) and say which step is really on disk.
        kept = ckpt.settle()
        if isinstance(err, NonFiniteLoss):
            raise NonFiniteLoss(f"{err}; stopped, {_on_disk(kept)}") from None
        if isinstance(err, Interrupted):
            raise Interrupted(f"{err}; " + (f"checkpoint saved at step {kept}" if kept is not None else
                                            "no checkpoint saved") +
                              " — re-run the same command to resume") from None
        bar.write(f"stopped at step {step} by {type(err).__name__}; {_on_disk(kept)}")
        raise
    finally:
        bar.close()
        tracker.close()

    method_state = controller.state_dict()        # end of training (the best checkpoint may be older)
    # Final numbers come from the best checkpoint as stored on disk (same path for resumed runs).
    best = ckpt.restore_best(state)
    best_state, best_meta = best if best is not None else (state, dict(meta, best_step=step))
    if best is not None:
        controller.load_state_dict(best_meta.get("method") or {})
        best_state, frozen = controller.after_restore(best_state, frozen)
    elif meta.get("best_step") not in (None, step):
        print(f"warning: no best checkpoint in {os.path.join(workdir, 'checkpoints', 'best')} (best dev step was "
              f"{meta['best_step']}); final numbers are of the last state, step {step}", file=sys.stderr, flush=True)
    results, predictions = {}, {}
    for split in ("dev", "test"):
        preds = predict(eval_fn, best_state, frozen, exp.encoded[split], tcfg.eval_batch_size,
                        dcfg.pad_to_multiple, mesh, config.output.progress_bar, split)
        results[split] = exp.evaluate(split, preds)
        predictions[split] = preds
    ckpt.close()
    return RunResult(dev=results["dev"], test=results["test"], predictions=predictions,
                     best_step=int(best_meta.get("best_step") or step), steps=step,
                     stopped_early=bool(meta["stopped_early"]), epoch_times=list(meta["epoch_times"]),
                     history=list(meta["history"]), train_time_s=float(meta.get("train_time_s", 0.0)),
                     method_state=method_state)
