"""`emshield mark ...`: make public marking parameters, mark a core, read marks and fingerprints.

I/O lives here, at the edge: the core file (safetensors, format "emshield/core/v1" of
spec/decouple.md: `<name>.lora_A`, `<name>.lora_B`, `<name>.scale`) and a lazy reader of single
tensors from merged-model safetensors files, so extraction reads only the marked layers.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import click

from emshield import exit_codes
from emshield.exit_codes import Failure
import numpy as np
from emshield.core import MAX_CORE_BYTES, Core, LoraFactors, ModelFileError, core_from_bytes, core_to_bytes
from emshield.marking import fingerprint, policy, watermark
from emshield.marking.params import (
    LayerSpec,
    MarkingParams,
    ParamsError,
    payload_for_device,
    verification_key,
    watermark_commitment,
)

MAX_HEADER_BYTES = 100 << 20
MAX_SECRET_BYTES = 1024
NO_MARK_EXIT = exit_codes.NEGATIVE
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}


# ---------------------------------------------------------------------------------------------
# file I/O


def read_core(path: Path) -> dict[str, LoraFactors]:
    """A core file (spec/decouple.md), read and validated by :func:`emshield.core.core_from_bytes`."""
    if not path.is_file():
        raise Failure(f"no such core file: {path}")
    if path.stat().st_size > MAX_CORE_BYTES:
        raise Failure(f"{path}: larger than {MAX_CORE_BYTES} bytes")
    try:
        return core_from_bytes(path.read_bytes())
    except ModelFileError as exc:
        raise Failure(f"{path}: {exc}") from exc


def write_core(core: Core, path: Path) -> None:
    try:
        path.write_bytes(core_to_bytes(core))
    except ValueError as exc:
        raise Failure(f"cannot write core file {path}: {exc}") from exc


def _header(first8: bytes, read: Callable[[int], bytes], where: Path) -> dict:
    if len(first8) != 8:
        raise Failure(f"{where}: too short for safetensors")
    (n,) = struct.unpack("<Q", first8)
    if n > MAX_HEADER_BYTES:
        raise Failure(f"{where}: safetensors header larger than {MAX_HEADER_BYTES} bytes")
    raw = read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Failure(f"{where}: safetensors header is not JSON") from exc
    if not isinstance(header, dict) or len(raw) != n:
        raise Failure(f"{where}: malformed safetensors header")
    return header


class LazyTensors:
    """Reads single tensors from a safetensors file by seeking to them.

    F64 stays float64; F32, F16 and BF16 become float32 (exact), which is what the read-out needs.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file: BinaryIO = path.open("rb")
        except OSError as exc:
            raise Failure(f"cannot open {path}: {exc}") from exc
        first8 = self._file.read(8)
        self._header = _header(first8, self._file.read, path)
        self._base = 8 + struct.unpack("<Q", first8)[0]
        self._size = path.stat().st_size

    def __enter__(self) -> LazyTensors:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._info(name)["shape"])

    def _info(self, name: str) -> dict:
        info = self._header.get(name)
        if name == "__metadata__" or not isinstance(info, dict):
            raise Failure(f"{self.path}: no tensor {name!r}")
        return info

    def get(self, name: str) -> np.ndarray:
        info = self._info(name)
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _DTYPES or not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
            raise Failure(f"{self.path}: tensor {name!r} has an unsupported dtype or bad entry")
        start, end = offsets
        count = int(np.prod(shape)) if shape else 1
        if not (0 <= start <= end and self._base + end <= self._size and end - start == count * np.dtype(_DTYPES[dtype]).itemsize):
            raise Failure(f"{self.path}: tensor {name!r} has inconsistent offsets")
        self._file.seek(self._base + start)
        raw = np.frombuffer(self._file.read(end - start), dtype=_DTYPES[dtype]).reshape(shape)
        if dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw if dtype == "F64" else raw.astype(np.float32)


def _read_params(path: Path) -> MarkingParams:
    try:
        if path.stat().st_size > 1 << 20:
            raise Failure(f"{path}: marking parameters too large")
        return MarkingParams.from_cbor(path.read_bytes())
    except OSError as exc:
        raise Failure(f"cannot read {path}: {exc}") from exc
    except ParamsError as exc:
        raise Failure(f"{path}: {exc}") from exc


def _read_secret(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_SECRET_BYTES:
            raise Failure(f"{path}: marking secret larger than {MAX_SECRET_BYTES} bytes")
        secret = path.read_bytes()
    except OSError as exc:
        raise Failure(f"cannot read {path}: {exc}") from exc
    if len(secret) < 32:
        raise Failure(f"{path}: marking secret must be at least 32 bytes")
    return secret


def _emit(as_json: bool, data: dict, lines: list[str]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else "\n".join(lines))


def _delta_source(params: MarkingParams, suspect: LazyTensors, backbone: LazyTensors) -> watermark.DeltaSource:
    def read(name: str) -> np.ndarray:
        w, w0 = suspect.get(name), backbone.get(name)
        if w.shape != w0.shape:
            raise Failure(f"{name}: suspect and backbone shapes differ")
        return w - w0

    return read


# ---------------------------------------------------------------------------------------------
# commands


@click.group(name="mark")
def mark_group() -> None:
    """Watermark and fingerprint a core (chaos-FSM keyed), and read marks back.

    \b
    params       public marking parameters (deterministic CBOR) for a backbone and core layout
    apply        mark a core for one device, choosing "both" (watermark + fingerprint) or "fingerprint"
    extract      read the watermark from a core or a merged model (blind)
    fingerprint  compute a fingerprint, optionally compare with a published one
    """


@mark_group.command("params")
@click.option("--secret-file", type=click.Path(path_type=Path), required=True, help="Issuer marking secret (>= 32 bytes).")
@click.option("--backbone-id", required=True, help="Public backbone id (spec/decouple.md).")
@click.option("--core", "core_path", type=click.Path(path_type=Path), required=True, help="Core file giving the layer layout.")
@click.option("--rs-nsym", type=click.IntRange(2, 32), default=10, show_default=True, help="Reed-Solomon parity bytes.")
@click.option("--tau", type=click.FloatRange(0.1, 100.0), default=3.0, show_default=True, help="Embedding margin.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
def params_cmd(secret_file: Path, backbone_id: str, core_path: Path, rs_nsym: int, tau: float, out: Path, as_json: bool) -> None:
    """Write the public marking parameters (no secret inside; see spec/watermark.md)."""
    core = read_core(core_path)
    layers = tuple(LayerSpec(name, *core[name].shape) for name in sorted(core))
    try:
        params = MarkingParams(
            backbone_id, verification_key(_read_secret(secret_file), backbone_id), layers,
            rs_nsym=rs_nsym, tau_milli=round(tau * 1000),
        )
    except ParamsError as exc:
        raise Failure(str(exc)) from exc
    out.write_bytes(params.to_cbor())
    _emit(as_json, {"params": str(out), "digest": params.digest().hex(), "layers": len(layers), "code_bits": params.code_bits},
          [f"wrote {out} ({len(layers)} layers, {params.code_bits} code bits, digest {params.digest().hex()})"])


@mark_group.command("apply")
@click.option("--params", "params_path", type=click.Path(path_type=Path), required=True)
@click.option("--secret-file", type=click.Path(path_type=Path), required=True)
@click.option("--device-uuid", required=True, help="Device UUID, 32 hex digits.")
@click.option("--core", "core_path", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Core file to write (marked or not).")
@click.option("--fingerprint-out", type=click.Path(path_type=Path), help="Where to write the fingerprint CBOR.")
@click.option("--tolerance", type=click.FloatRange(0.0, 10.0), default=0.05, show_default=True,
              help="Largest relative perturbation the watermark may cause (ΔW, or W with --backbone).")
@click.option("--backbone", type=click.Path(path_type=Path), help="Backbone safetensors: measure ‖δΔW‖/‖W‖.")
@click.option("--json", "as_json", is_flag=True)
def apply_cmd(params_path: Path, secret_file: Path, device_uuid: str, core_path: Path, out: Path,
              fingerprint_out: Path | None, tolerance: float, backbone: Path | None, as_json: bool) -> None:
    """Mark a core for one device; record the policy's choice."""
    params = _read_params(params_path)
    try:
        uuid = bytes.fromhex(device_uuid.replace("-", ""))
    except ValueError as exc:
        raise Failure("device UUID must be hex") from exc
    if len(uuid) != 16:
        raise Failure("device UUID must be 16 bytes")
    secret = _read_secret(secret_file)
    if verification_key(secret, params.backbone_id) != params.verification_key:
        raise Failure("the marking secret does not belong to these marking parameters")
    core = read_core(core_path)
    norms = None
    if backbone is not None:
        with LazyTensors(backbone) as bb:
            norms = {lay.name: float(np.linalg.norm(bb.get(lay.name))) for lay in params.layers}
    try:
        result = policy.mark(
            core, payload_for_device(secret, uuid), params,
            policy.Tolerance(max_perturbation=tolerance), backbone_norms=norms,
        )
    except ValueError as exc:
        raise Failure(str(exc)) from exc
    write_core(result.core, out)
    if fingerprint_out is not None:
        fingerprint_out.write_bytes(result.fingerprint.to_cbor())
    rec = result.record
    _emit(as_json, {**rec.to_json(), "out": str(out)},
          [f"mode: {rec.mode} ({rec.reason})", f"{rec.metric}: {rec.measured} (tolerance {rec.tolerance})",
           f"fingerprint hash: {rec.fingerprint_hash}", f"watermark commitment: {rec.watermark_commitment}", f"wrote {out}"])


def _suspect_options(f: object) -> object:
    for opt in reversed([
        click.option("--params", "params_path", type=click.Path(path_type=Path), required=True),
        click.option("--core", "core_path", type=click.Path(path_type=Path), help="Suspect core file."),
        click.option("--suspect", type=click.Path(path_type=Path), help="Suspect merged model (safetensors)."),
        click.option("--backbone", type=click.Path(path_type=Path), help="Public backbone (safetensors), with --suspect."),
        click.option("--json", "as_json", is_flag=True),
    ]):
        f = opt(f)  # type: ignore[operator]
    return f


def _with_source(params: MarkingParams, core_path: Path | None, suspect: Path | None, backbone: Path | None,
                 from_core: object, from_deltas: object) -> object:
    if (core_path is None) == (suspect is None) or (suspect is None) != (backbone is None):
        raise Failure("give either --core, or --suspect with --backbone")
    try:
        if core_path is not None:
            return from_core(read_core(core_path), params)  # type: ignore[operator]
        with LazyTensors(suspect) as s, LazyTensors(backbone) as b:  # type: ignore[arg-type]
            return from_deltas(_delta_source(params, s, b), params)  # type: ignore[operator]
    except ValueError as exc:
        raise Failure(str(exc)) from exc


@mark_group.command("extract")
@_suspect_options
def extract_cmd(params_path: Path, core_path: Path | None, suspect: Path | None, backbone: Path | None, as_json: bool) -> None:
    """Blind watermark read-out; exit 0 with a payload, 1 when no mark is accepted."""
    params = _read_params(params_path)
    ex = _with_source(params, core_path, suspect, backbone, watermark.extract_from_factors, watermark.extract_from_deltas)
    commitment = watermark_commitment(ex.payload, params).hex() if ex.accepted else None
    data = {
        "accepted": ex.accepted, "reason": ex.reason, "payload": ex.payload, "bit_errors": ex.bit_errors,
        "p_value": ex.p_value, "p_value_payload": ex.p_value_payload, "watermark_commitment": commitment,
        "min_abs_z": float(np.min(np.abs(ex.z))), "code_bits": params.code_bits,
    }
    _emit(as_json, data, [f"{k}: {v}" for k, v in data.items()])
    if not ex.accepted:
        raise SystemExit(NO_MARK_EXIT)


@mark_group.command("fingerprint")
@_suspect_options
@click.option("--out", type=click.Path(path_type=Path), help="Write the fingerprint CBOR here.")
@click.option("--compare", "published", type=click.Path(path_type=Path), help="Published fingerprint CBOR to compare with.")
@click.option("--hash", "expected_hash", help="Logged fingerprint hash (hex) the published CBOR must match.")
def fingerprint_cmd(params_path: Path, core_path: Path | None, suspect: Path | None, backbone: Path | None,
                    as_json: bool, out: Path | None, published: Path | None, expected_hash: str | None) -> None:
    """Fingerprint a core or merged model; with --compare exit 0 on a match, 1 otherwise."""
    params = _read_params(params_path)
    fp = _with_source(params, core_path, suspect, backbone, fingerprint.fingerprint_factors, fingerprint.fingerprint_deltas)
    if out is not None:
        out.write_bytes(fp.to_cbor())  # type: ignore[union-attr]
    data: dict = {"fingerprint_hash": fp.hash().hex()}  # type: ignore[union-attr]
    if published is not None:
        try:
            want = bytes.fromhex(expected_hash) if expected_hash else None
            if published.stat().st_size > fingerprint.MAX_FINGERPRINT_BYTES:
                raise Failure(f"{published}: fingerprint too large")
            ref = fingerprint.Fingerprint.from_cbor(published.read_bytes(), want)
            cmp = fingerprint.compare(ref, fp, params)  # type: ignore[arg-type]
        except (OSError, ValueError) as exc:
            raise Failure(str(exc)) from exc
        data.update(distance=cmp.distance, threshold=cmp.threshold, match=cmp.match)
    _emit(as_json, data, [f"{k}: {v}" for k, v in data.items()])
    if published is not None and not data["match"]:
        raise SystemExit(NO_MARK_EXIT)
