"""Issuance end to end on a real log server: issuer init/register, issue, device install and run."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
import torch
from _kit.cores import fixture_core
from _kit.logs import free_port, silent_listener
from _kit.paths import TINY as BACKBONE
from click.testing import CliRunner

from emshield.bundle import read_bundle_file, verify_bundle
from emshield.cli import main
from emshield.core import core_to_bytes
from emshield.device.deploy import INSTALLED_FILE, PINNED_KEY_FILE, merge_into_model
from emshield.issue.devices import DeviceTarget
from emshield.issue.errors import IssueError
from emshield.issue.keys import load_issuer
from emshield.issue.pipeline import issue_to_device, mark_for_device, prepare_run
from emshield.logclient.http import LogClient
from emshield.marking import secret, watermark
from emshield.marking.fingerprint import Fingerprint
from emshield.marking.params import watermark_commitment
from emshield.marking.policy import Tolerance
from emshield.tee.device import init_device
from emshield.tlog.entry import Issuance, decode_entry, sign_entry

TOKEN_ENV = "EMSHIELD_LOG_OPERATOR_TOKEN"


def cli(*args, env: dict | None = None, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def setup_issuer(tmp: Path, log, core, name: str = "Acme Models") -> tuple[Path, Path]:
    """`emshield issuer init` + `register`; returns (issuer dir, core file)."""
    core_file = tmp / "core.safetensors"
    core_file.write_bytes(core_to_bytes(core))
    issuer_dir = tmp / "issuer"
    cli("issuer", "init", "--dir", issuer_dir, "--json")
    out = json.loads(cli("issuer", "register", "--log", log.url, "--core", core_file, "--backbone", BACKBONE,
                         "--name", name, "--dir", issuer_dir, "--json", env={TOKEN_ENV: log.token}).stdout)
    assert out["created"] is True
    return issuer_dir, core_file


def issue_args(log, issuer_dir: Path, core_file: Path, out: Path, *extra) -> list:
    return ["issue", "--log", log.url, "--log-key", log.verifier_key, "--core", core_file, "--backbone", BACKBONE,
            "--out", out, "--dir", issuer_dir, "--tolerance", "0.5", "--json", *extra]


def generate(model, prompt: str, n: int) -> str:
    from emshield.model.hf import load_tokenizer

    tok = load_tokenizer(BACKBONE)
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def files_contain(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_issue_install_run_end_to_end(tmp_path, log, core, device):
    issuer_dir, core_file = setup_issuer(tmp_path, log, core)
    out = tmp_path / "bundles"
    issued = json.loads(cli(*issue_args(log, issuer_dir, core_file, out, "--device", device.directory)).stdout)
    assert issued["refused"] == []
    (res,) = issued["issued"]
    assert res["status"] == "issued" and res["policy"] == "both" and res["device_uuid"] == str(device.uuid)

    # The log holds the entry, indexed by device UUID and by commitment, with its fingerprint side record.
    client = LogClient(log.url)
    (hit,) = client.issuances(device_uuid=str(device.uuid))
    assert hit.index == res["index"] and hit.leaf_hash.hex() == res["leaf_hash"] and hit.has_side_record
    entry = decode_entry(hit.leaf).entry
    assert isinstance(entry, Issuance) and entry.policy == "both"
    assert [h.index for h in client.issuances(watermark_commitment=entry.watermark_commitment)] == [hit.index]
    Fingerprint.from_cbor(client.side_record(hit.index), expected_hash=entry.fingerprint_hash)

    # The issued (marked) core carries the device's payload: re-marking is deterministic.
    issuer = prepare_run(client, log.verifier, load_issuer(issuer_dir), core, BACKBONE,
                            tolerance=Tolerance(max_perturbation=0.5))
    marked = mark_for_device(issuer, device.uuid, entry.secret_mark_salt)
    ex = watermark.extract_from_factors(marked.core, issuer.params)
    assert ex.accepted and watermark_commitment(ex.payload, issuer.params) == entry.watermark_commitment
    assert marked.fingerprint.hash() == entry.fingerprint_hash
    # ... and the secret tier, keyed by the logged salt, whose key the entry commits to.
    detection = secret.detection_key(issuer.keys.marking_secret, issuer.params.backbone_id, device.uuid.bytes,
                                     entry.secret_mark_salt)
    assert detection.commitment == entry.secret_mark_commitment == bytes.fromhex(res["secret_mark_commitment"])
    assert secret.presence_from_factors(marked.core, detection.key, issuer.params).named

    bundled = verify_bundle(read_bundle_file(res["bundle"]), log.verifier)
    assert bundled.fingerprint_record == client.side_record(hit.index) and bundled.issuance_index == hit.index

    installed = json.loads(cli("device", "install", res["bundle"], "--dir", device.directory, "--log-key",
                               log.verifier_key, "--json").stdout)
    assert installed["log_key_pinned_now"] is True and installed["issuance_index"] == hit.index
    assert installed["issuer"] == "Acme Models" and installed["tensors"] == len(core)
    assert (device.directory / PINNED_KEY_FILE).read_text().strip() == log.verifier_key

    ran = json.loads(cli("device", "run", "--prompt", "Decide the loan.", "--input", "income 5000", "--backbone",
                         BACKBONE, "--dir", device.directory, "--max-new-tokens", "12", "--json").stdout)
    assert ran["device_uuid"] == str(device.uuid) and ran["issuance_index"] == hit.index

    # The device answered with the backbone + the marked core, and not with the bare backbone.
    from emshield.model.hf import load_causal_lm

    reference = load_causal_lm(BACKBONE)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        bare = reference(ids).logits
    merge_into_model(reference, marked.core)
    with torch.no_grad():
        assert not torch.allclose(reference(ids).logits, bare, atol=1e-4)
    assert ran["answer"] == generate(reference, ran["prompt"], 12)

    # No plaintext core on disk on the device side (only the sealed bundle).
    for name, f in marked.core.items():
        for arr in (f.a, f.b):
            needle = arr.tobytes()[:64]
            assert files_contain(device.directory, needle) == [] and files_contain(out, needle) == [], name


def test_batch_issuance_is_resumable(tmp_path, log, core):
    issuer_dir, core_file = setup_issuer(tmp_path, log, core)
    devices = [init_device(tmp_path / f"dev{i}") for i in range(3)]
    csv_path = tmp_path / "devices.csv"
    from emshield.issue.devices import write_devices_csv

    write_devices_csv(csv_path, [DeviceTarget(d.uuid, d.record.public) for d in devices])
    out = tmp_path / "bundles"
    client = LogClient(log.url)

    first = json.loads(cli(*issue_args(log, issuer_dir, core_file, out, "--devices", csv_path)).stdout)
    assert [r["status"] for r in first["issued"]] == ["issued"] * 3
    size = client.verified_checkpoint(log.verifier).size

    inputs = Path(first["issued"][2]["bundle"] + ".inputs")
    digest = inputs.read_text()
    inputs.unlink()  # without the record of the inputs, the core is marked again and compared
    again = json.loads(cli(*issue_args(log, issuer_dir, core_file, out, "--devices", csv_path)).stdout)
    assert [r["status"] for r in again["issued"]] == ["up-to-date"] * 3
    assert inputs.read_text() == digest
    assert [r["index"] for r in again["issued"]] == [r["index"] for r in first["issued"]]

    lost = Path(first["issued"][1]["bundle"])
    lost.unlink()  # e.g. the run died after the log acknowledged the entry, before the bundle was written
    third = json.loads(cli(*issue_args(log, issuer_dir, core_file, out, "--devices", csv_path)).stdout)
    assert [r["status"] for r in third["issued"]] == ["up-to-date", "bundle-rebuilt", "up-to-date"]
    assert third["issued"][1]["index"] == first["issued"][1]["index"]
    assert client.verified_checkpoint(log.verifier).size == size  # nothing appended twice
    assert [len(client.issuances(device_uuid=str(d.uuid))) for d in devices] == [1, 1, 1]

    text = cli("device", "install", lost, "--dir", devices[1].directory, "--log-key", log.verifier_key).stdout
    assert f"device_uuid: {devices[1].uuid}" in text

    # A different core for an issued device is refused, with or without its bundle present.
    other = tmp_path / "other-core.safetensors"
    other.write_bytes(core_to_bytes(fixture_core(seed=5)))
    refused = cli(*issue_args(log, issuer_dir, other, out, "--devices", csv_path), ok=False)
    assert refused.exit_code == 1  # some devices refused (spec/cli.md: negative)
    assert {r["reason"] for r in json.loads(refused.stdout)["refused"]} == {"issued-otherwise"}
    assert client.verified_checkpoint(log.verifier).size == size


def test_payload_collision_with_another_device_is_refused(tmp_path, log, core, device):
    issuer_dir, _ = setup_issuer(tmp_path, log, core)
    keys = load_issuer(issuer_dir)
    client = LogClient(log.url)
    issuer = prepare_run(client, log.verifier, keys, core, BACKBONE, tolerance=Tolerance(max_perturbation=0.5))
    # A device whose 48-bit payload equals ours (as happens by chance after ~2^24 devices) is in the log already.
    from emshield.marking.params import payload_for_device

    commitment = watermark_commitment(payload_for_device(keys.marking_secret, device.uuid.bytes), issuer.params)
    twin = uuid.uuid4()
    clash = Issuance(twin.bytes, issuer.backbone_id, commitment, os.urandom(32), "both", 1_800_000_000, keys.key_id)
    client.append(sign_entry(clash, keys.signing_key).encode())
    target = DeviceTarget(device.uuid, device.record.public)
    with pytest.raises(IssueError) as exc:
        issue_to_device(issuer, target, tmp_path / "out")
    assert exc.value.reason == "payload-collision" and str(twin) in exc.value.detail
    assert client.issuances(device_uuid=str(device.uuid)) == []
    # The fingerprint-only policy carries no commitment, so it can still be issued.
    issuer.policy = "fingerprint"
    res = issue_to_device(issuer, target, tmp_path / "out")
    assert res.status == "issued" and res.policy == "fingerprint" and res.watermark_commitment is None
    entry = decode_entry(client.issuances(device_uuid=str(device.uuid))[0].leaf).entry
    assert entry.watermark_commitment is None and entry.fingerprint_hash.hex() == res.fingerprint_hash


def test_issuer_keys_and_registration_rules(tmp_path, log, core):
    issuer_dir, core_file = setup_issuer(tmp_path, log, core)
    again = cli("issuer", "init", "--dir", issuer_dir, ok=False)
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    assert {p.name: p.stat().st_mode & 0o777 for p in issuer_dir.iterdir()} == {
        "issuer.key": 0o600, "marking.secret": 0o600, "issuer.pub": 0o644}
    base = ["issuer", "register", "--log", log.url, "--core", core_file, "--backbone", BACKBONE, "--name", "Acme",
            "--dir", issuer_dir, "--json"]
    no_token = cli(*base, env={TOKEN_ENV: ""}, ok=False)
    assert no_token.exit_code == 2 and TOKEN_ENV in no_token.output
    same = json.loads(cli(*base, env={TOKEN_ENV: log.token}).stdout)
    assert same["created"] is False
    small = tmp_path / "small-core.safetensors"
    small.write_bytes(core_to_bytes(dict(list(core.items())[:2])))
    other = cli(*base[:5], small, *base[6:], env={TOKEN_ENV: log.token}, ok=False)
    assert other.exit_code == 2 and "registered-otherwise" in other.output
    dev = init_device(tmp_path / "d")
    secret = issuer_dir / "marking.secret"
    original = secret.read_bytes()
    secret.write_bytes(bytes(32))  # another marking secret than the one the registration was made from
    swapped = cli(*issue_args(log, issuer_dir, core_file, tmp_path / "o", "--device", dev.directory), ok=False)
    assert swapped.exit_code == 2 and "does not belong to the registered marking parameters" in swapped.output
    secret.write_bytes(original)
    os.chmod(issuer_dir / "issuer.key", 0o644)
    loose = cli(*issue_args(log, issuer_dir, core_file, tmp_path / "o", "--device", dev.directory), ok=False)
    assert loose.exit_code == 2 and "mode 0600" in loose.output


def test_issue_refuses_bad_inputs_clearly(tmp_path, log, core):
    issuer_dir, core_file = setup_issuer(tmp_path, log, core)
    bad_csv = tmp_path / "bad.csv"
    for text, msg in [("uuid,key\n1,2\n", "header must be exactly"),
                      ("device_uuid,x25519_public,xwing_public\nnot-a-uuid,00,00\n", "line 2"),
                      ("device_uuid,x25519_public,xwing_public\n", "lists no devices")]:
        bad_csv.write_text(text)
        r = cli(*issue_args(log, issuer_dir, core_file, tmp_path / "o", "--devices", bad_csv), ok=False)
        assert r.exit_code == 2 and msg in r.output, r.output
    r = cli(*issue_args(log, issuer_dir, core_file, tmp_path / "o"), ok=False)
    assert r.exit_code == 2 and "give the devices" in r.output
    args = issue_args(log, issuer_dir, core_file, tmp_path / "o", "--devices", bad_csv)
    args[args.index("--log-key") + 1] = "not-a-key"
    r = cli(*args, ok=False)
    assert r.exit_code == 2 and "neither a verifier key nor a readable file" in r.output
    unregistered = tmp_path / "unregistered"
    cli("issuer", "init", "--dir", unregistered)
    dev = init_device(tmp_path / "d")
    args = issue_args(log, unregistered, core_file, tmp_path / "o", "--device", dev.directory)
    r = cli(*args, ok=False)
    assert r.exit_code == 2 and "not-registered" in r.output
    assert not (dev.directory / INSTALLED_FILE).exists()


def test_device_is_repeatable_and_every_failure_speaks_json(tmp_path, log, core):
    """`--device A --device B` issues to both (it once kept only B); a UUID given twice is refused; with
    --json every failure prints one JSON object on stdout with the shared exit code (spec/cli.md)."""
    issuer_dir, core_file = setup_issuer(tmp_path, log, core)
    devs = [init_device(tmp_path / f"d{i}") for i in range(2)]
    out = tmp_path / "o"
    both = json.loads(cli(*issue_args(log, issuer_dir, core_file, out, "--device", devs[0].directory,
                                      "--device", devs[1].directory)).stdout)
    assert sorted(r["device_uuid"] for r in both["issued"]) == sorted(str(d.uuid) for d in devs)
    assert both["ok"] is True and all(r["status"] == "issued" for r in both["issued"])

    def failure(args: list, code: int, kind: str, needle: str) -> dict:
        r = cli(*args, ok=False)
        assert r.exit_code == code, r.output
        doc = json.loads(r.stdout)
        assert doc["ok"] is False and doc["error"] == kind and doc["exit_code"] == code and needle in doc["detail"], doc
        return doc

    failure(issue_args(log, issuer_dir, core_file, out, "--device", devs[0].directory, "--device", devs[0].directory),
            2, "bad_input", "given twice")
    failure(issue_args(log, issuer_dir, core_file, out), 2, "bad_input", "give the devices")
    down = issue_args(log, issuer_dir, core_file, out, "--device", devs[0].directory)
    down[down.index("--log") + 1] = f"http://127.0.0.1:{free_port()}"
    doc = failure(down, 4, "log_unavailable", "unreachable")
    assert doc["issued"] == [] and "re-run to resume" in doc["detail"]
    down[down.index("--log") + 1] = "ftp://example"
    failure(down, 2, "bad_input", "http(s) URL")
    with silent_listener() as hanging:  # a log that accepts and never answers: --timeout bounds the wait
        down[down.index("--log") + 1] = hanging
        failure([*down, "--timeout", "0.5"], 4, "log_unavailable", "timeout")
    # issuer register: the token is checked before anything is read (the core here is not even a core).
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a core")
    reg = ["issuer", "register", "--log", log.url, "--core", junk, "--backbone", BACKBONE, "--name", "X",
           "--dir", issuer_dir, "--json"]
    no_token = cli(*reg, env={TOKEN_ENV: ""}, ok=False)
    assert no_token.exit_code == 2 and json.loads(no_token.stdout)["detail"].startswith(f"set {TOKEN_ENV}")
    with_token = cli(*reg, env={TOKEN_ENV: log.token}, ok=False)
    assert with_token.exit_code == 2 and TOKEN_ENV not in json.loads(with_token.stdout)["detail"]
    fresh = tmp_path / "fresh-issuer"
    cli("issuer", "init", "--dir", fresh)
    reg = [*reg[:4], "--core", core_file, *reg[6:-3], "--dir", fresh, "--json"]
    bad_token = cli(*reg, env={TOKEN_ENV: "wrong-token-" + "x" * 40}, ok=False)
    assert bad_token.exit_code == 2 and "refused the operator token" in json.loads(bad_token.stdout)["detail"]


def test_task_data_policy_keeps_the_mark_only_within_measured_fidelity(tmp_path, log, device):
    """`--task-data`: accuracy and loss of the marked core are measured on held-out records, and the
    watermark is kept only within tolerance (0.5 pp, 1 %); the issued bundle's core is the one measured."""
    from emshield.model.adapter import load_core

    root = Path(__file__).resolve().parents[2]
    core = load_core(root / "fixtures" / "cores" / "financial-lora.safetensors")
    issuer_dir, core_file = setup_issuer(tmp_path, log, core)
    out = json.loads(cli(*issue_args(log, issuer_dir, core_file, tmp_path / "out", "--device", device.directory,
                                     "--task-data", root / "fixtures" / "data" / "financial-test.json",
                                     "--task-records", "40")).stdout)
    (result,) = out["issued"]
    record = result["mark"]
    drop_pp = 100 * (record["accuracy_unmarked"] - record["accuracy_marked"])
    loss_rel = record["loss_marked"] / record["loss_unmarked"] - 1
    print(f"task-data policy: {result['policy']}, kept {record['embedding']}, tried {record['candidates_tried']}, "
          f"accuracy drop {drop_pp:.2f} pp, loss {100 * loss_rel:+.2f} %")
    assert record["candidates_tried"] and record["candidates_tried"][0].startswith("input-aware")
    if result["policy"] == "both":
        assert drop_pp <= 0.5 + 1e-9 and loss_rel <= 0.01
        assert record["embedding"] is not None
    else:
        assert record["embedding"] is None
    # The task data is part of the issuance inputs: the same run again finds its bundle up to date.
    again = json.loads(cli(*issue_args(log, issuer_dir, core_file, tmp_path / "out", "--device", device.directory,
                                       "--task-data", root / "fixtures" / "data" / "financial-test.json",
                                       "--task-records", "40")).stdout)
    assert again["issued"][0]["status"] == "up-to-date"


def test_held_out_records_beside_a_trained_core_are_the_task_data_by_default(tmp_path, log):
    """Traceable at a measured cost by default: a core trained with a hold-out carries its held-out
    records (heldout.json), and `emshield issue` measures the mark on them unless told otherwise."""
    root = Path(__file__).resolve().parents[2]
    trained = tmp_path / "trained"
    r = cli("decouple", "train", "--data", root / "fixtures" / "data" / "financial-test.json", "--backbone", BACKBONE,
            "--holdout", "12", "--steps", "4", "--skip-bare", "--out", trained, "--quiet", "--json")
    assert (trained / "heldout.json").is_file(), r.output
    from emshield.model.adapter import load_core

    issuer_dir, _ = setup_issuer(tmp_path, log, load_core(trained / "core.safetensors"), name="Held Out")
    core_file = trained / "core.safetensors"

    def issue(out: str, *extra) -> tuple[dict, str]:
        args = issue_args(log, issuer_dir, core_file, tmp_path / out, "--device", init_device(tmp_path / out).directory)
        at = args.index("--tolerance")
        del args[at:at + 2]
        res = cli(*args, *extra)
        return json.loads(res.stdout)["issued"][0]["mark"], res.stderr

    measured, note = issue("default")
    assert measured["accuracy_unmarked"] is not None and measured["loss_unmarked"] is not None, measured
    assert f"held-out records in {trained / 'heldout.json'}" in note
    for extra in (["--no-task-data"], ["--tolerance", "0.5"]):
        mark, note = issue("-".join(extra).strip("-"), *extra)
        assert mark["accuracy_unmarked"] is None and "held-out" not in note, (extra, mark)
    both = cli(*issue_args(log, issuer_dir, core_file, tmp_path / "x", "--device", init_device(tmp_path / "x").directory),
               "--no-task-data", "--task-data", trained / "heldout.json", ok=False)
    assert both.exit_code == 2 and "contradict" in both.stderr


def test_a_second_device_for_one_fingerprint_only_core_is_refused(tmp_path, log, core):
    """Two devices with the same unmarked core could never be told apart: the second is refused
    unless --allow-shared-core, and then both are issued (the verifier reports them indistinguishable)."""
    issuer_dir, core_file = setup_issuer(tmp_path, log, core)
    devices = [init_device(tmp_path / f"dev{i}") for i in range(2)]
    out = tmp_path / "bundles"
    first = json.loads(cli(*issue_args(log, issuer_dir, core_file, out, "--device", devices[0].directory,
                                       "--policy", "fingerprint")).stdout)
    assert [r["policy"] for r in first["issued"]] == ["fingerprint"]
    refused = cli(*issue_args(log, issuer_dir, core_file, out, "--device", devices[1].directory,
                              "--policy", "fingerprint"), ok=False)
    assert refused.exit_code == 1
    (why,) = json.loads(refused.stdout)["refused"]
    assert why["reason"] == "shared-core" and str(devices[0].uuid) in why["detail"] and "--allow-shared-core" in why["detail"]
    assert LogClient(log.url).issuances(device_uuid=str(devices[1].uuid)) == []
    allowed = json.loads(cli(*issue_args(log, issuer_dir, core_file, out, "--device", devices[1].directory,
                                         "--policy", "fingerprint", "--allow-shared-core")).stdout)
    assert [r["status"] for r in allowed["issued"]] == ["issued"]
    assert allowed["issued"][0]["fingerprint_hash"] == first["issued"][0]["fingerprint_hash"]


def test_the_default_tolerance_marks_the_fixture_recipe_core(tmp_path, log, device):
    """Traceable by default: `emshield issue` without --tolerance or --task-data gives the committed
    fixture recipe core a per-device watermark (it used to get fingerprint only at 0.05)."""
    from emshield.model.adapter import load_core

    root = Path(__file__).resolve().parents[2]
    fixture = load_core(root / "fixtures" / "cores" / "financial-lora.safetensors")
    issuer_dir, core_file = setup_issuer(tmp_path, log, fixture, name="Default Tolerance")
    args = [a for a in issue_args(log, issuer_dir, core_file, tmp_path / "out", "--device", device.directory)]
    at = args.index("--tolerance")
    del args[at:at + 2]
    res = json.loads(cli(*args).stdout)
    (issued,) = res["issued"]
    assert issued["policy"] == "both", issued["mark"]
    assert issued["mark"]["tolerance"] == Tolerance().max_perturbation == 0.15


def test_task_data_measures_the_unmarked_core_once_per_run(tmp_path, log):
    """The unmarked core is the same for every device: `--task-data` measured it again for each one
    (10 records × 3 devices took 327 s on SmolLM2). Now one evaluation of it per run, plus one per
    embedding candidate tried per device."""
    from emshield.model.adapter import load_core

    root = Path(__file__).resolve().parents[2]
    core = load_core(root / "fixtures" / "cores" / "financial-lora.safetensors")
    issuer_dir, _ = setup_issuer(tmp_path, log, core)
    devices = [init_device(tmp_path / f"d{i}") for i in range(2)]
    lenient = Tolerance(max_accuracy_drop_pp=100.0, max_loss_increase=10.0)  # the first candidate is kept: fast
    issuer = prepare_run(LogClient(log.url), log.verifier, load_issuer(issuer_dir), core, BACKBONE,
                         tolerance=lenient, task_data=root / "fixtures" / "data" / "financial-test.json",
                         task_records=12)
    measured = issuer.task_eval
    calls = []

    def counting(c):
        calls.append(c is issuer.core)
        return measured(c)

    issuer.task_eval = counting
    results = [issue_to_device(issuer, DeviceTarget(d.uuid, d.record.public), tmp_path / "out") for d in devices]
    assert calls.count(True) == 1, calls
    assert len(calls) == 1 + sum(len(r.mark["candidates_tried"]) for r in results) == 3
    assert {r.mark["accuracy_unmarked"] for r in results} == {issuer.task_baseline[0]}
    assert {r.mark["task_metric"] for r in results} == {"accuracy"}


def test_task_data_of_a_generative_task_is_scored_per_token(tmp_path, log, device):
    """Exact match is all-or-nothing on long answers (0 for the unmarked and the marked core alike, so any
    mark "cost nothing"); a generative task is measured by teacher-forced token accuracy instead."""
    from emshield.model.datasets import load_dataset
    from emshield.model.evaluate import evaluate
    from emshield.model.taskeval import TOKEN_ACCURACY, TaskModel

    root = Path(__file__).resolve().parents[2]
    data = root / "fixtures" / "data" / "identifier-test.json"
    task = load_dataset(data)
    records = task[:8]
    model = TaskModel.load(BACKBONE)
    model.use(fixture_core(0))
    assert evaluate(model.model, model.tokenizer, records, choices=()).accuracy == 0.0  # exact match sees nothing
    assert model.metric(task) == TOKEN_ACCURACY
    score, loss = model.evaluator(records, task)(fixture_core(0))
    assert 0.0 < score < 1.0 and loss > 0
    issuer_dir, core_file = setup_issuer(tmp_path, log, fixture_core(0))
    out = json.loads(cli(*issue_args(log, issuer_dir, core_file, tmp_path / "out", "--device", device.directory,
                                     "--task-data", data, "--task-records", "8")).stdout)
    mark = out["issued"][0]["mark"]
    assert mark["task_metric"] == TOKEN_ACCURACY and mark["accuracy_unmarked"] == pytest.approx(score)
