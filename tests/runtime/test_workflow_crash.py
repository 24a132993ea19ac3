"""A workflow killed mid-run (SIGKILL) resumes from its last checkpoint in a new process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent('''
    import asyncio, json, os, sys
    from llmspell.runtime import System, SystemConfig
    from llmspell.runtime.workflows import Sequential, Step

    data_dir, workflow_id, marks, crash = sys.argv[1:5]

    def make(name, hang=False):
        async def fn(ctx):
            with open(os.path.join(marks, name), "a") as f:
                f.write("ran\\n")
            if hang and crash == "1":
                print("HANGING", flush=True)
                await asyncio.sleep(120)
            ctx.state["total"] = ctx.state.get("total", 0) + len(ctx.outputs) + 1
            ctx.state.setdefault("order", []).append(name)
            return {"step": name, "seen": sorted(ctx.outputs)}
        return fn

    workflow = Sequential("crashy", [
        Step("s1", fn=make("s1")),
        Step("s2", fn=make("s2")),
        Step("s3", fn=make("s3", hang=True)),
        Step("s4", fn=make("s4")),
    ], checkpoint="step")

    async def main():
        async with System(SystemConfig(data_dir=data_dir, store="sqlite")) as system:
            result = await workflow.run(system, {"go": 1}, workflow_id=workflow_id,
                                        resume=True)
            print("RESULT " + json.dumps({"outputs": result.outputs, "state": result.state,
                                          "status": result.status}), flush=True)

    asyncio.run(main())
''')


def _start(script: Path, data: Path, marks: Path, crash: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), str(data), "wf-crash-1", str(marks), crash],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _result(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT "):]))


def _runs(marks: Path) -> dict[str, int]:
    return {p.name: len(p.read_text().splitlines()) for p in sorted(marks.iterdir())}


def test_killed_workflow_resumes_after_last_checkpoint(tmp_path: Path) -> None:
    script = tmp_path / "flow.py"
    script.write_text(SCRIPT)

    # An uninterrupted run, for reference.
    ref_data, ref_marks = tmp_path / "ref", tmp_path / "ref-marks"
    ref_marks.mkdir()
    expected = _result(_start(script, ref_data, ref_marks, "0"))
    assert expected["status"] == "completed"

    # A run killed with SIGKILL inside s3, after the checkpoints of s1 and s2.
    data, marks = tmp_path / "data", tmp_path / "marks"
    marks.mkdir()
    proc = _start(script, data, marks, "1")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "HANGING", proc.stderr.read() if proc.stderr else line
    proc.kill()
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert _runs(marks) == {"s1": 1, "s2": 1, "s3": 1}

    # A new process resumes: s1 and s2 do not run again; the result matches.
    resumed = _result(_start(script, data, marks, "0"))
    assert resumed == expected
    assert _runs(marks) == {"s1": 1, "s2": 1, "s3": 2, "s4": 1}
