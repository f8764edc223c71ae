"""`emshield device ...`: device identity, sealing to a device, mount in memory."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

import click

from emshield.exit_codes import Failure
from tqdm import tqdm

from emshield.tee import errors
from emshield.tee.blobformat import CONTENT_CORE, CONTENT_OPAQUE, DEFAULT_CHUNK, MAX_CHUNK, MIN_CHUNK, SUITES, Binding
from emshield.tee.coreio import core_from_safetensors_buffer
from emshield.tee.device import CSV_COLUMNS, DeviceRecord, init_device, load_device
from emshield.tee.mount import ENV_FD, ENV_KIND, ENV_SIZE, mount
from emshield.tee.providers import PROVIDERS
from emshield.tee.seal import seal_stream

from .deploy import DEFAULT_MAX_NEW_TOKENS

DEFAULT_DIR = Path.home() / ".local" / "share" / "emshield" / "device"
_LABELS = [
    (errors.WrongDeviceError, "wrong device"),
    (errors.WrongBackboneError, "wrong backbone"),
    (errors.WrongIssuanceError, "bound to another issuance"),
    (errors.KeyUnwrapError, "key unwrap failed"),
    (errors.TruncatedBlobError, "truncated blob"),
    (errors.TrailingDataError, "extended blob"),
    (errors.TamperedBlobError, "tampered blob"),
    (errors.UnsupportedVersionError, "unsupported version"),
    (errors.UnsupportedSuiteError, "unsupported suite"),
    (errors.MalformedBlobError, "not a sealed blob"),
    (errors.ProviderUnavailableError, "key provider unavailable"),
    (errors.KeyFilePermissionError, "unsafe key file"),
    (errors.ProviderError, "key provider error"),
    (errors.DeviceRecordError, "device record"),
    (errors.InsecureMemoryError, "no secure memory"),
    (errors.MalformedCoreError, "malformed core"),
]


def _fail(e: errors.SealError) -> Failure:
    label = next(text for cls, text in [*_LABELS, (errors.SealError, "sealing error")] if isinstance(e, cls))
    return Failure(f"{label}: {e}")


def _hex32(ctx: click.Context, param: click.Parameter, value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise click.BadParameter("must be hex") from None
    if len(raw) != 32:
        raise click.BadParameter(f"must be 32 bytes (64 hex digits), got {len(raw)} bytes")
    return raw


def _dir_option(f):
    return click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
                        envvar="EMSHIELD_DEVICE_DIR", default=DEFAULT_DIR, show_default=True,
                        help="Device directory (holds device.json; env EMSHIELD_DEVICE_DIR).")(f)


def _binding_options(f):
    f = click.option("--leaf-hash", required=True, callback=_hex32,
                     help="Log entry leaf hash of the issuance (64 hex digits).")(f)
    return click.option("--backbone-id", required=True, callback=_hex32,
                        help="Backbone id the core belongs to (64 hex digits).")(f)


def _public_summary(record: DeviceRecord) -> dict:
    out = record.to_json()
    out["provider_config"] = {k: v for k, v in record.provider_config.items() if not k.startswith("sealed_")}
    return out


@click.group(name="device")
def device_group() -> None:
    """Device side: identity and key providers, sealed cores, mount in memory."""


@device_group.command("init")
@click.option("--provider", type=click.Choice(sorted(PROVIDERS)), default="file", show_default=True,
              help="Where the device secret lives.")
@_dir_option
@click.option("--keyring", default="@u", show_default=True, help="keyring provider: @u, @s or @us.")
@click.option("--tcti", default=None, help="tpm provider: TCTI, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321.")
@click.option("--pcrs", default="", help="tpm provider: bind the key to PCRs, e.g. sha256:0,7.")
@click.option("--json", "as_json", is_flag=True, help="Print the device record as JSON.")
def init_cmd(provider: str, directory: Path, keyring: str, tcti: str | None, pcrs: str, as_json: bool) -> None:
    """Create a device UUID and key pair in a key provider; print the UUID and public keys."""
    options = {"file": {}, "keyring": {"keyring": keyring},
               "tpm": {k: v for k, v in {"tcti": tcti, "pcrs": pcrs}.items() if v}}[provider]
    try:
        device = init_device(directory, provider, options)
    except errors.SealError as e:
        raise _fail(e) from None
    _print_record(device.record, as_json)


def _print_record(record: DeviceRecord, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_public_summary(record), indent=2))
        return
    click.echo(f"device uuid:    {record.uuid}")
    click.echo(f"key provider:   {record.provider}")
    click.echo(f"x25519 public:  {record.public.x25519.hex()}")
    click.echo(f"x-wing public:  {len(record.public.xwing)} bytes (ML-KEM-768+X25519; see --json)")


@device_group.command("show")
@_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the device record as JSON.")
@click.option("--csv", "as_csv", is_flag=True,
              help=f"Print this device's row of the issuer's devices CSV ({','.join(CSV_COLUMNS)}).")
def show_cmd(directory: Path, as_json: bool, as_csv: bool) -> None:
    """Print this device's UUID and public keys (what an issuer seals to)."""
    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    try:
        record = DeviceRecord.load(directory)
    except errors.SealError as e:
        raise _fail(e) from None
    if as_csv:
        click.echo(",".join(record.csv_row()))
    else:
        _print_record(record, as_json)


@device_group.command("seal")
@click.argument("plaintext", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("blob", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "recipient", required=True, type=click.Path(exists=True, path_type=Path),
              help="The device's record (device.json or its directory).")
@_binding_options
@click.option("--suite", type=click.Choice(sorted(SUITES)), default="x25519", show_default=True,
              help="HPKE KEM: x25519, or the hybrid post-quantum mlkem768-x25519 (X-Wing).")
@click.option("--content", type=click.Choice(["core", "opaque"]), default="core", show_default=True,
              help="core: a safetensors core (checked before sealing); opaque: any bytes.")
@click.option("--chunk-size", type=click.IntRange(MIN_CHUNK, MAX_CHUNK), default=DEFAULT_CHUNK, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def seal_cmd(plaintext: Path, blob: Path, recipient: Path, backbone_id: bytes, leaf_hash: bytes, suite: str,
             content: str, chunk_size: int, as_json: bool) -> None:
    """Seal PLAINTEXT (a core) to a device, bound to a backbone and an issuance, into BLOB."""
    if blob.exists():
        raise Failure(f"{blob} exists; refusing to overwrite")
    try:
        record = DeviceRecord.load(recipient)
        length = plaintext.stat().st_size
        if content == "core":
            _check_core_file(plaintext, length)
        partial = blob.with_name(blob.name + ".partial")
        with open(plaintext, "rb") as src, open(partial, "xb") as dst, \
                tqdm(total=length, unit="B", unit_scale=True, desc="seal", disable=None, file=sys.stderr) as bar:
            header = seal_stream(src, dst, length, record.public, Binding(record.uuid, backbone_id, leaf_hash),
                                 suite=suite, content_type=CONTENT_CORE if content == "core" else CONTENT_OPAQUE,
                                 chunk_size=chunk_size, progress=bar.update)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(partial, blob)
    except errors.SealError as e:
        raise _fail(e) from None
    info = {"blob": str(blob), "device_uuid": str(record.uuid), "suite": suite, "content": header.content_name,
            "plaintext_length": length, "blob_length": header.blob_length, "chunks": header.chunk_count}
    click.echo(json.dumps(info, indent=2) if as_json else "\n".join(f"{k}: {v}" for k, v in info.items()))


def _check_core_file(path: Path, length: int) -> None:
    if length == 0:
        raise errors.MalformedCoreError("empty file is not a core")
    problem = None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        try:
            core_from_safetensors_buffer(view)
        except errors.MalformedCoreError as e:
            problem = str(e)  # raised below: the traceback's frames hold views that keep the mmap open
        view.release()
    if problem:
        raise errors.MalformedCoreError(problem)


@device_group.command("mount", context_settings={"ignore_unknown_options": True})
@click.argument("blob", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_binding_options
@_dir_option
@click.option("--allow-unlocked", is_flag=True,
              help="If no locked/secret memory is large enough, use swappable memory (with a warning).")
@click.option("--json", "as_json", is_flag=True, help="Print the verified metadata as JSON.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def mount_cmd(blob: Path, backbone_id: bytes, leaf_hash: bytes, directory: Path, allow_unlocked: bool,
              as_json: bool, command: tuple[str, ...]) -> None:
    """Unseal BLOB into memory only, print its verified metadata, and run COMMAND while mounted.

    \b
    emshield device mount core.sealed --backbone-id HEX --leaf-hash HEX -- python infer.py
    COMMAND runs without a shell and inherits the plaintext as a memory fd: EMSHIELD_CORE_FD,
    EMSHIELD_CORE_SIZE (bytes) and EMSHIELD_CORE_MEMORY (memory kind). Map it read-only
    (emshield.tee.mount.attach_inherited); memfd_secret fds cannot be read(), only mmap()ed.
    The memory is wiped when COMMAND exits; its exit status becomes ours.
    """
    try:
        device = load_device(directory)
        size = blob.stat().st_size
        with tqdm(total=size, unit="B", unit_scale=True, desc="unseal", disable=None, file=sys.stderr) as bar, \
                mount(blob, device, backbone_id, leaf_hash, allow_unlocked=allow_unlocked,
                      progress=bar.update) as mounted:
            bar.close()
            h = mounted.header
            info = {"verified": True, "device_uuid": str(h.binding.device_uuid),
                    "backbone_id": h.binding.backbone_id.hex(), "leaf_hash": h.binding.leaf_hash.hex(),
                    "suite": h.suite.name, "content": h.content_name, "plaintext_length": h.plaintext_length,
                    "chunks": h.chunk_count, "memory": mounted.memory_kind,
                    "tensors": len(mounted.core) if mounted.core is not None else None}
            click.echo(json.dumps(info, indent=2) if as_json else "\n".join(f"{k}: {v}" for k, v in info.items()))
            sys.stdout.flush()
            if not command:
                return
            os.set_inheritable(mounted.fd, True)
            env = dict(os.environ, **{ENV_FD: str(mounted.fd), ENV_SIZE: str(h.plaintext_length),
                                      ENV_KIND: mounted.memory_kind})
            try:
                rc = subprocess.run(list(command), env=env, pass_fds=(mounted.fd,), check=False).returncode
            except OSError as e:
                raise Failure(f"cannot run {command[0]!r}: {e.strerror}") from None
    except errors.SealError as e:
        raise _fail(e) from None
    if rc:
        sys.exit(rc if rc > 0 else 128 - rc)


def _deploy_fail(e: Exception) -> Failure:
    """Bundle, device-check and sealing failures as one clear line (the check's name first)."""
    if isinstance(e, errors.SealError):
        return _fail(e)
    check = getattr(e, "check", None)
    return Failure(f"refused ({check}): {e.detail}" if check else f"refused: {e}")


def _deploy_errors() -> tuple[type[Exception], ...]:
    from emshield.bundle import BundleError, LogKeyError
    from emshield.core import ModelFileError
    from emshield.device.deploy import DeployError

    return BundleError, LogKeyError, DeployError, ModelFileError, errors.SealError


@device_group.command("install")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_dir_option
@click.option("--log-key", default=None, envvar="EMSHIELD_LOG_KEY",
              help="The log's verifier key, or a file holding it; pinned on the first install "
                   "(env EMSHIELD_LOG_KEY). Later installs use the pinned key; a different one is refused.")
@click.option("--allow-unlocked", is_flag=True, help="Allow swappable memory for the trial unseal (with a warning).")
@click.option("--json", "as_json", is_flag=True, help="Print what was installed as JSON.")
def install_cmd(bundle: Path, directory: Path, log_key: str | None, allow_unlocked: bool, as_json: bool) -> None:
    """Verify BUNDLE offline (issuer signature, inclusion proofs, checkpoint signature by the pinned
    log key, sealed core bound to this device and issuance) and install it (spec/bundle.md)."""
    from emshield.bundle import MAX_BUNDLE_SIZE
    from emshield.device.deploy import install_bundle

    try:
        if bundle.stat().st_size > MAX_BUNDLE_SIZE:
            raise Failure(f"{bundle} is larger than {MAX_BUNDLE_SIZE} bytes")
        result = install_bundle(directory, bundle.read_bytes(), log_key, allow_unlocked=allow_unlocked)
    except _deploy_errors() as e:
        raise _deploy_fail(e) from None
    v = result.verified
    info = {"installed": str(result.path), "device_uuid": str(v.device_uuid), "issuer": v.registration.name,
            "issuer_key_id": v.registration.key_id.hex(), "issuance_index": v.issuance_index,
            "leaf_hash": v.issuance_leaf_hash.hex(), "policy": v.issuance.policy, "issued_at": v.issuance.issued_at,
            "backbone_id": v.backbone_id.hex(), "checkpoint_size": v.checkpoint.size, "log": v.checkpoint.origin,
            "log_key_pinned_now": result.pinned_now, "tensors": result.tensors, "trial_unseal_memory": result.memory_kind}
    click.echo(json.dumps(info, indent=2) if as_json else "\n".join(f"{k}: {v}" for k, v in info.items()))


@device_group.command("run")
@click.option("--prompt", required=True, help="The instruction to answer.")
@click.option("--input", "input_text", default="", help="The instruction's input (training template).")
@click.option("--raw", is_flag=True, help="Feed --prompt to the model as is, without the template.")
@click.option("--chat", is_flag=True, help="Use the backbone's chat template (for cores trained with prompt_format chat).")
@click.option("--choice", "choices", multiple=True,
              help="An allowed answer (repeat for each): greedy decoding restricted to these, for classification.")
@click.option("--backbone", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              envvar="EMSHIELD_BACKBONE", help="The public backbone folder the core was issued for (env EMSHIELD_BACKBONE).")
@click.option("--max-new-tokens", type=click.IntRange(1, 8192), default=DEFAULT_MAX_NEW_TOKENS, show_default=True,
              help="Cap on the answer's length; generation stops earlier at end-of-sequence.")
@_dir_option
@click.option("--allow-unlocked", is_flag=True, help="Allow swappable memory for the core (with a warning).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer and its provenance as JSON (UTF-8).")
def run_cmd(prompt: str, input_text: str, raw: bool, chat: bool, choices: tuple[str, ...], backbone: Path,
            max_new_tokens: int, directory: Path, allow_unlocked: bool, as_json: bool) -> None:
    """Mount the installed core, merge it with the backbone in memory and answer a prompt."""
    from emshield.device.deploy import run_prompt

    if raw and chat:
        raise click.UsageError("--raw and --chat exclude each other")
    with tqdm(total=5, desc="run", disable=None if not as_json else True, file=sys.stderr) as bar:
        def stage(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(1)

        try:
            answer = run_prompt(directory, backbone, prompt, input_text=input_text, raw=raw,
                                prompt_format="chat" if chat else "plain", choices=choices,
                                max_new_tokens=max_new_tokens, allow_unlocked=allow_unlocked, stage=stage)
        except _deploy_errors() as e:
            raise _deploy_fail(e) from None
    if as_json:
        _echo_utf8(json.dumps({"answer": answer.text, "complete": answer.complete, "new_tokens": answer.new_tokens,
                               "prompt": answer.prompt, "device_uuid": answer.device_uuid,
                               "issuance_index": answer.issuance_index, "memory": answer.memory_kind},
                              indent=2, ensure_ascii=False))
    else:
        _echo_utf8(answer.text)
    if not answer.complete:
        click.echo(f"warning: the answer was cut at --max-new-tokens {max_new_tokens} before the model ended it",
                   err=True)


def _echo_utf8(text: str) -> None:
    """UTF-8 on stdout whatever the locale says: answers are often not ASCII."""
    click.echo((text + "\n").encode("utf-8"), nl=False)
