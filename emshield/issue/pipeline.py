"""The issuance pipeline: issuing a marked, sealed core to devices, one after another.

For one device (spec/issue.md): payload from the device UUID → refuse a payload collision with
another device (the log's commitment index) → mark the core by policy → fingerprint → sign an
Issuance entry → append it (the log answers only once the entry is in a signed checkpoint) →
publish the fingerprint as the entry's side record → fetch and verify inclusion proofs for the
issuance and the issuer's registration against the pinned log key → seal the marked core to the
device, bound to the entry's leaf hash → write and re-verify the bundle (spec/bundle.md).

Resumable: before issuing, the log is asked for earlier issuances to the device by this issuer for
this backbone. If there is one, no second entry is made: the core is marked again (marking is
deterministic), its fingerprint hash and commitment must equal the logged ones (else the device
already holds a different core and issuance is refused), and a fresh bundle is built for the
logged entry. A bundle already in the output folder that verifies is left alone.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from emshield.bundle import (
    FILE_SUFFIX,
    Bundle,
    BundleError,
    TlogProof,
    read_bundle_file,
    verify_bundle,
    write_bundle_file,
)
from emshield.core import Core, LoraFactors, core_to_bytes
from emshield.logclient.http import LogClient
from emshield.marking import fingerprint as fp_mod
from emshield.marking import policy as policy_mod
from emshield.marking import secret as secret_mark
from emshield.marking.params import (
    MarkingParams,
    payload_for_device,
    verification_key,
    watermark_commitment,
)
from emshield.tee.blobformat import Binding
from emshield.tee.seal import seal_core
from emshield.tlog.checkpoint import CheckpointError, NoteVerifier, verify_checkpoint
from emshield.tlog.entry import (
    EntryError,
    Issuance,
    decode_entry,
    sign_entry,
    verify_entry_signature,
)
from emshield.tlog.merkle import ProofError, leaf_hash

from .devices import DeviceTarget
from .errors import IssueError, LogMisbehavingError
from .keys import ISSUER_KEY_FILE, IssuerKeys, init_issuer, load_issuer
from .registration import (
    LoggedRegistration,
    fetch_registration,
    marking_params_for,
    register_issuer,
)

POLICY_AUTO = "auto"
POLICY_FINGERPRINT = "fingerprint"
POLICIES = (POLICY_AUTO, POLICY_FINGERPRINT)


DEFAULT_TASK_RECORDS = 120  # held-out records the policy measures fidelity on (with task data)


@dataclass
class IssuanceRun:
    """Everything that stays fixed across the devices of one issuance run."""

    client: LogClient
    log_verifier: NoteVerifier
    keys: IssuerKeys
    registration: LoggedRegistration
    core: Core
    backbone_id: bytes
    policy: str = POLICY_AUTO
    tolerance: policy_mod.Tolerance = field(default_factory=policy_mod.Tolerance)
    backbone_norms: Mapping[str, float] | None = None
    # With task data (prepare_run's task_data): the policy measures accuracy and loss on it and
    # tries input-aware embeddings first (spec/watermark.md, policy).
    task_eval: policy_mod.TaskEval | None = None
    input_moments: Mapping[str, Any] | None = None
    task_digest: str = ""
    # One fingerprint-only core issued to a second device makes the copies indistinguishable
    # (the verifier can only name the core): refused unless the issuer says so.
    allow_shared_core: bool = False
    task_metric: str = ""  # what task_eval's score is (emshield.model.taskeval: accuracy or token accuracy)
    task_baseline: tuple[float, float] | None = None  # task_eval(core), measured once, on first use
    # The secret tier (spec/watermark.md, "Secret tier") beside the public watermark: on by default,
    # since the public tier alone can be stripped by anyone who reads the log.
    secret_tier: bool = True

    def unmarked_task_score(self) -> tuple[float, float] | None:
        """The unmarked core's (score, loss): the same for every device, so measured once per run."""
        if self.task_eval is not None and self.task_baseline is None:
            self.task_baseline = self.task_eval(self.core)
        return self.task_baseline

    @property
    def params(self) -> MarkingParams:
        return self.registration.params


def prepare_run(client: LogClient, log_verifier: NoteVerifier, keys: IssuerKeys, core: Core, backbone: Path, *,
                   policy: str = POLICY_AUTO, tolerance: policy_mod.Tolerance | None = None,
                   task_data: Path | None = None, task_records: int = DEFAULT_TASK_RECORDS,
                   allow_shared_core: bool = False, task_prompt_format: str = "plain",
                   secret: bool = True) -> IssuanceRun:
    """Check that the issuer is registered for this backbone and core layout, and read the
    backbone's weight norms for the core's layers (the policy's perturbation measure).

    With ``task_data`` (held-out records in the instruction format), the policy keeps the
    watermark only if task accuracy and loss stay within ``tolerance`` on the first
    ``task_records`` records, and draws the input statistics for input-aware embedding from the
    next ``task_records`` (or the same ones when the file is shorter), with prompts in
    ``task_prompt_format`` (the one the core was trained with). ``secret``: embed the secret tier
    beside the public watermark (the default)."""
    from emshield.model.io import backbone_id as backbone_id_of_path
    from emshield.model.io import open_tensors

    if policy not in POLICIES:
        raise IssueError("policy", f"policy must be one of {', '.join(POLICIES)}")
    logged = fetch_registration(client, keys.key_id)
    if logged is None:
        raise IssueError("not-registered", f"issuer {keys.key_id.hex()} is not registered in the log "
                         "(run `emshield issuer register`)")
    if verification_key(keys.marking_secret, logged.params.backbone_id) != logged.params.verification_key:
        raise IssueError("issuer-keys", "the marking secret does not belong to the registered marking parameters")
    bid = backbone_id_of_path(backbone)
    if logged.params.backbone_id != bid:
        raise IssueError("wrong-backbone", f"{backbone} has backbone id {bid}; the issuer registered "
                         f"{logged.params.backbone_id}")
    want = {lay.name: (lay.out_features, lay.in_features) for lay in logged.params.layers}
    have = {name: f.shape for name, f in core.items()}
    if want != have:
        raise IssueError("wrong-core-layout", "the core's layers and shapes differ from the registered marking "
                         f"parameters ({len(have)} vs {len(want)} layers)")
    with open_tensors(backbone) as bb:
        norms = {name: float(bb.get(name).double().norm()) for name in core}
    issuer = IssuanceRun(client, log_verifier, keys, logged, dict(core), bytes.fromhex(bid), policy,
                    tolerance or policy_mod.Tolerance(), norms, allow_shared_core=allow_shared_core,
                    secret_tier=secret)
    if task_data is not None and policy != POLICY_FINGERPRINT:
        _attach_task(issuer, backbone, Path(task_data), task_records, task_prompt_format)
    return issuer


def _attach_task(issuer: IssuanceRun, backbone: Path, task_data: Path, n: int, prompt_format: str) -> None:
    from emshield.model.datasets import load_dataset
    from emshield.model.taskeval import TaskModel

    if n < 1:
        raise IssueError("task-data", "task_records must be at least 1")
    try:
        records = load_dataset(task_data)
    except (OSError, ValueError) as exc:
        raise IssueError("task-data", f"cannot use {task_data} as task data: {exc}") from exc
    if not records:
        raise IssueError("task-data", f"{task_data} holds no records")
    model = TaskModel.load(backbone, prompt_format)
    evaluated, moments_from = records[:n], records[n:2 * n] or records[:n]
    try:
        issuer.task_eval = model.evaluator(evaluated, task=records)
        issuer.input_moments = model.input_moments(issuer.core, moments_from)
    except ValueError as exc:  # e.g. a chat prompt format on a backbone without a chat template
        raise IssueError("task-data", str(exc)) from exc
    issuer.task_metric = model.metric(records)
    suffix = f"\x00{n}" + (f"\x00{prompt_format}" if prompt_format != "plain" else "")
    issuer.task_digest = hashlib.sha256(task_data.read_bytes() + suffix.encode()).hexdigest()


@dataclass(frozen=True)
class Marked:
    core: dict[str, LoraFactors]
    fingerprint: fp_mod.Fingerprint
    policy: str  # the entry's policy: "both" or "fingerprint"
    commitment: bytes | None
    record: policy_mod.MarkRecord | None  # the policy's figures (None when fingerprint-only was asked for)
    secret_salt: bytes | None = None  # the secret tier's salt and commitment, when it was embedded
    secret_commitment: bytes | None = None

    @property
    def logged(self) -> tuple[bytes, bytes | None, bytes | None]:
        """What the issuance entry records of this core: fingerprint hash and both tiers' commitments."""
        return self.fingerprint.hash(), self.commitment, self.secret_commitment


def logged_marks(entry: Issuance) -> tuple[bytes | None, bytes | None, bytes | None]:
    return entry.fingerprint_hash, entry.watermark_commitment, entry.secret_mark_commitment


def mark_for_device(issuer: IssuanceRun, device: uuid.UUID, salt: bytes | None) -> Marked:
    """Deterministic: the same core, device, parameters and salt always give the same marked core.

    ``salt`` (16 bytes) keys the secret tier together with the marking secret; None marks the
    public tier alone (an issuance logged before the secret tier, or the tier switched off)."""
    params = issuer.params
    if issuer.policy == POLICY_FINGERPRINT:
        return Marked(dict(issuer.core), fp_mod.fingerprint_factors(issuer.core, params), "fingerprint", None, None)
    payload = payload_for_device(issuer.keys.marking_secret, device.bytes)
    detection = None if salt is None else secret_mark.detection_key(
        issuer.keys.marking_secret, params.backbone_id, device.bytes, salt)
    result = policy_mod.mark(issuer.core, payload, params, issuer.tolerance, task_eval=issuer.task_eval,
                             backbone_norms=issuer.backbone_norms, input_moments=issuer.input_moments,
                             baseline=issuer.unmarked_task_score(), detection=detection)
    if result.record.mode != policy_mod.MODE_BOTH:
        return Marked(result.core, result.fingerprint, result.record.mode, None, result.record)
    return Marked(result.core, result.fingerprint, result.record.mode, watermark_commitment(payload, params),
                  result.record, None if detection is None else salt,
                  None if detection is None else detection.commitment)


SALT_LABEL = b"emshield/secret-mark-salt/v1"


def _new_salt(issuer: IssuanceRun, device: uuid.UUID) -> bytes | None:
    """A new issuance's secret-mark salt (spec/issue.md §3): HKDF of the marking secret over the
    backbone and device, so marking stays a function of its inputs (a re-run marks identically),
    and distinct for every issuance the pipeline makes (one per device and backbone)."""
    if not issuer.secret_tier or issuer.policy == POLICY_FINGERPRINT:
        return None
    bid = issuer.params.backbone_id.encode("utf-8")
    info = len(bid).to_bytes(2, "big") + bid + device.bytes
    return HKDF(hashes.SHA256(), secret_mark.SALT_BYTES, SALT_LABEL, info).derive(issuer.keys.marking_secret)


def _check_no_collision(issuer: IssuanceRun, device: uuid.UUID) -> None:
    """48-bit payloads collide after ~2^24 devices: the commitment index must not name another device."""
    if issuer.policy == POLICY_FINGERPRINT:
        return
    commitment = watermark_commitment(payload_for_device(issuer.keys.marking_secret, device.bytes), issuer.params)
    others = sorted({h.device_uuid for h in issuer.client.issuances(watermark_commitment=commitment)} - {str(device)})
    if others:
        raise IssueError("payload-collision", f"device {device}'s watermark payload equals that of {others[0]} "
                         "(commitment already in the log); issue it with --policy fingerprint")


def _check_not_shared(issuer: IssuanceRun, device: uuid.UUID, marked: Marked) -> None:
    """A fingerprint-only core already issued by this issuer to another device: refuse, unless the
    issuer allowed shared cores (the verifier then reports the copies as indistinguishable)."""
    if marked.commitment is not None or issuer.allow_shared_core:
        return
    others = sorted({h.device_uuid for h in issuer.client.issuances(fingerprint_hash=marked.fingerprint.hash())
                     if h.issuer_key_id == issuer.keys.key_id} - {str(device)})
    if others:
        why = marked.record.reason if marked.record is not None else "policy fingerprint"
        raise IssueError("shared-core", f"device {device} would get the same unmarked core as {others[0]} "
                         f"({why}): the copies could not be told apart; pass --allow-shared-core to issue it anyway")


def _earlier_issuance(issuer: IssuanceRun, device: uuid.UUID) -> tuple[int, bytes, Issuance] | None:
    """This issuer's logged issuance to ``device`` for this backbone, if any (the first one).

    The log's index is not trusted: an entry naming our key must carry our signature (its
    inclusion is proved later, before any bundle is written)."""
    public = issuer.keys.signing_key.public_key()
    for hit in issuer.client.issuances(device_uuid=str(device)):
        if hit.issuer_key_id != issuer.keys.key_id:
            continue
        try:
            signed = decode_entry(hit.leaf)
            verify_entry_signature(signed, public)
        except EntryError as exc:
            raise LogMisbehavingError(f"the device index returned entry {hit.index} under our key id: {exc}") from exc
        entry = signed.entry
        if isinstance(entry, Issuance) and entry.device_uuid == device.bytes and entry.backbone_id == issuer.backbone_id:
            return hit.index, hit.leaf, entry
    return None


def _seal(marked: Marked, device: DeviceTarget, backbone_id: bytes, leaf_hash: bytes) -> bytes:
    """The one place the issuer seals a core (tee's `seal_core`: the plaintext is the core file)."""
    return seal_core(marked.core, device.public, Binding(device.uuid, backbone_id, leaf_hash))


def _proofs(issuer: IssuanceRun, entry: bytes) -> tuple[TlogProof, TlogProof]:
    """tlog-proofs for the registration and the entry against the latest checkpoint, both checked."""
    note = issuer.client.checkpoint_note()
    try:
        cp = verify_checkpoint(note, issuer.log_verifier)
        out = []
        for leaf in (issuer.registration.entry, entry):
            proof = issuer.client.prove_inclusion(leaf, cp)
            out.append(TlogProof(proof.index, proof.hashes, note))
    except (CheckpointError, ProofError) as exc:
        raise LogMisbehavingError(f"{type(exc).__name__}: {exc}") from exc
    return out[0], out[1]


@dataclass(frozen=True)
class IssueResult:
    device_uuid: str
    status: str  # issued | bundle-rebuilt (entry logged earlier) | up-to-date (bundle already there)
    index: int
    leaf_hash: str
    policy: str
    bundle: str
    fingerprint_hash: str | None
    watermark_commitment: str | None
    mark: dict | None = None  # the policy's decision and figures, when marked in this run
    secret_mark_salt: str | None = None  # hex; with the commitment, present when the secret tier was embedded
    secret_mark_commitment: str | None = None

    @property
    def salt(self) -> bytes | None:
        """The logged secret-mark salt: ``mark_for_device(run, device, result.salt)`` gives the issued core."""
        return None if self.secret_mark_salt is None else bytes.fromhex(self.secret_mark_salt)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def bundle_path(out_dir: Path, device: uuid.UUID) -> Path:
    return Path(out_dir) / f"{device}{FILE_SUFFIX}"


def _result(status: str, index: int, leaf: bytes, entry: Issuance, path: Path, record=None,
            task_metric: str = "") -> IssueResult:
    mark = None if record is None else {**record.to_json(), **({"task_metric": task_metric} if task_metric else {})}
    return IssueResult(entry.device_uuid_text, status, index, leaf_hash(leaf).hex(), entry.policy, str(path),
                       entry.fingerprint_hash.hex() if entry.fingerprint_hash else None,
                       entry.watermark_commitment.hex() if entry.watermark_commitment else None,
                       mark, entry.secret_mark_salt.hex() if entry.secret_mark_salt else None,
                       entry.secret_mark_commitment.hex() if entry.secret_mark_commitment else None)


INPUTS_LABEL = b"emshield/issue-inputs/v1\x00"
INPUTS_SUFFIX = ".inputs"


def inputs_digest(issuer: IssuanceRun) -> str:
    """What decides the issued core besides the device: the core, the parameters, policy, tolerance
    and task data."""
    h = hashlib.sha256(INPUTS_LABEL + issuer.params.digest())
    h.update(f"{issuer.policy}\x00{issuer.tolerance!r}\x00{issuer.task_digest}\x00{issuer.secret_tier}\x00".encode())
    h.update(core_to_bytes(issuer.core))
    return h.hexdigest()


def _existing_bundle(issuer: IssuanceRun, device: DeviceTarget, path: Path) -> IssueResult:
    """A bundle already in the output folder: kept if it verifies, is this device's and issuer's, and
    was made from the same inputs (its `.inputs` file) or carries the marks those inputs give now."""
    try:
        v = verify_bundle(read_bundle_file(path), issuer.log_verifier)
    except BundleError as exc:
        raise IssueError("bad-existing-bundle", f"{path} exists but does not verify ({exc}); "
                         "move it away to rebuild it") from exc
    if v.device_uuid != device.uuid or v.issuance.issuer_key_id != issuer.keys.key_id:
        raise IssueError("bad-existing-bundle", f"{path} is another device's or issuer's bundle")
    inputs, digest = path.with_name(path.name + INPUTS_SUFFIX), inputs_digest(issuer)
    if not inputs.is_file() or inputs.read_bytes()[:100].strip() != digest.encode():
        marked = mark_for_device(issuer, device.uuid, v.issuance.secret_mark_salt)
        if logged_marks(v.issuance) != marked.logged:
            raise IssueError("issued-otherwise", f"device {device.uuid} was issued a different core at index "
                             f"{v.issuance_index}; refusing a second issuance")
        inputs.write_text(digest + "\n", encoding="ascii")
    return _result("up-to-date", v.issuance_index, v.bundle.issuance_entry, v.issuance, path)


def issue_to_device(issuer: IssuanceRun, device: DeviceTarget, out_dir: Path, *, now: int | None = None) -> IssueResult:
    """Issue (or resume issuing) the core to one device and write its bundle into ``out_dir``."""
    out_dir = Path(out_dir)
    path = bundle_path(out_dir, device.uuid)
    if path.exists():
        return _existing_bundle(issuer, device, path)
    earlier = _earlier_issuance(issuer, device.uuid)
    if earlier is None:
        _check_no_collision(issuer, device.uuid)
    marked = mark_for_device(issuer, device.uuid, _new_salt(issuer, device.uuid) if earlier is None else earlier[2].secret_mark_salt)
    if earlier is None:
        _check_not_shared(issuer, device.uuid, marked)
    if earlier is not None:
        index, leaf, entry = earlier
        if logged_marks(entry) != marked.logged:
            raise IssueError("issued-otherwise", f"device {device.uuid} was issued a different core at index {index}; "
                             "refusing a second issuance")
        status = "bundle-rebuilt"
    else:
        entry = Issuance(device.uuid.bytes, issuer.backbone_id, marked.commitment, marked.fingerprint.hash(),
                         marked.policy, int(time.time()) if now is None else now, issuer.keys.key_id,
                         marked.secret_salt, marked.secret_commitment)
        leaf = sign_entry(entry, issuer.keys.signing_key).encode()
        index = issuer.client.append(leaf).index
        status = "issued"
    issuer.client.put_side_record(index, marked.fingerprint.to_cbor())  # idempotent
    reg_proof, iss_proof = _proofs(issuer, leaf)
    if iss_proof.index != index:
        raise LogMisbehavingError(f"the log proved the entry at index {iss_proof.index}, it said {index}")
    bundle = Bundle(issuer.registration.entry, reg_proof, leaf, iss_proof, marked.fingerprint.to_cbor(),
                    _seal(marked, device, issuer.backbone_id, leaf_hash(leaf)))
    verify_bundle(bundle, issuer.log_verifier)  # what we hand out must verify
    out_dir.mkdir(parents=True, exist_ok=True)
    write_bundle_file(path, bundle)
    path.with_name(path.name + INPUTS_SUFFIX).write_text(inputs_digest(issuer) + "\n", encoding="ascii")
    return _result(status, index, leaf, entry, path, marked.record, issuer.task_metric)


def issue_many(issuer: IssuanceRun, devices: list[DeviceTarget], out_dir: Path, *,
               progress: bool = True) -> Iterator[IssueResult | IssueError]:
    """Issue to each device in turn (tqdm bar); per-device refusals are yielded, not raised, so
    one refused device does not stop the batch. Log misbehaviour (LogMisbehavingError), log
    refusals and network failures raise: re-run to resume."""
    from tqdm import tqdm

    with tqdm(devices, desc="issue", unit="device", disable=not progress) as bar:
        for device in bar:
            try:
                yield issue_to_device(issuer, device, out_dir)
            except LogMisbehavingError:
                raise
            except IssueError as exc:
                yield exc


# --- one call for tests, demos and scripts ---------------------------------------------------------


def issue_core(log_url: str, log_verifier: NoteVerifier, issuer_dir: Path, core: Core, backbone: Path,
               device: DeviceTarget, out_dir: Path, *, operator_token: str | None = None,
               issuer_name: str = "EMShield issuer", policy: str = POLICY_AUTO,
               tolerance: policy_mod.Tolerance | None = None) -> IssueResult:
    """Create the issuer in ``issuer_dir`` if it has no keys, register it if needed (then the
    operator token is required), and issue ``core`` to ``device``; returns the result (bundle path)."""
    from emshield.model.io import backbone_id as backbone_id_of_path

    issuer_dir = Path(issuer_dir)
    keys = load_issuer(issuer_dir) if (issuer_dir / ISSUER_KEY_FILE).exists() else init_issuer(issuer_dir)
    client = LogClient(log_url, operator_token=operator_token)
    if fetch_registration(client, keys.key_id) is None:
        register_issuer(client, keys, issuer_name, marking_params_for(keys, backbone_id_of_path(backbone), core))
    issuer = prepare_run(client, log_verifier, keys, core, backbone, policy=policy, tolerance=tolerance)
    return issue_to_device(issuer, device, out_dir)
