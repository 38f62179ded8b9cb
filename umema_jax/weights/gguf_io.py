"""One parsed `gguf.GGUFReader` per file and process: parsing SmolLM2's metadata (~100k
vocabulary strings) takes seconds, and both the tokenizer and the weight loader need it."""
from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=2)
def _reader(path: str, mtime: float):
    import gguf
    return gguf.GGUFReader(path)


def gguf_reader(path: str):
    """The (memory-mapped, read-only) reader of a GGUF file, cached while the file is unchanged."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: GGUF file not found")
    return _reader(os.path.abspath(path), os.path.getmtime(path))
