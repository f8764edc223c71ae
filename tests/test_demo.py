"""`./run demo` end to end on the tiny fixture model: every stage runs, and the leaked model is traced
to the device that leaked it, and to no other."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def test_demo_traces_the_leaked_model_to_its_device(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "emshield.demo", "--model", "tiny", "--cache", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    stages = re.findall(r"^\[(\d)/(\d)\] (.*?): ok ", out.stdout, re.M)
    assert [int(i) for i, _, _ in stages] == list(range(1, 10)), out.stdout
    assert "Demo complete" in out.stdout
    issued = re.findall(rf"device ({UUID}) → log index (\d+)", out.stdout)
    assert len({u for u, _ in issued}) == 3, out.stdout
    leaker = re.search(rf"device ({UUID})'s merged model saved", out.stdout).group(1)
    verify = out.stdout.split("trace the leaked model with emshield-verify: ok", 1)[1].split("[9/9]", 1)[0]
    named = set(re.findall(UUID, verify))
    assert named == {leaker}, verify
