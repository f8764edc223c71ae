"""`./run demo`: the EMShield lifecycle end to end on embedded defaults.

A real log server on 127.0.0.1 (SQLite in a temporary folder), an issuer, a LoRA core trained on
SmolLM2-135M-Instruct for the financial task (cached after the first run), three devices, one
bundle installed and run, one device's merged model "leaked" and traced back by `emshield-verify`,
and the log audited by `emshield-audit`. Every stage calls the same commands a user would type.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
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
DATASET = REPO / "fixtures" / "data" / "financial-train.json"
TINY_BACKBONE = REPO / "fixtures" / "tiny-llama"
N_DEVICES = 3
LEAKER = 1  # index of the device whose merged model leaks
TEST_SET = REPO / "fixtures" / "data" / "financial-test.json"  # the prompt comes from the held-out split

# The demo's LoRA recipe: small enough to train on 2 CPU cores in about a minute.
DEMO_RECIPE = {"seed": 0, "lr": 2.0e-3, "epochs": 1, "max_steps": 16, "batch_size": 4, "rank": 8, "alpha": 16.0,
               "target_modules": ["q_proj", "v_proj"], "max_length": 192}


MODELS = {"smollm2": "SmolLM2-135M-Instruct", "tiny": "the tiny fixture Llama"}
# The watermark's weight perturbation allowed by the issuance policy (`emshield issue --tolerance`):
# the CLI default for SmolLM2; the tiny model's 64-wide matrices need a relatively larger mark.
TOLERANCE = {"smollm2": "0.05", "tiny": "0.25"}


class DemoError(Exception):
    """A stage failed; the message says which command and why."""


@dataclass
class Stage:
    name: str
    run: Callable[[], str]


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


def demo_core_cache(root: Path, backbone_id: str) -> Path:
    """Where the trained demo core is kept between runs: keyed by backbone, data and recipe."""
    key = hashlib.sha256(json.dumps({"backbone": backbone_id, "recipe": DEMO_RECIPE,
                                     "data": hashlib.sha256(DATASET.read_bytes()).hexdigest()},
                                    sort_keys=True).encode()).hexdigest()[:16]
    return root / "demo-cores" / key


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
    devices: list[dict] = field(default_factory=list)
    model: str = "smollm2"
    cache: Path | None = None

    def __post_init__(self) -> None:
        self.stack.callback(shutil.rmtree, self.workdir, True)
        self.env = {"EMSHIELD_ISSUER_DIR": str(self.workdir / "issuer"), "EMSHIELD_LOG_OPERATOR_TOKEN": self.token}

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
        from emshield.model.io import backbone_id
        from emshield.model.smollm2 import cache_root, ensure_smollm2
        from emshield.model.train import TrainConfig, train

        self.backbone = ensure_smollm2(progress=True) if self.model == "smollm2" else TINY_BACKBONE
        bid = backbone_id(self.backbone)
        cache = demo_core_cache(self.cache or cache_root(), bid)
        core = cache / "core.safetensors"
        if core.is_file():
            self.core = core
            return f"reused cached core {core} (backbone {bid[:16]}…)"
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        cfg = TrainConfig(backbone=str(self.backbone), dataset=str(DATASET), output_dir=str(tmp), **DEMO_RECIPE)
        result = train(cfg, progress=True)
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)  # publish the cache only once training finished
        self.core = core
        return (f"trained {result.steps} steps in {result.seconds:.0f} s, loss {result.first_loss:.2f} → "
                f"{result.final_loss:.2f}; core cached at {core}")

    def register_issuer(self) -> str:
        keys = _json(_cli("emshield", "issuer", "init", "--json", env=self.env))
        reg = _json(_cli("emshield", "issuer", "register", "--log", self.url, "--core", str(self.core),
                         "--backbone", str(self.backbone), "--name", "EMShield demo issuer", "--json", env=self.env))
        pinned = self._audit()["checkpoint"]["size"]
        return (f"issuer key id {keys['key_id'][:16]}…, registration at leaf {reg['index']}; "
                f"emshield-audit pinned the log's checkpoint (size {pinned})")

    def issue(self) -> str:
        rows = []
        for i in range(N_DEVICES):
            ddir = self.workdir / f"device{i}"
            rec = _json(_cli("emshield", "device", "init", "--dir", str(ddir), "--json"))
            self.devices.append({"dir": ddir, **rec})
            rows.append(rec)
        devices_csv = self.workdir / "devices.csv"
        with devices_csv.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["device_uuid", "x25519_public", "xwing_public"])
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

    def install_and_run(self) -> str:
        dev = self.devices[0]
        record = json.loads(TEST_SET.read_text())[0]
        _cli("emshield", "device", "install", str(dev["bundle"]), "--dir", str(dev["dir"]), "--log-key", self.vkey)
        ans = _json(_cli("emshield", "device", "run", "--dir", str(dev["dir"]), "--backbone", str(self.backbone),
                         "--prompt", record["instruction"], "--input", record["input"], "--json"))
        shown = record["input"].replace("\n", ", ")
        return (f"{record['instruction']} [{shown}] → expected {record['output']!r}; device {dev['uuid']} answered "
                f"{ans['answer'].strip()!r} (issuance {ans['issuance_index']}, core in {ans['memory']} memory)")

    def leak(self) -> str:
        """Device LEAKER's owner dumps its merged model: fp16 state dict in a .pt file."""
        import torch

        from emshield.device.deploy import check_sealed_core, installed_bundle
        from emshield.model.io import open_tensors
        from emshield.model.merge import merge_tensors
        from emshield.tee.device import load_device
        from emshield.tee.mount import mount

        dev = self.devices[LEAKER]
        _cli("emshield", "device", "install", str(dev["bundle"]), "--dir", str(dev["dir"]), "--log-key", self.vkey)
        device = load_device(dev["dir"])
        verified = installed_bundle(dev["dir"])
        check_sealed_core(verified, device.uuid)
        self.leaked = self.workdir / "leaked-model.pt"
        with mount(verified.sealed_core, device, verified.backbone_id, verified.issuance_leaf_hash) as mounted, \
                open_tensors(self.backbone) as backbone:
            merged = {k: v.to(torch.float16) for k, v in merge_tensors(backbone, mounted.core).items()}
        torch.save(merged, self.leaked)
        return f"device {dev['uuid']}'s merged model saved as fp16 state dict ({self.leaked.stat().st_size >> 20} MiB)"

    def verify(self) -> str:
        proc = _cli("emshield-verify", str(self.leaked), "--log", self.url, "--log-key", self.vkey,
                    "--backbone", str(self.backbone), ok=(0, 1))
        want = self.devices[LEAKER]["uuid"]
        if proc.returncode != 0 or f"MATCH: device {want}" not in proc.stdout:
            raise DemoError(f"emshield-verify did not name the leaking device {want}:\n{proc.stdout}")
        return "\n      " + proc.stdout.strip().replace("\n", "\n      ")

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
            Stage("install a bundle on device 0 and run a prompt", self.install_and_run),
            Stage(f"device {LEAKER} leaks its merged model", self.leak),
            Stage("trace the leaked model with emshield-verify", self.verify),
            Stage("audit the log with emshield-audit (consistency + replay)", self.audit),
        ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./run demo", description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2",
                    help="backbone: SmolLM2-135M-Instruct (default) or the tiny fixture model (seconds, for tests)")
    ap.add_argument("--cache", type=Path, help="where trained demo cores are cached (default ~/.cache/emshield)")
    args = ap.parse_args(argv)
    demo = Demo(model=args.model, cache=args.cache)
    t_start = time.monotonic()
    with demo.stack:
        stages = demo.stages()
        for i, stage in enumerate(stages, 1):
            prefix = f"[{i}/{len(stages)}] {stage.name}"
            print(f"{prefix} ...", flush=True)
            t0 = time.monotonic()
            try:
                detail = stage.run()
            except DemoError as exc:
                print(f"{prefix}: FAILED\n{exc}", file=sys.stderr, flush=True)
                return 1
            print(f"{prefix}: ok ({time.monotonic() - t0:.1f} s) {detail}", flush=True)
    print(f"\nDemo complete in {time.monotonic() - t_start:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
