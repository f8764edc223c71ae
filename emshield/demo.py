"""`./run demo`: the EMShield lifecycle end to end on embedded defaults.

A real log server on 127.0.0.1 (SQLite in a temporary folder), an issuer, a LoRA core trained on
SmolLM2-135M-Instruct for the financial task from a recipe file (cached after the first run), three
devices, the held-out accuracy of the bare backbone, the core and a device's marked core, one
bundle installed and a held-out prompt answered, one device's merged model "leaked" and traced
back by `emshield-verify`; a copy whose public mark was stripped with the published parameters,
and a two-device average, traced by the issuer's secret tier (`emshield trace --disclose`) and
proven to anyone by `emshield-verify`; and the log audited by `emshield-audit`. The stages call the same
commands a user would type (docs/guide.md walks through them by hand).

Each stage is a method returning its one-line result, or an Outcome whose ``right`` is False when
the stage ran but its result is wrong (a wrong answer is shown as WRONG, and the demo exits 1);
new stages are new methods in :meth:`Demo.stages`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
ORIGIN = "demo.emshield.local/log"
REPO = Path(__file__).resolve().parents[1]
N_DEVICES = 3
LEAKER = 1  # index of the device whose merged model leaks
STRIPPER = 2  # index of the device that strips the public mark before leaking (the secret tier names it)
COLLUDERS = (0, 2)  # devices that average their cores
TEST_SET = REPO / "fixtures" / "data" / "financial-test.json"  # held-out records; the prompt is the first
HELDOUT = 100  # held-out records the accuracies are measured on
CLEAR_MARGIN = 0.10  # the core must beat the majority answer by this much to count as working

MODELS = {"smollm2": "SmolLM2-135M-Instruct", "tiny": "the tiny fixture Llama"}
# The demo's LoRA recipes (the YAML form of `emshield decouple train`), sized for 2 CPU cores.
RECIPES = {"smollm2": REPO / "fixtures" / "recipes" / "smollm2-financial.yaml",
           "tiny": REPO / "fixtures" / "recipes" / "tiny-financial-demo.yaml"}
# The watermark's weight perturbation allowed by the issuance policy (`emshield issue --tolerance`):
# the CLI default for SmolLM2; the tiny model's 64-wide matrices need a relatively larger mark.
TOLERANCE = {"smollm2": "0.05", "tiny": "0.25"}


class DemoError(Exception):
    """A stage failed; the message says which command and why."""


@dataclass
class Stage:
    name: str
    run: Callable[[], str | Outcome]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli(name: str, *args: str, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    """Run one of our console scripts the way a user would; fail loudly with its stderr."""
    proc = subprocess.run([str(BIN / name), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode not in ok:
        raise DemoError(f"`{name} {' '.join(args)}` exited {proc.returncode}:\n{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout)


@contextlib.contextmanager
def _log_server(workdir: Path, token: str) -> Iterator[tuple[str, str]]:
    """`emshield-log init` + `emshield-log serve` on 127.0.0.1; yields (url, verifier key), stops it after."""
    db = workdir / "log.sqlite"
    vkey = _json(_cli("emshield-log", "init", "--db", str(db), "--origin", ORIGIN, "--json",
                      env={"EMSHIELD_LOG_OPERATOR_TOKEN": token}))["verifier_key"]
    port = _free_port()
    proc = subprocess.Popen([str(BIN / "emshield-log"), "serve", "--db", str(db), "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise DemoError("log server exited: " + proc.stdout.read().decode(errors="replace"))
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise DemoError("log server did not come up within 30 s")
            time.sleep(0.1)
        yield url, vkey
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Outcome:
    """What a stage found; ``right`` is False when it ran but its result is wrong."""

    detail: str
    right: bool = True


def demo_core_cache(root: Path, backbone_id: str, recipe: dict) -> Path:
    """Where the trained demo core is kept between runs: keyed by backbone, data and recipe."""
    key = hashlib.sha256(json.dumps({"backbone": backbone_id, "recipe": recipe,
                                     "data": hashlib.sha256(Path(recipe["dataset"]).read_bytes()).hexdigest()},
                                    sort_keys=True).encode()).hexdigest()[:16]
    return root / "demo-cores" / key


def demo_core(model: str, root: Path) -> tuple[Path, Path, str]:
    """The demo's trained core for ``model`` (from its recipe): (backbone, cache folder holding
    core.safetensors, what was done). Trained once and cached by recipe and backbone id; the
    attack bench (bench/attacks.py) uses the same core."""
    from dataclasses import asdict, replace

    from emshield.model.backbones import resolve_backbone
    from emshield.model.io import backbone_id
    from emshield.model.train import TrainConfig, train

    recipe = TrainConfig.from_yaml(RECIPES[model])
    backbone = resolve_backbone(recipe.backbone, progress=True)
    bid = backbone_id(backbone)
    key = {k: v for k, v in asdict(recipe).items() if k != "output_dir"}
    cache = demo_core_cache(root, bid, key)
    core = cache / "core.safetensors"
    command = f"emshield decouple train {RECIPES[model].relative_to(REPO)} --out {cache}"
    if core.is_file():
        return backbone, cache, f"reused cached core {core} (backbone {bid[:16]}…; made by `{command}`)"
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    result = train(replace(recipe, output_dir=str(tmp)), progress=True)
    shutil.rmtree(cache, ignore_errors=True)
    tmp.rename(cache)  # publish the cache only once training finished
    return backbone, cache, (f"`{command}`: {result.steps} steps in {result.seconds:.0f} s, loss {result.first_loss:.2f} → "
                             f"{result.final_loss:.2f}; core cached at {core}")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the servers and CLIs it ran)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Demo:
    """State shared between stages: a work directory, the running log and what stages produced."""

    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="emshield-demo-")))
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    url: str = ""
    vkey: str = ""
    backbone: Path | None = None
    core: Path | None = None
    core_cache: Path | None = None
    devices: list[dict] = field(default_factory=list)
    model: str = "smollm2"
    cache: Path | None = None
    report: Path | None = None  # where the forensic report of the leaked model goes (kept after the demo)
    stripped: Path | None = None  # the leak whose public mark was stripped (stage strip_and_leak)

    def __post_init__(self) -> None:
        self.stack.callback(shutil.rmtree, self.workdir, True)
        self.env = {"EMSHIELD_ISSUER_DIR": str(self.workdir / "issuer"), "EMSHIELD_LOG_OPERATOR_TOKEN": self.token}
        self.heldout = json.loads(TEST_SET.read_text())[:HELDOUT]
        self.answers = sorted({r["output"] for r in self.heldout})

    def check_install(self) -> str:
        import torch

        import emshield

        return f"emshield {emshield.__version__}, torch {torch.__version__}"

    def start_log(self) -> str:
        from emshield.logclient.http import LogClient
        from emshield.tlog.checkpoint import NoteVerifier

        self.url, self.vkey = self.stack.enter_context(_log_server(self.workdir, self.token))
        cp = LogClient(self.url).verified_checkpoint(NoteVerifier.from_verifier_key(self.vkey), ORIGIN)
        return f"{self.url}, verifier key {self.vkey}; signed checkpoint verified (size {cp.size})"

    def train_core(self) -> str:
        from emshield.model.smollm2 import cache_root

        self.backbone, cache, line = demo_core(self.model, self.cache or cache_root())
        self.core_cache, self.core = cache, cache / "core.safetensors"
        return line

    def register_issuer(self) -> str:
        keys = _json(_cli("emshield", "issuer", "init", "--json", env=self.env))
        reg = _json(_cli("emshield", "issuer", "register", "--log", self.url, "--core", str(self.core),
                         "--backbone", str(self.backbone), "--name", "EMShield demo issuer", "--json", env=self.env))
        pinned = self._audit()["checkpoint"]["size"]
        return (f"issuer key id {keys['key_id'][:16]}…, registration at leaf {reg['index']}; "
                f"emshield-audit pinned the log's checkpoint (size {pinned})")

    def issue(self) -> str:
        from emshield.tee.device import CSV_COLUMNS

        rows = []
        for i in range(N_DEVICES):
            ddir = self.workdir / f"device{i}"
            rec = _json(_cli("emshield", "device", "init", "--dir", str(ddir), "--json"))
            self.devices.append({"dir": ddir, **rec})
            rows.append(rec)
        devices_csv = self.workdir / "devices.csv"
        with devices_csv.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for rec in rows:
                w.writerow([rec["uuid"], rec["x25519_public"], rec["xwing_public"]])
        out = _json(_cli("emshield", "issue", "--log", self.url, "--log-key", self.vkey, "--core", str(self.core),
                         "--backbone", str(self.backbone), "--devices", str(devices_csv),
                         "--out", str(self.workdir / "bundles"), "--tolerance", TOLERANCE[self.model], "--json",
                         env=self.env))
        if out["refused"] or len(out["issued"]) != N_DEVICES:
            raise DemoError(f"issuance refused: {out['refused']}")
        bundles = {r["device_uuid"]: Path(r["bundle"]) for r in out["issued"]}
        for dev in self.devices:
            dev["bundle"] = bundles[dev["uuid"]]
        lines = [f"device {r['device_uuid']} → log index {r['index']}, policy {r['policy']}, {Path(r['bundle']).name}"
                 for r in out["issued"]]
        return "\n      " + "\n      ".join(lines)

    def _issued_core(self, dev: dict):
        """The marked core issued to ``dev``, unsealed with its key as the device does (in memory)."""
        from emshield.bundle import read_bundle_file, verify_bundle
        from emshield.core import LoraFactors
        from emshield.device.deploy import check_sealed_core
        from emshield.tee.device import load_device
        from emshield.tee.mount import mount
        from emshield.tlog.checkpoint import NoteVerifier

        verified = verify_bundle(read_bundle_file(dev["bundle"]), NoteVerifier.from_verifier_key(self.vkey))
        device = load_device(dev["dir"])
        check_sealed_core(verified, device.uuid)
        with mount(verified.sealed_core, device, verified.backbone_id, verified.issuance_leaf_hash) as mounted:
            return {k: LoraFactors(f.a.copy(), f.b.copy(), f.scale) for k, f in mounted.core.items()}

    def heldout_accuracy(self) -> Outcome:
        """Bare backbone, the trained core and device 0's marked core on the same held-out records.
        The first two depend only on the cached core, so they are cached beside it."""
        from emshield.model.adapter import load_core
        from emshield.model.evaluate import evaluate
        from emshield.model.taskeval import TaskModel

        model = TaskModel.load(self.backbone)
        choices = tuple(self.answers)

        def accuracy(core) -> float:
            model.use(core)
            return evaluate(model.model, model.tokenizer, self.heldout, choices=choices).accuracy

        cached = self.core_cache / "heldout.json"
        known = json.loads(cached.read_text()) if cached.is_file() else {}
        if known.get("records") != len(self.heldout):
            known = {"records": len(self.heldout), "bare": accuracy(None), "adapted": accuracy(load_core(self.core))}
            cached.write_text(json.dumps(known, indent=2) + "\n")
        marked = accuracy(self._issued_core(self.devices[0]))
        majority = max(sum(r["output"] == a for r in self.heldout) for a in self.answers) / len(self.heldout)
        line = (f"held-out accuracy on {len(self.heldout)} records: bare {known['bare']:.2f}, adapted "
                f"{known['adapted']:.2f}, marked {marked:.2f} (device 0's issued core); majority answer {majority:.2f}")
        if known["adapted"] < majority + CLEAR_MARGIN:
            return Outcome(line + f" — the core does not beat the majority answer by {CLEAR_MARGIN:.2f}", right=False)
        return Outcome(line)

    def install_and_run(self) -> Outcome:
        dev = self.devices[0]
        record = self.heldout[0]
        _cli("emshield", "device", "install", str(dev["bundle"]), "--dir", str(dev["dir"]), "--log-key", self.vkey)
        choices = [a for answer in self.answers for a in ("--choice", answer)]
        ans = _json(_cli("emshield", "device", "run", "--dir", str(dev["dir"]), "--backbone", str(self.backbone),
                         "--prompt", record["instruction"], "--input", record["input"], *choices, "--json"))
        shown = record["input"].replace("\n", ", ")
        verdict = "right" if ans["answer"] == record["output"] else "WRONG"
        return Outcome(f"{record['instruction']} [{shown}] → device {dev['uuid']} answered {ans['answer']!r} "
                       f"(one of {', '.join(self.answers)}), expected {record['output']!r}: {verdict} "
                       f"(issuance {ans['issuance_index']}, core in {ans['memory']} memory)",
                       right=ans["answer"] == record["output"])

    def leak(self) -> str:
        """Device LEAKER's owner dumps its merged model: fp16 state dict in a .pt file."""
        import torch

        from emshield.model.io import open_tensors
        from emshield.model.merge import merge_tensors

        dev = self.devices[LEAKER]
        _cli("emshield", "device", "install", str(dev["bundle"]), "--dir", str(dev["dir"]), "--log-key", self.vkey)
        self.leaked = self.workdir / "leaked-model.pt"
        with open_tensors(self.backbone) as backbone:
            merged = {k: v.to(torch.float16) for k, v in merge_tensors(backbone, self._issued_core(dev)).items()}
        torch.save(merged, self.leaked)
        return f"device {dev['uuid']}'s merged model saved as fp16 state dict ({self.leaked.stat().st_size >> 20} MiB)"

    def verify(self) -> str:
        from emshield.model.smollm2 import cache_root

        report = self.report or (self.cache or cache_root()) / "emshield-demo-report.html"
        report.parent.mkdir(parents=True, exist_ok=True)
        proc = _cli("emshield-verify", str(self.leaked), "--log", self.url, "--log-key", self.vkey,
                    "--backbone", str(self.backbone), "--report", str(report), ok=(0, 1))
        want = self.devices[LEAKER]["uuid"]
        if proc.returncode != 0 or f"MATCH: device {want}" not in proc.stdout:
            raise DemoError(f"emshield-verify did not name the leaking device {want}:\n{proc.stdout}")
        return ("\n      " + proc.stdout.strip().replace("\n", "\n      ")
                + f"\n      forensic report (open it in a browser): {report.resolve()}")

    def _leak_deltas(self, name: str, deltas: dict) -> Path:
        """A merged model with these ΔW (the backbone plus ΔW per marked layer), fp16 state dict."""
        import torch

        from emshield.model.io import open_tensors

        path = self.workdir / name
        with open_tensors(self.backbone) as backbone:
            merged = {k: (backbone.get(k).to(torch.float64) + torch.from_numpy(deltas[k])).to(torch.float16)
                      if k in deltas else backbone.get(k).to(torch.float16) for k in backbone.keys()}
        torch.save(merged, path)
        return path

    def _published_params(self):
        """The marking parameters as any reader of the log gets them: from the issuer's registration entry."""
        from emshield.logclient.http import LogClient
        from emshield.marking.params import MarkingParams
        from emshield.tlog.entry import decode_entry

        client = LogClient(self.url)
        (issuer,) = client.issuers()
        reg = decode_entry(client.entries(issuer.index, issuer.index + 1)[0].data).entry
        return MarkingParams.from_cbor(reg.marking_params)

    def _trace_and_verify(self, suspect: Path, want: set[str]) -> Outcome:
        """`emshield trace --disclose`, then `emshield-verify` (no secret): the names must be in ``want``."""
        traced = _json(_cli("emshield", "trace", str(suspect), "--log", self.url, "--log-key", self.vkey,
                            "--backbone", str(self.backbone), "--disclose", "--top", "3", "--json",
                            env=self.env, ok=(0, 1)))
        named = {r["device_uuid"] for r in traced["named"]}
        proc = _cli("emshield-verify", str(suspect), "--log", self.url, "--log-key", self.vkey,
                    "--backbone", str(self.backbone), "--json", ok=(0, 1, 6))
        verdict = _json(proc)
        proven = {d["device_uuid"] for d in verdict.get("disclosed", [])}
        rows = ", ".join(f"{r['device_uuid'][:8]}… T={r['score']:.1f} p={r['p_value']:.1e}" for r in traced["ranked"])
        leaves = ", ".join(f"{d['device_uuid'][:8]}… at leaf {d['leaf_index']}" for d in traced["disclosures"])
        line = (f"emshield trace ranked {traced['issuances_scored']} issuances ({rows}); named "
                f"{sorted(n[:8] + '…' for n in named)}; attributions disclosed: {leaves or 'none'}"
                f"\n      emshield-verify (no secret): verdict {verdict['verdict']!r}, "
                + "; ".join(f"device {d['device_uuid']} named by disclosed key, attribution at leaf "
                            f"{d['attribution_index']} (recomputed T={d['score']:.1f}, p={d['p_value']:.1e})"
                            for d in verdict.get("disclosed", [])))
        right = bool(named) and named <= want and proven == named and all(d["verified"] for d in traced["disclosures"])
        return Outcome(line, right=right)

    def strip_and_leak(self) -> Outcome:
        """Device STRIPPER's owner reads the log, strips the public mark with the published
        parameters, and leaks the merged model; the public watermark no longer names anyone."""
        from emshield.marking.strip import strip_public_mark

        dev = self.devices[STRIPPER]
        core = self._issued_core(dev)
        params = self._published_params()
        self.stripped = self._leak_deltas("stripped-model.pt",
                                          strip_public_mark({k: f.delta() for k, f in core.items()}, params))
        verdict = _json(_cli("emshield-verify", str(self.stripped), "--log", self.url, "--log-key", self.vkey,
                             "--backbone", str(self.backbone), "--json", ok=(0, 1, 6)))
        public = verdict["device"]
        line = (f"device {dev['uuid']} stripped its public mark (the smallest change that zeroes every published "
                f"statistic); emshield-verify before any disclosure: verdict {verdict['verdict']!r}, public watermark "
                f"{'read' if public else 'not read'}")
        return Outcome(line, right=public is None or public["device_uuid"] == dev["uuid"])

    def trace_stripped(self) -> Outcome:
        assert self.stripped is not None
        return self._trace_and_verify(self.stripped, {self.devices[STRIPPER]["uuid"]})

    def collude(self) -> Outcome:
        """Two devices average their marked cores and leak the merged result."""
        a, b = (self._issued_core(self.devices[i]) for i in COLLUDERS)
        mix = self._leak_deltas("averaged-model.pt", {k: (a[k].delta() + b[k].delta()) / 2 for k in a})
        return self._trace_and_verify(mix, {self.devices[i]["uuid"] for i in COLLUDERS})

    def _audit(self, *extra: str) -> dict:
        return _json(_cli("emshield-audit", "--log", self.url, "--key", self.vkey,
                          "--state", str(self.workdir / "audit-state.json"), "--json", *extra))

    def audit(self) -> str:
        report = self._audit("--replay")
        if not report["ok"] or report["findings"]:
            raise DemoError(f"emshield-audit found misbehaviour: {json.dumps(report, indent=1)}")
        prev, cp = report["previous"], report["checkpoint"]
        return (f"checkpoint size {cp['size']} is consistent with the one pinned after registration "
                f"(size {prev['size']}); replayed {report['replayed']} entries: schemas, signatures and root verified")

    def stages(self) -> list[Stage]:
        return [
            Stage("installation check", self.check_install),
            Stage("start transparency log on 127.0.0.1", self.start_log),
            Stage(f"train / reuse LoRA core on {MODELS[self.model]} (financial task)", self.train_core),
            Stage("register issuer (key + public marking parameters)", self.register_issuer),
            Stage(f"issue to {N_DEVICES} devices (mark, fingerprint, log entry, seal, bundle)", self.issue),
            Stage("held-out accuracy: bare backbone, adapted (the core), marked (an issued core)", self.heldout_accuracy),
            Stage("install a bundle on device 0 and answer a held-out prompt", self.install_and_run),
            Stage(f"device {LEAKER} leaks its merged model", self.leak),
            Stage("trace the leaked model with emshield-verify", self.verify),
            Stage(f"device {STRIPPER} strips the public mark with the published parameters and leaks", self.strip_and_leak),
            Stage("issuer traces the stripped copy (secret tier), discloses; anyone verifies", self.trace_stripped),
            Stage(f"devices {COLLUDERS[0]} and {COLLUDERS[1]} average their cores: traced, disclosed, verified",
                  self.collude),
            Stage("audit the log with emshield-audit (consistency + replay)", self.audit),
        ]


def run_stages(stages: list[Stage], out=None) -> int:
    """Run the stages in order, one progress line each: ok, WRONG (it ran, but its result is wrong:
    the demo goes on and exits 1) or FAILED (the demo stops). Returns the exit status."""
    out = out or sys.stdout
    t_start, cpu_start = time.monotonic(), _cpu_seconds()
    wrong: list[str] = []
    for i, stage in enumerate(stages, 1):
        prefix = f"[{i}/{len(stages)}] {stage.name}"
        print(f"{prefix} ...", file=out, flush=True)
        t0 = time.monotonic()
        try:
            result = stage.run()
        except DemoError as exc:
            print(f"{prefix}: FAILED\n{exc}", file=sys.stderr, flush=True)
            return 1
        outcome = result if isinstance(result, Outcome) else Outcome(result)
        if not outcome.right:
            wrong.append(stage.name)
        print(f"{prefix}: {'ok' if outcome.right else 'WRONG'} ({time.monotonic() - t0:.1f} s) {outcome.detail}",
              file=out, flush=True)
    took = f"{time.monotonic() - t_start:.0f} s (CPU {_cpu_seconds() - cpu_start:.0f} s)"
    if wrong:
        print(f"\nDemo ran in {took}, but {len(wrong)} stage(s) gave a wrong result: {'; '.join(wrong)}.",
              file=out)
        return 1
    print(f"\nDemo complete in {took}.", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./run demo", description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2",
                    help="backbone: SmolLM2-135M-Instruct (default) or the tiny fixture model (seconds, for tests)")
    ap.add_argument("--cache", type=Path, help="where trained demo cores are cached (default ~/.cache/emshield)")
    ap.add_argument("--report", type=Path,
                    help="where to write the forensic report of the leaked model (default: emshield-demo-report.html "
                         "in the cache folder)")
    args = ap.parse_args(argv)
    demo = Demo(model=args.model, cache=args.cache, report=args.report)
    with demo.stack:  # the servers stop (and their CPU time is counted) before the closing line
        return run_stages(demo.stages())


if __name__ == "__main__":
    sys.exit(main())
