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

from umema_jax.train import sharding as shd
from umema_jax.train.checkpoint import Checkpoints
from umema_jax.train.logging import make_tracker
from umema_jax.train.predict import HOST_ONLY_KEYS, device_batch, predict  # noqa: F401 (re-exported)
from umema_jax.train.progress import Progress
from umema_jax.train.method import METRIC_PREFIX, Method
from umema_jax.train.assemble import Setup, assemble_steps
from umema_jax.train.telemetry import PREFIX as TELEMETRY_PREFIX

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
    posthoc: dict = dataclasses.field(default_factory=dict)   # `uncertainty.posthoc.calibrate`'s output


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
    """Trains with early stopping, checkpoints as it goes, resumes when `workdir` holds a checkpoint,
    and scores dev and test from the best checkpoint read back from disk."""
    mesh = mesh if mesh is not None else shd.make_mesh(config.mesh.data, config.mesh.model)
    trainer = Trainer(config, workdir, exp, mesh)
    try:
        trainer.fit()
        return trainer.final_evaluation()
    finally:
        trainer.ckpt.close()


class Trainer:
    """One run's training state, explicit: the placed `state` and `frozen` trees, the checkpoint `meta`
    (data position, early stopping, history), the checkpoints, the metric tracker and the queue of step
    metrics not yet fetched. `fit` trains (resuming), `final_evaluation` scores the best checkpoint."""

    def __init__(self, config, workdir: str, exp: Experiment, mesh):
        self.config, self.workdir, self.exp, self.mesh = config, workdir, exp, mesh
        self.plan = plan = plan_training(config, exp, mesh)
        self.method, steps = plan.method, plan.steps
        self.state, self.frozen = steps.state, steps.frozen
        self.controller = self.method.controller(plan.total_steps, plan.steps_per_epoch)
        self.controller.experiment, self.controller.mesh = exp, mesh
        self.meta = {"epoch": 0, "step_in_epoch": 0, "best_metric": None, "best_step": None,
                     "evals_since_best": 0, "stopped_early": False, "history": [], "epoch_times": [], "method": {}}
        self.ckpt = Checkpoints(workdir, max_to_keep=config.train.max_to_keep, config=config,
                                unused=self.method.unused_config_prefixes())
        try:
            restored = self.ckpt.restore_latest(self.state)   # CheckpointError: another config / none intact
        except BaseException:
            self.ckpt.close()
            raise
        self.resume_step = 0              # logs and best-checkpoints past this step are from a dead run
        if restored is not None:
            self.state, self.meta = restored
            self.resume_step = int(self.state.step)
            self.controller.load_state_dict(self.meta.get("method") or {})
            self.host_hook(self.controller.after_restore(self.state, self.frozen))
        self.ckpt.discard_after(self.resume_step)
        self.restored = restored is not None
        self.last_step = self.resume_step  # `fit` moves it to the step training ended at
        self.pending: list = []           # (step, metrics on device): fetched one step late, no host sync
        self.window: dict = {}            # step metrics averaged over the logging window

    # ------------------------------------------------------------------ between steps
    def host_hook(self, result) -> None:
        """Takes a controller hook's (state, frozen); a replaced tree goes back onto its shardings."""
        new_state, new_frozen = result
        if new_state is not self.state:
            self.state = jax.device_put(new_state, self.plan.steps.state_sharding)
        if new_frozen is not self.frozen:
            self.frozen = jax.device_put(new_frozen, self.plan.steps.frozen_sharding)
        self.meta["method"] = self.controller.state_dict()

    def evaluate_dev(self, step: int) -> None:
        tcfg, meta = self.config.train, self.meta
        preds = predict(self.plan.steps.eval_step, self.state, self.frozen, self.exp.encoded["dev"],
                        tcfg.eval_batch_size, self.config.data.pad_to_multiple, self.mesh,
                        self.config.output.progress_bar, "dev")
        metrics = self.exp.evaluate("dev", preds)
        primary = float(metrics["primary"])
        self.tracker.log(step, "dev", metrics)
        meta["history"].append({"step": step, "dev_primary": primary})
        improved = meta["best_metric"] is None or primary > meta["best_metric"]
        if improved:
            meta.update(best_metric=primary, best_step=step, evals_since_best=0)
            self.ckpt.save_best(step, self.state, dict(meta), primary)   # before `latest`: see discard_after
        else:
            meta["evals_since_best"] += 1
        self.bar.write(f"step {step}: dev {metrics.get('primary_name', 'primary')}={primary:.4f}"
                       f"{' (best)' if improved else ''}")

    def drain(self, keep: int = 0) -> None:
        """Fetches queued step metrics (all but the newest `keep`), stopping on a non-finite loss."""
        window, total_steps = self.window, self.plan.total_steps
        while len(self.pending) > keep:
            step, m = self.pending.pop(0)
            m = jax.device_get(m)
            if not int(m["finite"]):
                raise NonFiniteLoss(f"non-finite loss/gradient at step {step} (loss={float(m['loss'])}, "
                                    f"grad_norm={float(m['grad_norm'])})")   # + what is on disk: `fit`
            for k in ("loss", "grad_norm", "learning_rate", "tokens"):
                window.setdefault(k, []).append(float(m[k]))
            for k in m:        # UM/EMA telemetry (train/telemetry.py) and method metrics, averaged over the window
                if k.startswith((TELEMETRY_PREFIX, METRIC_PREFIX)):
                    window.setdefault(k, []).append(float(m[k]))
            self.bar.update(1, tokens=int(m["tokens"]), loss=float(m["loss"]))
            if step % self.config.train.log_every_steps == 0 or step == total_steps:
                logged = {k: float(np.mean(v)) for k, v in window.items()}
                logged["learning_rate"] = window["learning_rate"][-1]
                logged["tokens"] = float(np.sum(window["tokens"]))
                self.tracker.log(step, "train", logged)
                window.clear()

    def checkpoint(self, step: int) -> None:
        self.drain()
        self.meta["train_time_s"] = self.train_time_base + time.perf_counter() - self.session_clock
        self.ckpt.save_latest(step, self.state, dict(self.meta))

    # ------------------------------------------------------------------ the loop
    def fit(self) -> None:
        config, tcfg, meta, plan = self.config, self.config.train, self.meta, self.plan
        total_steps, spe, train_fn = plan.total_steps, plan.steps_per_epoch, plan.steps.train_step
        self.tracker = make_tracker(self.workdir, tensorboard=config.output.tensorboard, resume_step=self.resume_step)
        self.controller.log = lambda at, scalars: self.tracker.log(at, "method", scalars)
        start = int(jax.device_get(self.state.step))
        self.bar = bar = Progress(total_steps, initial=start, desc="train", enabled=config.output.progress_bar)
        if self.restored:
            bar.write(f"resumed from step {self.resume_step} (epoch {meta['epoch']}, batch {meta['step_in_epoch']})")
        epoch_clock = time.perf_counter()
        self.train_time_base, self.session_clock = float(meta.get("train_time_s", 0.0)), time.perf_counter()
        step = start
        try:
            with _Signals() as signals:
                if step < total_steps and not meta["stopped_early"]:
                    for epoch, k, batch in plan.batches.iterate(meta["epoch"], meta["step_in_epoch"], tcfg.epochs):
                        self.host_hook(self.controller.before_step(step, self.state, self.frozen))
                        self.state, m = train_fn(self.state, self.frozen, device_batch(batch, self.mesh))
                        step += 1
                        self.pending.append((step, m))
                        self.drain(keep=1)
                        meta["epoch"], meta["step_in_epoch"] = (epoch + 1, 0) if k + 1 == spe else (epoch, k + 1)
                        if k + 1 == spe:
                            self.drain()
                            meta["epoch_times"].append(time.perf_counter() - epoch_clock)
                            epoch_clock = time.perf_counter()
                            self.host_hook(self.controller.end_epoch(epoch, step, self.state, self.frozen))
                        at_eval = step % plan.eval_every == 0 or step == total_steps
                        if at_eval:
                            self.drain()
                            self.evaluate_dev(step)
                            if tcfg.early_stopping_patience and meta["evals_since_best"] >= tcfg.early_stopping_patience:
                                meta["stopped_early"] = True
                        if at_eval or step % tcfg.checkpoint_every_steps == 0 or step == total_steps \
                                or meta["stopped_early"]:
                            self.checkpoint(step)
                        if signals.received is not None:
                            self.checkpoint(step)
                            raise Interrupted(f"interrupted by signal {signals.received} at step {step}")
                        if step >= total_steps or meta["stopped_early"]:
                            break
                self.drain()
                self.checkpoint(step)
                self.ckpt.wait()
        except BaseException as err:
            # Every other way out: finish the pending saves (else the interpreter's exit kills them
            # half-written) and say which step is really on disk.
            kept = self.ckpt.settle()
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
            self.tracker.close()
        self.last_step = step

    def best(self) -> tuple:
        """(state, frozen, meta) of the best checkpoint as stored on disk (the last state when there is none)."""
        meta, step = self.meta, self.last_step
        best = self.ckpt.restore_best(self.state)
        best_state, best_meta = best if best is not None else (self.state, dict(meta, best_step=step))
        frozen = self.frozen
        if best is not None:
            self.controller.load_state_dict(best_meta.get("method") or {})
            best_state, frozen = self.controller.after_restore(best_state, frozen)
        elif meta.get("best_step") not in (None, step):
            print(f"warning: no best checkpoint in {os.path.join(self.workdir, 'checkpoints', 'best')} (best dev step "
                  f"was {meta['best_step']}); final numbers are of the last state, step {step}", file=sys.stderr,
                  flush=True)
        return best_state, frozen, best_meta

    def final_evaluation(self) -> RunResult:
        """Dev and test scored from the best checkpoint as stored on disk (the same path for resumed runs),
        then the post-hoc calibrators of `output.posthoc` fitted on it (`train.posthoc`). A deterministic
        model with calibrators makes one pass per split: the feature step's probabilities are the eval
        step's, and its `features` go to the calibrators only."""
        from umema_jax.train.posthoc import calibrator_names, run_calibrators
        meta, step, config = self.meta, self.last_step, self.config
        method_state = self.controller.state_dict()        # end of training (the best checkpoint may be older)
        best_state, frozen, best_meta = self.best()
        one_pass = bool(calibrator_names(config)) and self.plan.steps.eval_samples == 1
        results, predictions, computed = {}, {}, {}
        for split in ("dev", "test"):
            preds = predict(self.plan.steps.feature_step if one_pass else self.plan.steps.eval_step, best_state,
                            frozen, self.exp.encoded[split], config.train.eval_batch_size,
                            config.data.pad_to_multiple, self.mesh, config.output.progress_bar, split)
            if one_pass:
                computed[split] = {**preds, "aux": dict(preds["aux"])}
                preds["aux"].pop("features", None)
            results[split] = self.exp.evaluate(split, preds)
            predictions[split] = preds
        posthoc = run_calibrators(config, self.exp, self.plan, best_state, frozen, self.mesh, computed=computed)
        return RunResult(dev=results["dev"], test=results["test"], predictions=predictions,
                         best_step=int(best_meta.get("best_step") or step), steps=step,
                         stopped_early=bool(meta["stopped_early"]), epoch_times=list(meta["epoch_times"]),
                         history=list(meta["history"]), train_time_s=float(meta.get("train_time_s", 0.0)),
                         method_state=method_state, posthoc=posthoc)
