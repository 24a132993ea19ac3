"""Each benchmark runs in --quick mode and writes well-formed JSON rows (speed is not judged
here: the machines are shared and noisy; the benchmarks themselves report against targets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
KEYS = {"name", "value", "unit", "baseline", "ratio", "target", "met"}


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_quick_run_writes_rows(script: Path, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert rows and all(set(row) == KEYS for row in rows)
    assert all(isinstance(row["met"], bool) and isinstance(row["target"], str) for row in rows)
    assert any(row["baseline"] is not None and row["ratio"] is not None for row in rows)
    for row in rows:
        assert row["name"] in proc.stdout
