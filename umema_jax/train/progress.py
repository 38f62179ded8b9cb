"""Progress display: loss, tokens/s and ETA for training and evaluation (tqdm, or nothing)."""
from __future__ import annotations

import sys
import time


class Progress:
    """Thin tqdm wrapper. `enabled=False` (logs, the experiment runner) draws no bar, and each `write`
    line carries the count, elapsed time and ETA instead, so a log file still shows how far a run is."""

    def __init__(self, total: int, initial: int = 0, desc: str = "train", enabled: bool = True,
                 leave: bool = True):
        self._bar = None
        self._t0 = time.perf_counter()
        self._tokens = 0
        self._n, self._initial, self._total = initial, initial, total
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, desc=desc, leave=leave, dynamic_ncols=True,
                             file=sys.stderr, smoothing=0.1)

    def update(self, n: int = 1, tokens: int = 0, **postfix) -> None:
        self._tokens += int(tokens)
        self._n += n
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
            print(f"{msg} [{self.status()}]", file=sys.stderr, flush=True)

    def status(self) -> str:
        """'n/total, elapsed m:ss, ETA m:ss' from the rate since this process started."""
        elapsed = time.perf_counter() - self._t0
        done = self._n - self._initial
        eta = elapsed / done * max(self._total - self._n, 0) if done > 0 else None
        return (f"{self._n}/{self._total}, elapsed {_clock(elapsed)}, "
                f"ETA {_clock(eta) if eta is not None else '?'}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"
