"""Seeded mutation fuzzing (tests/helpers/fuzzing.py, run at scale by benchmarks/fuzz.py) at test size,
and the bugs it found, pinned."""

import os

import pytest

from helpers import fuzzing as fuzz
from pop_local import keys
from pop_local.errors import PopMetadataError
from pop_local.format.metadata import read_pop_metadata


@pytest.mark.slow
def test_a_few_hundred_mutants_never_crash_hang_or_disagree(smollm2, tmp_path):
    result = fuzz.run(smollm2, inputs=400, seed=7, folder=str(tmp_path), cli_every=5)
    for target, row in result.items():
        assert row["inputs"] > 0, target
        bad = row["crashes"] + row["hangs"] + row["bad_messages"] + row["inputs_modified"] + row["disagreements"]
        assert bad == 0, (target, row["examples"])
    assert result["reader"]["rejected"] > 0 and result["keys"]["accepted"] > 0  # the mutants reach both outcomes
    assert result["native: files"]["accepted"] > 0 and result["native: kv_overrides"]["rejected"] > 0


def _seed_with(tmp_path, **changes):
    from gguf import GGUFValueType as T

    kv = {"llama.block_count": 30, keys.SKIP_LAYERS: "20-29"}
    typed = {}
    for name, value in changes.items():
        name = {"version": keys.VERSION, "skip": keys.SKIP_LAYERS}[name]
        kv.pop(name, None)
        typed[name] = value
    path = str(tmp_path / "k.gguf")
    fuzz.write_gguf(path, "llama", kv, typed)
    return path, T


def test_version_must_be_a_u32_as_native_requires(tmp_path):
    from gguf import GGUFValueType as T

    path, _ = _seed_with(tmp_path, version=(True, T.BOOL, None))
    with pytest.raises(PopMetadataError, match="pop.version: expected a u32"):
        read_pop_metadata(path)
    os.remove(path)
    path, _ = _seed_with(tmp_path, version=(1, T.INT32, None))
    with pytest.raises(PopMetadataError, match="expected a u32"):
        read_pop_metadata(path)


@pytest.mark.parametrize("text", ["٣", "１-２", "\u00a02", "2\x00,3"])
def test_skip_sets_take_ascii_digits_and_spaces_only(tmp_path, text):
    """Python's \\d and \\s took any Unicode digit or space ("٣" read as layer 3) where native/pop.cpp
    takes ASCII only. A NUL ends the string for native (C string) but not for Python: Python rejects
    it, and PopLlama always checks in Python before native loads."""
    from gguf import GGUFValueType as T

    path, _ = _seed_with(tmp_path, skip=(text, T.STRING, None))
    with pytest.raises(PopMetadataError) as e:
        read_pop_metadata(path)
    assert "\n" not in str(e.value)


def test_huge_counts_and_corrupt_key_names_are_quick_one_line_errors(tmp_path):
    import struct
    import time

    path = fuzz.reader_seed(str(tmp_path))
    data = bytearray(open(path, "rb").read())
    fields = fuzz.header_fields(bytes(data))
    for offset, kind in fields:
        if kind != "u64" or offset == 8:  # 8: the tensor count, which a header reader does not use
            continue
        mutant = bytearray(data)
        struct.pack_into("<Q", mutant, offset, 2**63)
        with open(tmp_path / "m.gguf", "wb") as f:
            f.write(mutant)
        started = time.time()
        with pytest.raises(PopMetadataError) as e:
            read_pop_metadata(str(tmp_path / "m.gguf"))
        assert time.time() - started < 1 and "\n" not in str(e.value)
    mutant = bytearray(data)
    mutant[32:36] = b"\xff\x00\n\x01"  # inside the first key's name
    with open(tmp_path / "m.gguf", "wb") as f:
        f.write(mutant)
    with pytest.raises(PopMetadataError, match="is not text"):
        read_pop_metadata(str(tmp_path / "m.gguf"))
