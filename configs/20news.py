"""20 Newsgroups (bydate) with SmolLM2-135M + LoRA; long posts, so `max_len` matters most here.

The paper used 512 tokens (`--config.data.max_len=512`); 256 keeps CPU runs affordable
and the truncation count is reported in results.json.

Learning rate and epochs: those of the `cpu` profile (lr 2e-3, 10 epochs). docs/EXPERIMENTS.md
chooses the LR once per backbone, on SemEval's dev set (`configs/semeval.py`), and fixes it for
every dataset; this dataset's own dev score at it is in its table5/table6 runs.

`python launch.py --config=configs/20news.py` (`--config.model.method=full` for the paper's method).
Run time not measured yet: the runner estimates 4 h 23 min on one core of a 2-core Intel Xeon
(`python -m umema_jax.experiments table5 --profile=cpu --only=dataset=20news,size=1000,seed=0,method=lora
--dry_run`); no result yet.
"""
from umema_jax.defaults import base_config


def get_config():
    c = base_config()
    c.data.name = "20news"
    c.data.max_len = 256
    c.data.dev_size = 500
    c.train.eval_batch_size = 32
    c.train.epochs = 10
    c.optim.learning_rate = 2e-3     # the cpu profile's LR (configs/semeval.py, docs/EXPERIMENTS.md)
    return c
