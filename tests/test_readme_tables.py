"""README's generated tables are what their generators print today (never typed by hand)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def test_supported_architectures_table_is_generated_from_the_one_list():
    from pop_local.architectures import ARCHITECTURES, calibrated_architectures, markdown_table

    table = markdown_table(calibrated_architectures())
    assert table in _readme()
    assert len(ARCHITECTURES) >= 15


def test_architecture_benchmark_rows_come_from_the_results():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "architectures.py"), "--table"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out.count("\n") >= 5  # header, rule, two cases at two prompt lengths
    assert out in _readme()


def _generated(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()


def test_converter_cost_rows_come_from_the_results():
    out = _generated(os.path.join(ROOT, "benchmarks", "converter_cost.py"), "--table")
    assert out.count("\n") >= 4  # header, rule, the three real models
    assert out in _readme()


def test_the_real_1_5b_models_budget_rows_come_from_the_results():
    out = _generated(os.path.join(ROOT, "benchmarks", "converter_cost.py"), "--quality-table", "qwen2.5-coder-1.5b")
    assert out.count("\n") == 3  # header, rule, paper, default budget
    assert out in _readme()


def test_the_8b_shaped_models_rows_come_from_the_results():
    out = _generated(os.path.join(ROOT, "benchmarks", "llama8b_shape.py"), "table")
    assert out.count("\n") >= 3 and "Q4_0" in out
    assert out in _readme()
