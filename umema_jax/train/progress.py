"""Progress display: loss, tokens/s and ETA for training and evaluation (tqdm, or nothing)."""
from __future__ import annotations

import sys
import time


class Progress:
    """Thin tqdm wrapper; `enabled=False` (tests, logs) keeps the same calls and prints nothing."""

    def __init__(self, total: int, initial: int = 0, desc: str = "train", enabled: bool = True,
                 leave: bool = True):
        self._bar = None
        self._t0 = time.perf_counter()
        self._tokens = 0
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, desc=desc, leave=leave, dynamic_ncols=True,
                             file=sys.stderr, smoothing=0.1)

    def update(self, n: int = 1, tokens: int = 0, **postfix) -> None:
        self._tokens += int(tokens)
        if self._bar is None:
            return
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        shown = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in postfix.items()}
        if self._tokens:
            shown["tok/s"] = f"{self._tokens / elapsed:.0f}"
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(n)

    def write(self, msg: str) -> None:
        if self._bar is not None:
            self._bar.write(msg)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
