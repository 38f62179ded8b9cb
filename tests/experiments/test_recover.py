"""Recovering the run ledger from published sidecars: the same tables come back, and nothing is invented."""
import json
import os
import shutil

import pytest

from umema_jax.experiments import pipeline, recover
from umema_jax.experiments import specs as S
from umema_jax.experiments.targets import TARGETS

from tests.experiments.test_targets import choose, fake_results, write_run


def _train_semeval_slice(ctx):
    values = {}
    for c in TARGETS["table5"].cells(ctx):
        for s in c.specs:
            if s.get("data.name") == "semeval" and s.get("data.train_size") == 1000:
                acc = 0.5 + 0.01 * len(values)
                write_run(ctx.root, s, fake_results(s, primary=acc, auroc_error_u_bar=0.51))
                values[s.name] = acc
    return values


def test_recovered_entries_reproduce_the_published_tables_and_only_their_numbers(tmp_path):
    ctx = choose(tmp_path)
    values = _train_semeval_slice(ctx)
    pipeline.render(ctx, ["table5", "table7"], log=lambda m: None)
    published = {t: (tmp_path / "out" / f"{t}.md").read_text() for t in ("table5", "table7")}
    shutil.rmtree(ctx.root)
    shutil.rmtree(ctx.ledger)                     # runs finished before the ledger existed, machine gone
    for t in published:
        (tmp_path / "out" / f"{t}.md").unlink()

    written = recover.recover(ctx, log=lambda m: None)
    assert sorted(written) == sorted(values)
    pipeline.render(ctx, ["table5", "table7"], log=lambda m: None)
    for t, text in published.items():
        assert (tmp_path / "out" / f"{t}.md").read_text() == text, t
    some = next(iter(values))
    spec = next(s for c in TARGETS["table5"].cells(ctx) for s in c.specs if s.name == some)
    entry = S.ledger_entry(ctx.ledger, spec)
    assert entry["source"] == recover.RECOVERED and entry["results"]["test"]["accuracy"] == values[some]
    assert "wall_time_s" not in entry["results"]                 # only what a table published
    assert entry["config"]["model"]["method"] == spec.get("model.method")
    assert recover.recover(ctx, log=lambda m: None) == []         # entries exist: nothing to do


def test_sidecars_that_disagree_are_an_error_naming_the_file(tmp_path):
    ctx = choose(tmp_path)
    _train_semeval_slice(ctx)
    pipeline.render(ctx, ["table5", "table7"], log=lambda m: None)
    shutil.rmtree(ctx.root)
    shutil.rmtree(ctx.ledger)
    path = os.path.join(ctx.out, "table7.json")
    side = json.load(open(path))
    cell = next(c for c in side["cells"] if c["metric"] == "test.{primary}" and c["per_seed"].get("0") is not None)
    cell["per_seed"]["0"] += 0.1
    json.dump(side, open(path, "w"))
    with pytest.raises(ValueError, match="table5.json.*but.*table7.json|table7.json.*but.*table5.json"):
        recover.recover(ctx, log=lambda m: None)
    assert not os.path.isdir(ctx.ledger) or not os.listdir(ctx.ledger)
