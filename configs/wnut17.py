"""WNUT-17 NER (span F1, seqeval strict IOB2) with SmolLM2-135M + LoRA; paper max_len 512."""
from configs.common import base_config


def get_config():
    c = base_config()
    c.data.name = "wnut17"
    c.data.max_len = 128
    c.optim.learning_rate = 5e-4
    return c
