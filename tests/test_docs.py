"""The docs: README.md is the front door, and every generated block in it and in docs/ is what
benchmarks/tables.py makes from benchmarks/results/*.json and the code today (never typed by hand)."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLES = os.path.join(ROOT, "benchmarks", "tables.py")


def _show(key):
    return subprocess.run([sys.executable, TABLES, "--show", key], capture_output=True, text=True, check=True,
                          cwd=ROOT).stdout.strip()


def _read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def test_every_generated_block_is_what_its_source_gives():
    r = subprocess.run([sys.executable, TABLES, "--check"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_the_readme_is_a_front_door():
    readme = _read("README.md")
    # the generated answers table grows with the suite's lengths; the prose around it may not
    prose = re.sub(r"<!-- generated: .*?<!-- end generated -->", "", readme, flags=re.S)
    assert len(prose.encode()) <= 9 * 1024 and len(readme.encode()) <= 16 * 1024
    assert "bash install.sh" in readme and ".venv/bin/python -m pytest tests" in readme
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert os.path.exists(os.path.join(ROOT, link)), link
    assert "<!-- generated: headline -->" in readme


def test_the_supported_architectures_table_is_generated_from_the_one_list():
    from pop_local.format.architectures import ARCHITECTURES

    table = _show("architectures")
    assert table in _read("docs/architectures.md")
    assert len(ARCHITECTURES) >= 15 and table.count("\n") == len(ARCHITECTURES) + 1


def test_measured_tables_name_their_results_files_and_commits():
    for key, rows in (("converter-cost", 4), ("budget qwen2.5-coder-1.5b", 2), ("llama8b-shape", 2), ("arch-bench", 4)):
        table = _show(key)
        body = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| model")
                and not line.startswith("| case")]
        assert len(body) >= rows, (key, table)
        assert re.search(r"Source: `[\w.-]+\.json` \(commit \w+", table), (key, table)
    assert "Q4_0" in _show("llama8b-shape")


def test_each_commands_help_is_embedded_in_the_commands_page():
    page = _read("docs/commands.md")
    for command in ("chat", "convert", "inspect", "bench", "eval", "serve", "devices", "rpc-server"):
        assert f"<!-- generated: help {command} -->" in page
        assert f"$ pop-local {command} --help\nUsage: pop-local {command}" in page


def test_the_headline_has_speed_and_quality_for_each_default_model():
    table = _show("headline")
    rows = [line for line in table.splitlines() if line.startswith("| ") and "skip set" not in line]
    assert {"SmolLM2", "Gemma"} <= {word for row in rows for word in re.findall(r"SmolLM2|Gemma", row)}, table
    for row in rows:  # a speed figure always comes with the quality at that setting
        assert re.search(r"\*\*\d\.\d\dx\*\* \(\d\.\d\dx\)", row) and re.search(r"\| 0\.\d{3} \|", row), row
    assert "headline-smollm2-bench.json" in table and "UTC" in table  # each file says when it was measured
