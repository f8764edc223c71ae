"""docs/guide.md stays true: every command of its `console` blocks runs, in order, in one shell, in a
temporary directory (real log and witness servers on 127.0.0.1, the tiny fixture model), and what
the guide shows as output appears in what the command prints.

Outputs are compared by shape: UUIDs, hex, base64 and numbers differ from run to run, so each shown
line must equal a printed line once those are replaced by placeholders. A shown line `…` stands for
lines left out. The guide's ports (8080 for the log, 8090 for the witness) are replaced by free ones.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from _kit.logs import free_port
from _kit.paths import BIN, ROOT

GUIDE = ROOT / "docs" / "guide.md"
PORTS = ("8080", "8090")
MARK = "@@guide-command "


@dataclass
class Command:
    line: int  # in docs/guide.md
    text: str
    shown: list[str] = field(default_factory=list)


def guide_commands(text: str) -> list[Command]:
    """The `$ ` lines of the ```console blocks (a trailing backslash continues a command) and the
    output lines shown under each."""
    out: list[Command] = []
    in_block = continued = False
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_block = line.strip() == "```console" and not in_block
            continue
        if not in_block:
            continue
        if continued:
            out[-1].text += "\n" + line
        elif line.startswith("$ "):
            out.append(Command(n, line[2:]))
        elif out:
            out[-1].shown.append(line)
        continued = line.endswith("\\")
    return out


def shape(line: str) -> str:
    line = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", line)
    line = re.sub(r"\b[0-9a-f]{8,}\b", "<hex>", line)
    line = re.sub(r"[A-Za-z0-9+/]{20,}={0,2}", "<b64>", line)
    line = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "<n>", line)
    return " ".join(line.split())


def test_the_guide_commands_run_and_print_what_it_shows(tmp_path: Path) -> None:
    commands = guide_commands(GUIDE.read_text(encoding="utf-8"))
    assert len(commands) > 20, "the guide lost its console blocks"
    ports = {p: str(free_port()) for p in PORTS}
    script = ["set -euo pipefail"]
    for i, cmd in enumerate(commands):
        text = cmd.text
        for old, new in ports.items():
            text = text.replace(old, new)
        script += [f"printf '\\n{MARK}{i}\\n'", text]
    script.append(f"printf '\\n{MARK}end\\n'")
    (tmp_path / "fixtures").symlink_to(ROOT / "fixtures")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMSHIELD_", "XDG_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    log = tmp_path / "guide-output.txt"
    with open(log, "wb") as out:
        # A session of its own, so the servers the guide starts in the background are stopped with it.
        proc = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=600)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    printed = log.read_text(encoding="utf-8", errors="replace")
    if os.environ.get("EMSHIELD_GUIDE_DUMP"):  # to refresh the shown outputs by hand
        Path(os.environ["EMSHIELD_GUIDE_DUMP"]).write_text(printed, encoding="utf-8")
    chunks = re.split(f"^{re.escape(MARK)}(\\d+|end)$", printed, flags=re.M)
    outputs = dict(zip(chunks[1::2], chunks[2::2], strict=True))
    ran = [k for k in outputs if k != "end"]
    last = commands[int(ran[-1])] if ran else commands[0]
    assert rc == 0 and "end" in outputs, (f"guide line {last.line} failed (exit {rc}): {last.text}\n"
                                          f"{outputs.get(ran[-1], printed)[-3000:] if ran else printed[-3000:]}")
    for i, cmd in enumerate(commands):
        got = {shape(line) for line in outputs[str(i)].splitlines()}
        for shown in cmd.shown:
            if shown.strip() in ("", "…"):
                continue
            want = shown
            for old, new in ports.items():
                want = want.replace(old, new)
            assert shape(want) in got, (f"guide line {cmd.line}: `{cmd.text}` no longer prints\n  {shown}\n"
                                        f"it printed:\n{outputs[str(i)]}")
