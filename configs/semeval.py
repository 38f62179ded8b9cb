"""Main job: SmolLM2-135M + LoRA (r=8) on SemEval-2010 Task 8, 1000 training examples.

`python launch.py --config=configs/semeval.py` (add `--config.model.method=full`
for LoRA+UM+EMA, `--config.data.max_len=512` for the paper's sequence length:
SemEval sentences are short, so 128 truncates almost nothing).

Operating point (issue 15): lr 5e-3, 4 epochs, where the LoRA baseline is best
on dev among the settings measured on this backbone (README "Measured
results"; lr 1e-3 x 2 epochs reached dev .388, lr 5e-3 x 4 epochs dev .616 and
was still rising at the last epoch). The same LR serves every adapter method
(EXPERIMENTS.md §3: chosen on the LoRA baseline, never on the method's own score).
"""
from configs.common import base_config


def get_config():
    c = base_config()
    c.data.name = "semeval"
    c.data.max_len = 128
    c.data.pad_to_multiple = 16      # sentences are ~37 tokens: 16 wastes less than 32 for a few more compiles
    c.data.dev_size = 500            # early stopping on 500 held-out dev sentences keeps CPU eval short
    c.train.epochs = 4               # 4 x 63 steps (~25 min on 2 cores)
    c.optim.learning_rate = 5e-3     # LoRA's best measured dev score on SmolLM2-135M (module docstring)
    return c
