"""Skip-set strings, key names shared with native/, and the anchored-edit mechanism (no model needed)."""

import os
import re
import sys

import pytest

from pop_local.errors import PopMetadataError
from pop_local.format import keys
from pop_local.format.layers import format_layers, parse_layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "native"))

import patch_upstream  # noqa: E402


@pytest.mark.parametrize("text, layers", [
    ("20-29", tuple(range(20, 30))),
    ("20,21,28", (20, 21, 28)),
    (" 1 , 3-4,7 ", (1, 3, 4, 7)),
    ("", ()),
    ("5", (5,)),
])
def test_parse_layers(text, layers):
    assert parse_layers(text, 30) == layers


def test_format_round_trip():
    for layers in [(20, 21, 22, 28), tuple(range(10)), (0,), (), (3, 5, 7)]:
        assert parse_layers(format_layers(layers), 30) == layers
    assert format_layers([29, 20, 21, 22]) == "20-22,29"


@pytest.mark.parametrize("text, message", [
    ("20-35", "layer 35 is out of range"),
    ("a", "cannot read"),
    ("3,2", "not ascending"),
    ("3,3", "not ascending or repeated"),
    ("9-4", "descending"),
    ("1,,2", "cannot read"),
    ("-1", "cannot read"),
])
def test_parse_layers_rejects(text, message):
    with pytest.raises(PopMetadataError, match=message) as e:
        parse_layers(text, 30)
    assert str(e.value).startswith(keys.SKIP_LAYERS + ":")


def test_native_key_names_match_keys_module():
    with open(os.path.join(ROOT, "native", "pop.cpp"), encoding="utf-8") as f:
        src = f.read()
    native = dict(re.findall(r'POP_KEY_(\w+)\s*=\s*"([^"]+)"', src))
    assert native == {"VERSION": keys.VERSION, "SKIP_LAYERS": keys.SKIP_LAYERS, "ENABLED": keys.ENABLED}
    assert f"POP_SCHEMA_VERSION  = {keys.SCHEMA_VERSION};" in src
    assert all(k.startswith(keys.PREFIX) for k in keys.RUNTIME_KEYS)


def test_native_abi_version_matches_bindings():
    from pop_local.runtime import native as _native

    with open(os.path.join(ROOT, "native", "pop_api.h"), encoding="utf-8") as f:
        assert f"#define POP_LLAMA_ABI_VERSION {_native.ABI_VERSION}" in f.read()


def test_fitted_tensor_names_match_native():
    """The converter writes fitted K/V under the names the native loader creates and looks up."""
    with open(os.path.join(ROOT, "native", "pop.cpp"), encoding="utf-8") as f:
        src = f.read()
    assert '(is_v ? ".attn_v.pop" : ".attn_k.pop")' in src and '"blk." + std::to_string(il)' in src
    assert keys.fitted_tensor_name(20, "k") == "blk.20.attn_k.pop"
    assert keys.fitted_tensor_name(3, "v") == "blk.3.attn_v.pop"
    assert keys.fitted_tensor_name(3, "v").endswith(keys.POP_TENSOR_SUFFIX)
    with open(os.path.join(ROOT, "native", "patch_upstream.py"), encoding="utf-8") as f:
        assert 'LLM_TENSOR_ATTN_K, \\"pop\\", il)' in f.read()  # LLM_TN(...)(ATTN_K, "pop", il) at load


def _fake_tree(tmp_path, drop=None):
    """Files holding exactly the anchors of every edit (one anchor optionally left out)."""
    src = tmp_path / "vendor" / "llama.cpp" / "src"
    texts = {}
    for i, (rel, anchor, _line, *times) in enumerate(patch_upstream.EDITS):
        if i == drop:
            continue
        texts.setdefault(rel, "")
        texts[rel] += ("// filler\n" + anchor.replace("@@", "") + "\n") * (times[0] if times else 1)
    for rel in {e[0] for e in patch_upstream.EDITS}:
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(texts.get(rel, "// empty\n"))
    return src


def test_patch_applies_once_and_is_idempotent(tmp_path):
    src = _fake_tree(tmp_path)
    assert patch_upstream.patch_tree(str(tmp_path)) > 0
    snapshot = {p: p.read_text() for p in src.rglob("*") if p.is_file()}
    assert patch_upstream.patch_tree(str(tmp_path)) == 0
    assert snapshot == {p: p.read_text() for p in src.rglob("*") if p.is_file()}
    for rel, anchor, line, *times in patch_upstream.EDITS:
        before, _, after = anchor.partition("@@")
        assert (src / rel).read_text().count(before + line + "\n" + after) == (times[0] if times else 1), rel


def test_native_and_python_agree_on_the_supported_architectures(tmp_path):
    """One list (pop_local/format/architectures.py), compiled into libllama; no edit names a model builder."""
    from pop_local.format import architectures
    from pop_local.runtime import native as _native

    inc = patch_upstream.architectures_inc()
    assert re.findall(r'"([\w-]+)"', inc) == sorted(_native.ARCHITECTURES) == list(architectures.NAMES)
    with open(os.path.join(ROOT, "native", "pop.cpp")) as f:
        assert '#include "pop_architectures.inc"' in f.read()
    (tmp_path / "vendor" / "llama.cpp" / "src").mkdir(parents=True)
    assert patch_upstream.write_architectures(str(tmp_path)) and not patch_upstream.write_architectures(str(tmp_path))
    assert not [rel for rel, *_ in patch_upstream.EDITS if rel.startswith("models/")]


def test_missing_anchor_stops_and_names_the_expected_version(tmp_path):
    src = _fake_tree(tmp_path, drop=4)
    before = {p: p.read_text() for p in src.rglob("*") if p.is_file()}
    with pytest.raises(patch_upstream.PatchError, match="llama-cpp-python 0.3.36"):
        patch_upstream.patch_tree(str(tmp_path))
    # nothing half-patched
    assert before == {p: p.read_text() for p in src.rglob("*") if p.is_file()}


def test_patch_main_exit_codes(tmp_path, capsys):
    assert patch_upstream.main(["x"]) == 2
    assert patch_upstream.main(["x", str(tmp_path)]) == 1
    assert "cannot patch llama.cpp" in capsys.readouterr().err
