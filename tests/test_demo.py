"""`./run demo` end to end on the tiny fixture model: every stage runs, the core beats the majority
answer on held-out records and answers the showcase prompt right, and the leaked model is traced to
the device that leaked it, and to no other; a copy with its public mark stripped with the published
parameters, and a two-device average, are traced by the secret tier to their devices only, and
proven by disclosure to emshield-verify."""

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
    stages = re.findall(r"^\[(\d+)/(\d+)\] (.*?): ok ", out.stdout, re.M)
    assert [int(i) for i, _, _ in stages] == list(range(1, 14)), out.stdout
    assert "WRONG" not in out.stdout and "Demo complete" in out.stdout
    acc = re.search(r"held-out accuracy on (\d+) records: bare ([\d.]+), adapted ([\d.]+), marked ([\d.]+) "
                    r"\(device 0's issued core\); majority answer ([\d.]+)", out.stdout)
    assert acc, out.stdout
    bare, adapted, marked, majority = map(float, acc.groups()[1:])
    assert adapted >= majority + 0.10 and marked >= majority + 0.10, acc.group(0)
    assert re.search(r"answered '(approve|reject)' \(one of approve, reject\), expected '\1': right", out.stdout)
    issued = re.findall(rf"device ({UUID}) → log index (\d+)", out.stdout)
    assert len({u for u, _ in issued}) == 3, out.stdout
    leaker = re.search(rf"device ({UUID})'s merged model saved", out.stdout).group(1)
    verify = out.stdout.split("trace the leaked model with emshield-verify: ok", 1)[1].split("[10/13]", 1)[0]
    named = set(re.findall(UUID, verify))
    assert named == {leaker}, verify
    report = tmp_path / "emshield-demo-report.html"  # the forensic report, beside the cached cores
    assert f"forensic report (open it in a browser): {report}" in verify
    html = report.read_text()
    assert f"device {leaker}" in html and html.count("<svg") >= 4

    uuids = [u for u, _ in issued]
    stripper = re.search(rf"device ({UUID}) stripped its public mark", out.stdout).group(1)
    assert stripper == uuids[2] and "public watermark not read" in out.stdout
    disclosed = re.findall(r"^\[(\d+)/13\].*?: ok .*?\n      emshield-verify \(no secret\): verdict 'disclosed', (.*)$",
                           out.stdout, re.M)
    named = {stage: set(re.findall(rf"device ({UUID}) named by disclosed key", line)) for stage, line in disclosed}
    assert set(named) == {"11", "12"} and named["11"] == {stripper}, out.stdout
    assert named["12"] and named["12"] <= {uuids[0], uuids[2]}, out.stdout  # at least one colluder, nobody else


def test_a_wrong_result_is_shown_as_wrong_not_ok() -> None:
    """The showcase prompt was answered wrongly and the stage still said "ok": a stage whose result is
    wrong prints WRONG, the later stages still run, and the demo exits 1."""
    import io

    from emshield.demo import Outcome, Stage, run_stages

    ran = []
    stages = [Stage("first", lambda: "fine"),
              Stage("answer a prompt", lambda: Outcome("answered 'reject', expected 'approve': WRONG", right=False)),
              Stage("last", lambda: ran.append("last") or "fine too")]
    out = io.StringIO()
    assert run_stages(stages, out) == 1
    text = out.getvalue()
    assert re.search(r"^\[2/3\] answer a prompt: WRONG \(", text, re.M), text
    assert re.search(r"^\[1/3\] first: ok \(", text, re.M) and ran == ["last"]
    assert "1 stage(s) gave a wrong result: answer a prompt" in text and "Demo complete" not in text
    assert run_stages(stages[:1], io.StringIO()) == 0
