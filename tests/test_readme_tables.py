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
