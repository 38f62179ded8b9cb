"""Uncertainty heads: one interface, one registry. The paper's UM branch is one head; a new variant is
one module that defines a head and registers it (docs/EXTENDING.md walks through a toy head).

A head is a frozen dataclass of its settings (the config section `model.<name>.*` is built from its
fields and their defaults) that declares:

  name          the `model.uncertainty` value that selects it, and its config section
  scores        the per-example (per-token for NER) uncertainty scores it exports, by name: they go
                into `ModelOutput.aux`, the run's per-example record and the error-detection metrics
                (AUROC, AURC, PRR) next to max-probability
  needs_hidden_states   whether it reads every backbone layer's hidden states
  calibrates    whether its temperature is its own (then it is exported and scored as well)
  eval_samples()        forward passes evaluation averages (> 1: the LoRA path's dropout stays on and
                the eval step replaces the scores by the samples' predictive entropy and mutual
                information, `train.step.make_eval_step`)
  build(task_type, pooling) -> flax module, called as
                `module(embeddings, hidden_states, last_hidden, mask, task_id)`; its output goes
                through `output(raw, ner)` to a `HeadOutput`
  validate(section)     raise ValueError naming `model.<name>.<key>` for a bad value
  aux_loss(out, labels, mask) -> (loss, metrics) or None: a training term the head adds to the task loss
                (`train.step.make_loss_fn`); None (the default) adds nothing to the traced step

`HeadOutput` is what the model uses: the representation fed to the memory and the task head (pooled
[B, d], or per token [B, n, d] for NER), the temperature that divides the logits (1 = leaves them
alone), the scores, and optionally `memory_embedding` / `u_bar` for the memory's query and retrieval
temperature (None: the memory reads the representation alone, as without UM). Every head's
parameters live in the model's uncertainty slot, `params/um/...`, which the adapter methods train.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
from flax import struct

from umema_jax import registries


@struct.dataclass
class HeadOutput:
    representation: jax.Array            # [B, d] (classification) or [B, n, d] (NER)
    temperature: jax.Array               # [B] or [B, n]; 1 leaves the logits alone
    scores: dict                         # name -> [B] or [B, n], higher = more uncertain
    memory_embedding: Any = None         # [B, d_u] for the memory's query, or None
    u_bar: Any = None                    # [B] or [B, n] for the memory's retrieval temperature, or None


class Head:
    """Base of every uncertainty head (subclass it as a frozen dataclass of the head's settings)."""
    name: ClassVar[str] = ""
    scores: ClassVar[tuple] = ()
    needs_hidden_states: ClassVar[bool] = False
    calibrates: ClassVar[bool] = True

    def eval_samples(self) -> int:
        return 1

    def build(self, task_type: str, pooling: str):
        raise NotImplementedError

    def output(self, raw, ner: bool) -> HeadOutput:
        """The module's output as a `HeadOutput` (the default: the module returns one already)."""
        return raw

    def aux_loss(self, out, labels, mask):
        """(scalar loss, {name: scalar metric}) added to the training loss, or None for no term."""
        return None

    @classmethod
    def validate(cls, section) -> None:
        """Check `model.<name>.*` before anything is built."""

    @classmethod
    def defaults(cls) -> dict:
        """The config section's keys and defaults: the dataclass fields (tuples as lists)."""
        return {f.name: (list(f.default) if isinstance(f.default, tuple) else f.default)
                for f in dataclasses.fields(cls)}

    @classmethod
    def from_section(cls, section) -> "Head":
        """The head's settings from its config section (lists back to tuples)."""
        values = dict(section)
        for f in dataclasses.fields(cls):
            if isinstance(values.get(f.name), list):
                values[f.name] = tuple(values[f.name])
        return cls(**values)


HEADS: dict[str, type[Head]] = {}


def register_head(cls: type[Head]) -> type[Head]:
    """Class decorator: makes `model.uncertainty=<cls.name>` select `cls` (`registries.add`)."""
    return registries.add(HEADS, cls, "uncertainty head")


def get_head(name: str) -> type[Head]:
    if name not in HEADS:
        raise ValueError(f"model.uncertainty={name!r}: must be one of {', '.join(HEADS)}")
    return HEADS[name]

