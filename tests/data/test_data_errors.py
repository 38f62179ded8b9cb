"""Bad data files fail with one line naming file:line, in the readers and in `python -m umema_jax.data`."""
import os
import shutil
import subprocess
import sys

import pytest

from umema_jax.data import DataFormatError, load_dataset_splits

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures", "data")


def copy_fixture(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(os.path.join(FIX, name), dst)
    return dst


def edit_line(path, lineno, edit):
    """Applies `edit(bytes) -> bytes` to 1-based line `lineno` of `path` (bytes, line ends kept)."""
    lines = path.read_bytes().split(b"\n")
    lines[lineno - 1] = edit(lines[lineno - 1])
    path.write_bytes(b"\n".join(lines))


PLONER_TINY = {"domains": "connl03,wnut16"}     # the two domains the fixture has


@pytest.mark.parametrize("dataset, fixture, file, lineno", [
    ("semeval", "semeval_tiny", "TRAIN_FILE.TXT", 5),
    ("wnut17", "wnut17_tiny", "wnut17train.conll", 3),
    ("ploner", "ploner_tiny", "connl03_train.txt", 2),
    ("20news", "20news_tiny", "train.jsonl", 2),
])
def test_non_utf8_byte_names_file_and_line(dataset, fixture, file, lineno, tmp_path):
    folder = copy_fixture(tmp_path, fixture)
    edit_line(folder / file, lineno, lambda b: b[:3] + b"\xff" + b[3:])   # Latin-1 'ÿ' in a UTF-8 file
    with pytest.raises(DataFormatError, match="not valid UTF-8") as info:
        load_dataset_splits(dataset, str(folder), **(PLONER_TINY if dataset == "ploner" else {}))
    assert str(info.value).startswith(f"{folder / file}:{lineno}: byte 0xff at column 4")


@pytest.mark.parametrize("dataset, fixture, file, lineno, edit", [
    ("wnut17", "wnut17_tiny", "wnut17train.conll", 5, lambda b: b.replace(b"B-location", b"B-animal")),
    ("ploner", "ploner_tiny", "connl03_train.txt", 3, lambda b: b.replace(b"B-LOC", b"B-MISC")),
])
def test_unknown_tag_names_file_and_line(dataset, fixture, file, lineno, edit, tmp_path):
    folder = copy_fixture(tmp_path, fixture)
    edit_line(folder / file, lineno, edit)
    with pytest.raises(DataFormatError) as info:
        load_dataset_splits(dataset, str(folder), **(PLONER_TINY if dataset == "ploner" else {}))
    assert str(info.value).startswith(f"{folder / file}:{lineno}: tag ")


def test_cli_prints_one_line_for_bad_data(tmp_path):
    folder = copy_fixture(tmp_path, "semeval_tiny")
    edit_line(folder / "TRAIN_FILE.TXT", 2, lambda b: b"Not-A-Relation\r")
    proc = subprocess.run([sys.executable, "-m", "umema_jax.data", "--dataset=semeval", f"--data_dir={folder}",
                           "--tokenizer=none"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "PyTorch was not found" not in line]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"{folder / 'TRAIN_FILE.TXT'}:2: example 1: unknown relation label" in lines[0]
