"""The project installs, its CLIs answer, and the test runner cannot pass a broken suite."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "module",
    ["emshield", "emshield.cli", "emshield.tlog", "emshield.model", "emshield.marking", "emshield.tee",
     "log_server", "log_server.cli", "verifier", "verifier.verify.cli", "verifier.audit.cli"],
)
def test_package_imports(module: str) -> None:
    importlib.import_module(module)


def test_torch_is_the_pinned_cpu_build() -> None:
    import torch

    assert torch.__version__.split("+")[0] == "2.13.0"
    assert not torch.version.cuda, "a CUDA build of torch was installed"


@pytest.mark.parametrize(
    ("script", "expect"),
    [
        ("emshield", ["decouple", "mark", "issuer", "issue", "device"]),
        ("emshield-log", ["init", "serve"]),
        ("emshield-verify", ["--log", "--backbone", "--bundle", "--json"]),
        ("emshield-audit", ["--log", "--key", "--state", "--replay", "--json"]),
        ("emshield-witness", ["init", "serve", "conflicts"]),
    ],
)
def test_console_scripts_answer_help(script: str, expect: list[str]) -> None:
    exe = BIN / script
    assert exe.exists(), f"console script {script} not installed in {BIN}"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for word in expect:
        assert word in out.stdout, f"{script} --help does not mention {word}"


def _sub_commands(group_name: str) -> list[tuple[str, ...]]:
    """Every leaf command path reachable from a click group, so new commands get checked too."""
    from click import Group

    from emshield.cli import main as emshield_main
    from log_server.cli import main as log_main
    from witness.cli import main as witness_main

    root = {"emshield": emshield_main, "emshield-log": log_main, "emshield-witness": witness_main}[group_name]
    paths: list[tuple[str, ...]] = []

    def walk(cmd, path):
        if isinstance(cmd, Group):
            for name, sub in cmd.commands.items():
                walk(sub, (*path, name))
        else:
            paths.append(path)

    walk(root, ())
    return paths


@pytest.mark.parametrize("group", ["emshield", "emshield-log", "emshield-witness"])
def test_every_sub_command_answers_help(group: str) -> None:
    paths = _sub_commands(group)
    assert paths
    for path in paths:
        out = subprocess.run([str(BIN / group), *path, "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (path, out.stderr)
        assert "Usage:" in out.stdout


def _run_test_in(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = dict(os.environ)
    return subprocess.run(
        [str(ROOT / "run"), "test", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env,
    )


def test_run_test_fails_when_a_test_fails(tmp_path: Path) -> None:
    out = _run_test_in(tmp_path, {"test_broken.py": "def test_broken():\n    assert 1 + 1 == 3\n"})
    assert out.returncode != 0
    assert "1 failed" in out.stdout


def test_run_test_fails_when_no_test_runs(tmp_path: Path) -> None:
    out = _run_test_in(tmp_path, {"test_empty.py": "# nothing here\n"})
    assert out.returncode != 0
    assert "collected no tests" in out.stderr


def test_run_test_passes_a_passing_suite(tmp_path: Path) -> None:
    out = _run_test_in(tmp_path, {"test_ok.py": "def test_ok():\n    assert 2 + 2 == 4\n"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout


def test_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports", path=str(BIN))
    assert lint, "import-linter not installed"
    out = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_run_help_prints_the_usage_and_nothing_else() -> None:
    """`./run` and `./run help` print the usage comment; an unknown command prints it to stderr, exit 2."""
    usage = [line for line in subprocess.run([str(ROOT / "run")], capture_output=True, text=True,
                                              timeout=60, check=True).stdout.splitlines()]
    assert usage[0].startswith("EMShield entry point"), usage
    assert [line.split()[1] for line in usage[1:]] == ["demo", "test", "bench", "setup"], usage
    assert not any("set -" in line or line.startswith("#") for line in usage), usage
    wrong = subprocess.run([str(ROOT / "run"), "foo"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert wrong.stderr.splitlines() == ["[run] unknown command: foo", *usage]


def test_editable_build_gives_no_setuptools_warning(tmp_path: Path) -> None:
    """`pip install -e .` (./run setup) runs setuptools' PEP 660 hook: it must build without a warning.

    The hook runs on a copy of the project's metadata and package skeleton, so the worktree is untouched."""
    proj = tmp_path / "proj"
    for name in ("pyproject.toml", "README.md"):
        (proj / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, proj / name)
    for init in ROOT.glob("*/**/__init__.py"):
        rel = init.relative_to(ROOT)
        if rel.parts[0] in ("emshield", "log_server", "verifier", "witness"):
            (proj / rel).parent.mkdir(parents=True, exist_ok=True)
            (proj / rel).write_text("")
    code = "import sys, setuptools.build_meta as b; print(b.build_editable(sys.argv[1]))"
    out = subprocess.run([sys.executable, "-W", "always", "-c", code, str(tmp_path / "wheel")], cwd=proj,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].endswith(".whl"), out.stdout
    text = out.stdout + out.stderr
    assert "Warning" not in text and "InformationOnly" not in text, text
