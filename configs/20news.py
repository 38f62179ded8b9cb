"""20 Newsgroups (bydate) with SmolLM2-135M + LoRA; long posts, so `max_len` matters most here.

The paper used 512 tokens (`--config.data.max_len=512`); 256 keeps CPU runs affordable
and the truncation count is reported in results.json.
"""
from configs.common import base_config


def get_config():
    c = base_config()
    c.data.name = "20news"
    c.data.max_len = 256
    c.data.dev_size = 500
    c.train.eval_batch_size = 32
    c.optim.learning_rate = 5e-4
    return c
