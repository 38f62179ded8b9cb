"""umema-jax: uncertainty-guided, memory-augmented LoRA fine-tuning of causal LMs in JAX/Flax."""


def load_pretrained(name_or_path, *args, **kwargs):
    """See `umema_jax.api.load_pretrained` (imported lazily so `import umema_jax` stays light)."""
    from umema_jax.api import load_pretrained as _load
    return _load(name_or_path, *args, **kwargs)


__all__ = ["load_pretrained"]
