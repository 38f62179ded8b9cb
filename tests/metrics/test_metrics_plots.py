"""Reliability diagram PNG with several methods on one figure."""
import numpy as np

from umema_jax.metrics import reliability_diagram


def test_reliability_diagram_png(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 4))
    labels = rng.integers(0, 4, size=200)
    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    path = str(tmp_path / "sub" / "rel.png")
    got = reliability_diagram({"lora": (softmax(3 * logits), labels), "lora+um": (softmax(logits), labels)},
                              path, n_bins=10, title="test")
    assert got == path
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n"
