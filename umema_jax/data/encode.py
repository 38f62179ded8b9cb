"""Task encoding with the real tokenizers (no special tokens unless the model expects them).

Conventions (docs/DATA.md has the long form):
* Sequence classification: the text is encoded as one string, truncated to
  `max_len` tokens (right side by default); truncated examples are counted.
* Token classification: the word's label sits on its first sub-token, every
  other position gets -100. Byte-level BPE tokenizers (GPT-2, SmolLM2) only
  mark a word start with a leading space, and `is_split_into_words` does not
  add it for them; we prepend " " to every word after the first, so encoding
  the words `['Hello', 'world']` equals encoding the string `'Hello world'`.
  Words whose first sub-token falls beyond `max_len` are counted and
  reported (`num_truncated_words`), never dropped silently.
* BOS: added only when the tokenizer says so (`add_bos_token`); GPT-2 has no
  BOS convention and SmolLM2's GGUF says `add_bos_token = False`, so by
  default neither gets one. No EOS is appended.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

IGNORE_INDEX = -100


@dataclasses.dataclass
class EncodedDataset:
    """Token ids per example plus labels; what `pipeline.py` batches."""
    input_ids: list            # list of int32 arrays (unpadded)
    labels: object             # cls: int32 array [N]; ner: list of int32 arrays aligned with input_ids
    ids: list                  # example ids
    task_type: str             # "cls" | "ner"
    pad_id: int
    max_len: int
    label_names: list
    word_index: list | None = None   # ner: per position, word index on first sub-tokens, -1 elsewhere
    num_words: list | None = None    # ner: words per sentence before truncation
    truncated: np.ndarray | None = None  # bool [N]: example lost tokens to max_len

    @property
    def num_truncated(self) -> int:
        """Examples that lost tokens to `max_len`."""
        return int(np.sum(self.truncated)) if self.truncated is not None else 0

    @property
    def num_truncated_words(self) -> int:
        """NER: words whose first sub-token was cut off (they get no prediction)."""
        if self.task_type != "ner":
            return 0
        return int(sum(n - int((w >= 0).sum()) for n, w in zip(self.num_words, self.word_index)))

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.input_ids], dtype=np.int64)

    def stats(self) -> dict:
        out = {"examples": len(self), "max_len": self.max_len,
               "truncated_examples": int(self.num_truncated)}
        if self.task_type == "ner":
            out["truncated_words"] = int(self.num_truncated_words)
            out["words"] = int(sum(self.num_words))
        return out

    def subset(self, indices: Sequence[int]) -> "EncodedDataset":
        """Some examples (e.g. a few-shot draw after encoding), same order as `indices`."""
        idx = [int(i) for i in indices]
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        labels = np.asarray(self.labels)[idx] if self.task_type == "cls" else pick(self.labels)
        return dataclasses.replace(
            self, input_ids=pick(self.input_ids), labels=labels, ids=pick(self.ids),
            word_index=pick(self.word_index), num_words=pick(self.num_words),
            truncated=None if self.truncated is None else np.asarray(self.truncated)[idx])


def wants_bos(tokenizer) -> bool:
    """Whether the model expects a BOS token (the tokenizer's own `add_bos_token` flag)."""
    return bool(getattr(tokenizer, "add_bos_token", False)) and tokenizer.bos_token_id is not None


def needs_space_prefix(tokenizer) -> bool:
    """True for byte-level BPE (GPT-2 style), whose word starts are marked by a leading space."""
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    text = repr(pre) if pre is not None else ""
    return "ByteLevel" in text


def _bos_prefix(tokenizer, add_bos: bool | None) -> list[int]:
    add = wants_bos(tokenizer) if add_bos is None else add_bos
    if not add:
        return []
    if tokenizer.bos_token_id is None:
        raise ValueError("add_bos=True but the tokenizer has no BOS token")
    return [int(tokenizer.bos_token_id)]


def _label_ids(labels: Sequence[str], label_names: Sequence[str], ids: Sequence[str]) -> list[int]:
    table = {name: i for i, name in enumerate(label_names)}
    out = []
    for lab, ex_id in zip(labels, ids):
        if lab not in table:
            raise ValueError(f"example {ex_id}: label {lab!r} is not in the label set {list(label_names)}")
        out.append(table[lab])
    return out


def encode_classification(examples, tokenizer, label_names: Sequence[str], max_len: int,
                          *, add_bos: bool | None = None,
                          truncation_side: str = "right") -> EncodedDataset:
    """Encodes `ClassificationExample`s; texts longer than `max_len` tokens are cut and counted."""
    if truncation_side not in ("right", "left"):
        raise ValueError(f"truncation_side must be 'right' or 'left', got {truncation_side!r}")
    prefix = _bos_prefix(tokenizer, add_bos)
    budget = max_len - len(prefix)
    if budget <= 0:
        raise ValueError(f"max_len={max_len} leaves no room for text")
    encs = tokenizer.backend_tokenizer.encode_batch([ex.text for ex in examples],
                                                    add_special_tokens=False)
    input_ids, flags = [], []
    for enc in encs:
        ids = enc.ids
        flags.append(len(ids) > budget)
        ids = ids[:budget] if truncation_side == "right" else ids[len(ids) - budget:] if len(ids) > budget else ids
        input_ids.append(np.asarray(prefix + list(ids), dtype=np.int32))
    ex_ids = [ex.id for ex in examples]
    labels = np.asarray(_label_ids([ex.label for ex in examples], label_names, ex_ids), dtype=np.int32)
    out = EncodedDataset(input_ids=input_ids, labels=labels, ids=ex_ids, task_type="cls",
                         pad_id=int(tokenizer.pad_token_id), max_len=int(max_len),
                         label_names=list(label_names), truncated=np.asarray(flags, dtype=bool))
    return out


def word_pieces(words: Sequence[str], tokenizer) -> list[str]:
    """The per-word strings handed to the tokenizer: " word" after the first for byte-level BPE."""
    if needs_space_prefix(tokenizer):
        return [w if i == 0 else " " + w for i, w in enumerate(words)]
    return list(words)


def encode_words(words: Sequence[str], tokenizer):
    """(ids, word_ids) of a word sequence, equal to encoding `' '.join(words)` for BPE tokenizers."""
    enc = tokenizer.backend_tokenizer.encode(word_pieces(words, tokenizer), is_pretokenized=True,
                                             add_special_tokens=False)
    return enc.ids, enc.word_ids


def encode_token_classification(examples, tokenizer, label_names: Sequence[str], max_len: int,
                                *, add_bos: bool | None = None) -> EncodedDataset:
    """Encodes `TokenExample`s, labelling the first sub-token of each word (-100 elsewhere)."""
    prefix = _bos_prefix(tokenizer, add_bos)
    budget = max_len - len(prefix)
    if budget <= 0:
        raise ValueError(f"max_len={max_len} leaves no room for text")
    table = {name: i for i, name in enumerate(label_names)}
    encs = tokenizer.backend_tokenizer.encode_batch(
        [word_pieces(ex.tokens, tokenizer) for ex in examples], is_pretokenized=True,
        add_special_tokens=False)
    input_ids, labels, word_index, num_words = [], [], [], []
    flags = []
    for ex, enc in zip(examples, encs):
        if len(ex.tokens) != len(ex.tags):
            raise ValueError(f"example {ex.id}: {len(ex.tokens)} tokens but {len(ex.tags)} tags")
        tag_ids = []
        for tag in ex.tags:
            if tag not in table:
                raise ValueError(f"example {ex.id}: tag {tag!r} is not in the label set {list(label_names)}")
            tag_ids.append(table[tag])
        ids = list(enc.ids)[:budget]
        wids = list(enc.word_ids)[:budget]
        lab = np.full(len(prefix) + len(ids), IGNORE_INDEX, dtype=np.int32)
        widx = np.full(len(prefix) + len(ids), -1, dtype=np.int32)
        prev = None
        for pos, w in enumerate(wids):
            if w is not None and w != prev:
                lab[len(prefix) + pos] = tag_ids[w]
                widx[len(prefix) + pos] = w
            prev = w
        flags.append(int((widx >= 0).sum()) < len(ex.tokens) or len(enc.ids) > budget)
        input_ids.append(np.asarray(prefix + ids, dtype=np.int32))
        labels.append(lab)
        word_index.append(widx)
        num_words.append(len(ex.tokens))
    return EncodedDataset(input_ids=input_ids, labels=labels, ids=[ex.id for ex in examples],
                          task_type="ner", pad_id=int(tokenizer.pad_token_id), max_len=int(max_len),
                          label_names=list(label_names), word_index=word_index, num_words=num_words,
                          truncated=np.asarray(flags, dtype=bool))


def encode_splits(splits, tokenizer, max_len: int, **kwargs) -> dict:
    """`{'train'|'dev'|'test': EncodedDataset}` for a `DatasetSplits`."""
    fn = encode_classification if splits.task_type == "cls" else encode_token_classification
    return {name: fn(splits.split(name), tokenizer, splits.labels, max_len, **kwargs)
            for name in ("train", "dev", "test")}
