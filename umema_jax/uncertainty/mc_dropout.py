"""MC dropout on the LoRA path as an uncertainty head (the sampling hook of `train.step.make_eval_step`)."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from umema_jax.uncertainty.heads import Head, HeadOutput, register_head
from umema_jax.uncertainty.um import last_valid_token, masked_mean


SAMPLED_SCORES = ("predictive_entropy", "mutual_information")


@register_head
@dataclasses.dataclass(frozen=True)
class MCDropout(Head):
    """MC dropout on the LoRA path (Gal & Ghahramani 2016; bayesian-peft's MC dropout): training as plain
    LoRA with `model.lora.dropout` > 0, evaluation averaging `samples` forward passes with that dropout on.
    Its scores are the predictive entropy of the averaged distribution and the mutual information
    between prediction and dropout mask (the epistemic part). No parameters, no temperature."""
    samples: int = 8
    name: ClassVar[str] = "mc_dropout"
    scores: ClassVar[tuple] = SAMPLED_SCORES
    calibrates: ClassVar[bool] = False

    def eval_samples(self) -> int:
        return int(self.samples)

    def build(self, task_type: str, pooling: str):
        return _PassThrough("token" if task_type == "ner" else pooling)

    @classmethod
    def validate(cls, section) -> None:
        if int(section["samples"]) < 2:
            raise ValueError(f"model.mc_dropout.samples={section['samples']}: must be >= 2")


class _PassThrough(nn.Module):
    """The plain LoRA summary (last token, mean, or every token for NER): the uncertainty comes from sampling."""
    pooling: str

    def __call__(self, embeddings, hidden_states, last_hidden, mask, task_id):
        m = mask.astype(jnp.float32)
        rep = last_hidden if self.pooling == "token" else \
            masked_mean(last_hidden, m) if self.pooling == "mean" else last_valid_token(last_hidden, m)
        ones = jnp.ones(rep.shape[:-1], jnp.float32)
        return HeadOutput(rep, ones, {k: jnp.zeros_like(ones) for k in SAMPLED_SCORES})
