"""Seconds-long end-to-end run: tiny random-weight GPT-2 on the bundled SemEval fixture.

Exercises every stage (train, dev eval, checkpoints, outputs) without real weights or data.

`python launch.py --config=configs/smoke.py` (under a minute on 2 CPU cores; random weights, so the
accuracy is chance: it checks the plumbing, not the method).
"""
import os

from umema_jax.defaults import base_config

_FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "tests", "fixtures", "data")


def get_config():
    c = base_config()
    c.model.name = "gpt2-tiny"         # GPT-2 BPE from local files: the fastest tokenizer to load
    c.model.init_from_scratch = True
    c.model.method = "full"
    c.data.name = "semeval"
    c.data.data_dir = os.path.join(_FIXTURES, "semeval_tiny")
    c.data.train_size = 64
    c.data.max_len = 64
    c.data.pad_to_multiple = 16
    c.train.epochs = 2
    c.train.batch_size = 8
    c.train.eval_batch_size = 16
    c.train.checkpoint_every_steps = 4
    c.train.log_every_steps = 2
    c.optim.learning_rate = 1e-3
    c.output.progress_bar = False
    return c
