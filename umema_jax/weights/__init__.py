"""Checkpoint loading (HF safetensors / Flax msgpack, GGUF, built-in names) into backbone params."""
from umema_jax.weights.load import WeightLoadError, load_backbone_weights  # noqa: F401
