"""Missing-data corruption (paper §4.6): a fraction of input words deleted or masked.

* Each eligible word is hit independently with probability `rate`
  (so the expected fraction is `rate` at every sentence length).
* `mode="delete"` removes the word (NER: its tag goes with it);
  `mode="mask"` replaces it with `mask_token` (NER: the tag stays).
  Deletion never empties an example: if every eligible word was drawn and
  nothing else is left, one of them (drawn with the same rng) survives.
* Words are whitespace-separated units; text keeps its other whitespace.
* SemEval: entity markers are never touched. With `protect_entities`
  (default) every word from `<eN>` to `</eN>` (the nominals, markers
  attached) is protected as well, since the label is defined on them; the
  rate then applies to the remaining words.
* Randomness: per example, `default_rng([seed, crc32(split), crc32(id)])`,
  so an example is corrupted the same way whatever subset or order it is
  in, and train / test use independent streams.
"""
from __future__ import annotations

import re
import zlib

import numpy as np

from umema_jax.data.types import ClassificationExample, TokenExample

MARKERS = ("<e1>", "</e1>", "<e2>", "</e2>")
_WS = re.compile(r"(\s+)")


def _check(rate: float, mode: str):
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"corruption rate must be in [0, 1], got {rate}")
    if mode not in ("delete", "mask"):
        raise ValueError(f"mode must be 'delete' or 'mask', got {mode!r}")


def _draw(eligible: list[int], rate: float, rng, keep_one: bool) -> set:
    hits = [i for i, u in zip(eligible, rng.random(len(eligible))) if u < rate]
    if keep_one and hits and len(hits) == len(eligible):
        hits.pop(int(rng.integers(len(hits))))
    return set(hits)


def protected_words(words: list[str], protect_entities: bool = True) -> list[bool]:
    """True for words carrying an entity marker (and, optionally, words inside an entity)."""
    out, inside = [], False
    for w in words:
        has_open = "<e1>" in w or "<e2>" in w
        has_close = "</e1>" in w or "</e2>" in w
        marked = has_open or has_close
        out.append(marked or (protect_entities and inside))
        if has_open:
            inside = True
        if has_close:
            inside = False
    return out


def corrupt_text(text: str, rate: float, rng, mode: str = "delete", mask_token: str = "[MASK]",
                 protect_entities: bool = True) -> str:
    """Deletes/masks whitespace-separated words of `text`; entity markers are never touched."""
    _check(rate, mode)
    parts = _WS.split(text)                     # words at even positions, whitespace at odd
    word_pos = [i for i in range(0, len(parts), 2) if parts[i]]
    protect = protected_words([parts[i] for i in word_pos], protect_entities)
    eligible = [i for i, p in zip(word_pos, protect) if not p]
    hits = _draw(eligible, rate, rng, keep_one=(mode == "delete" and not any(protect)))
    for i in sorted(hits):
        if mode == "mask":
            parts[i] = mask_token
            continue
        parts[i] = ""
        if i + 1 < len(parts):
            parts[i + 1] = ""                   # the whitespace after the word
        elif i >= 1:
            parts[i - 1] = ""                   # last word: the whitespace before it
    return "".join(parts)


def corrupt_tokens(tokens: list[str], tags: list[str], rate: float, rng, mode: str = "delete",
                   mask_token: str = "[MASK]") -> tuple[list[str], list[str]]:
    """NER: deleted words take their tags with them; masked words keep their tags."""
    _check(rate, mode)
    hits = _draw(list(range(len(tokens))), rate, rng, keep_one=(mode == "delete"))
    if mode == "mask":
        return [mask_token if i in hits else t for i, t in enumerate(tokens)], list(tags)
    keep = [i for i in range(len(tokens)) if i not in hits]
    return [tokens[i] for i in keep], [tags[i] for i in keep]


def _rng(seed: int, split: str, ex_id: str):
    return np.random.default_rng([int(seed), zlib.crc32(split.encode()), zlib.crc32(str(ex_id).encode())])


def corrupt_examples(examples: list, rate: float, seed: int, *, split: str = "train",
                     mode: str = "delete", mask_token: str = "[MASK]",
                     protect_entities: bool = True) -> list:
    """Corrupted copies of `examples` (classification or NER); rate 0 returns them unchanged."""
    _check(rate, mode)
    if rate == 0.0:
        return list(examples)
    out = []
    for ex in examples:
        rng = _rng(seed, split, ex.id)
        if isinstance(ex, TokenExample):
            toks, tags = corrupt_tokens(list(ex.tokens), list(ex.tags), rate, rng, mode, mask_token)
            out.append(TokenExample(tokens=toks, tags=tags, id=ex.id))
        elif isinstance(ex, ClassificationExample):
            out.append(ClassificationExample(
                text=corrupt_text(ex.text, rate, rng, mode, mask_token, protect_entities),
                label=ex.label, id=ex.id))
        else:
            raise TypeError(f"cannot corrupt {type(ex).__name__}")
    return out
