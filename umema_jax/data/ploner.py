"""PLONER (Fu et al. 2020): PER/LOC/ORG NER over seven source domains.

Files `<domain>_{train,dev,test}.txt` (`token tag ` lines with a trailing
space). `domains` picks the domains pooled into every split (default all
seven); `train_domains` / `eval_domains` override it for the training split
or the dev+test splits (cross-domain runs: train on one, test on others).
`*_all.txt` is never read (it re-lists train+dev+test).
"""
from __future__ import annotations

import os

from umema_jax.data.conll import read_conll
from umema_jax.data.types import DatasetSplits

DOMAINS = ("connl03", "onbc", "onbn", "onmz", "onnw", "onwb", "wnut16")
LABELS = ("O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER")


def parse_domains(domains) -> tuple[str, ...]:
    """None/'all' -> all seven; a comma string or a sequence -> validated tuple (given order)."""
    if domains is None or domains == "all":
        return DOMAINS
    items = domains.split(",") if isinstance(domains, str) else list(domains)
    items = tuple(d.strip() for d in items if d.strip())
    bad = [d for d in items if d not in DOMAINS]
    if bad or not items:
        raise ValueError(f"unknown PLONER domain(s) {bad or items}; choose from {DOMAINS}")
    return items


def read_ploner_split(data_dir: str, split: str, domains, counts: dict | None = None) -> list:
    out = []
    for dom in parse_domains(domains):
        part = read_conll(os.path.join(data_dir, f"{dom}_{split}.txt"), token_col=0, tag_col=1,
                          id_prefix=f"{dom}_{split}", labels=LABELS)
        if counts is not None:
            counts[f"{dom}_{split}.txt"] = len(part)
        out.extend(part)
    return out


def load_ploner(data_dir: str, domains=None, train_domains=None, eval_domains=None) -> DatasetSplits:
    train_d = parse_domains(train_domains if train_domains is not None else domains)
    eval_d = parse_domains(eval_domains if eval_domains is not None else domains)
    counts: dict = {}
    return DatasetSplits(train=read_ploner_split(data_dir, "train", train_d, counts),
                         dev=read_ploner_split(data_dir, "dev", eval_d, counts),
                         test=read_ploner_split(data_dir, "test", eval_d, counts),
                         labels=list(LABELS), task_type="ner", name="ploner",
                         notes={"train_domains": list(train_d), "eval_domains": list(eval_d),
                                "source_files": counts})
