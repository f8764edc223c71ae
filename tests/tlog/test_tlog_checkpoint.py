"""C2SP signed notes and checkpoints: published interop vectors, our fixed-seed vectors, rejections."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from emshield.tlog.checkpoint import (
    MAX_NOTE_SIZE,
    MAX_SIGNATURES,
    Checkpoint,
    CheckpointError,
    CosignatureSigner,
    CosignatureVerifier,
    NoteError,
    NoteSigner,
    NoteVerifier,
    cosign_checkpoint,
    cosignature_timestamp,
    open_note,
    sign_checkpoint,
    sign_note,
    split_note,
    verify_checkpoint,
)
from emshield.tlog.merkle import leaf_hash, root_from_leaf_hashes

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "spec" / "vectors" / "tlog" / "notes.json")
                     .read_text(encoding="utf-8"))
EM = "\u2014"
ORIGIN = "log.emshield.example/test"


@pytest.fixture(scope="module")
def log() -> NoteSigner:
    return NoteSigner.from_private_key(ORIGIN, Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


@pytest.fixture(scope="module")
def note(log: NoteSigner) -> bytes:
    return sign_checkpoint(Checkpoint(ORIGIN, 5, hashlib.sha256(b"root").digest()), log)


# --- published vectors -----------------------------------------------------------------------------


@pytest.mark.parametrize("vec", VECTORS["interop"], ids=lambda v: v["verifier_key"].split("+")[0])
def test_published_notes_verify(vec: dict) -> None:
    v = NoteVerifier.from_verifier_key(vec["verifier_key"])
    assert v.verifier_key() == vec["verifier_key"]
    text, good = open_note(vec["note"].encode(), [v])
    assert text == vec["text"].encode() and good == [v]
    if vec["signer_key"]:
        s = NoteSigner.from_signer_key(vec["signer_key"])
        assert s.signer_key() == vec["signer_key"] and s.verifier_key() == vec["verifier_key"]
        assert sign_note(vec["text"].encode(), [s]) == vec["note"].encode()  # Ed25519 is deterministic


def test_key_id_is_the_signed_note_formula() -> None:
    vkey = VECTORS["interop"][0]["verifier_key"]
    name, kid, key64 = vkey.split("+", 2)
    raw = base64.b64decode(key64)
    assert hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() == kid
    assert NoteVerifier.from_verifier_key(vkey).key_id.hex() == kid


def test_our_checkpoint_vector_byte_for_byte() -> None:
    vec = VECTORS["checkpoint"]
    leaves = [leaf_hash(bytes.fromhex(h)) for h in vec["leaves_hex"]]
    root = root_from_leaf_hashes(leaves)
    assert root.hex() == vec["root_hex"]
    signer = NoteSigner.from_private_key(vec["origin"], Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vec["seed_hex"])))
    assert signer.signer_key() == vec["signer_key"] and signer.verifier_key() == vec["verifier_key"]
    cp = Checkpoint(vec["origin"], vec["size"], root)
    assert cp.body().decode() == vec["body"]
    assert sign_checkpoint(cp, signer).decode() == vec["note"]
    # Independently of our note code: the signature line is Ed25519 over the body by that key.
    line = vec["note"].split("\n\n")[1]
    assert line.startswith(EM + " " + vec["origin"] + " ")
    raw = base64.b64decode(line.split(" ")[2])
    assert raw[:4] == signer.key_id
    Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vec["seed_hex"])).public_key().verify(raw[4:], vec["body"].encode())
    assert verify_checkpoint(vec["note"].encode(), NoteVerifier.from_verifier_key(vec["verifier_key"])) == cp


def test_cosignature_vector() -> None:
    vec, cpv = VECTORS["cosignature"], VECTORS["checkpoint"]
    witness_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vec["seed_hex"]))
    w = CosignatureVerifier.from_verifier_key(vec["verifier_key"])
    log_v = NoteVerifier.from_verifier_key(cpv["verifier_key"])
    text, good = open_note(vec["note"].encode(), [log_v, w])
    assert good == [log_v, w]
    # Independently: the witness line is key ID || u64 timestamp || Ed25519 over the
    # c2sp.org/tlog-cosignature message, and the key ID uses signature type 0x04.
    line = vec["note"].rstrip("\n").split("\n")[-1]
    raw = base64.b64decode(line.split(" ")[2])
    pub = witness_key.public_key()
    assert raw[:4] == hashlib.sha256(vec["name"].encode() + b"\n\x04" + pub.public_bytes_raw()).digest()[:4]
    assert struct.unpack(">Q", raw[4:12])[0] == vec["timestamp"] == cosignature_timestamp(raw[4:])
    pub.verify(raw[12:], b"cosignature/v1\ntime %d\n" % vec["timestamp"] + text)
    signer = CosignatureSigner(vec["name"], witness_key, clock=lambda: vec["timestamp"])
    assert cosign_checkpoint(cpv["note"].encode(), log_v, signer).decode() == vec["note"]


# --- checkpoint bodies ---------------------------------------------------------------------------


def test_checkpoint_round_trip_with_extensions() -> None:
    cp = Checkpoint(ORIGIN, 0, bytes(32), ("ext one", "ext/two"))
    assert Checkpoint.parse(cp.body()) == cp
    assert cp.body() == f"{ORIGIN}\n0\n{'A' * 43}=\next one\next/two\n".encode()


@pytest.mark.parametrize("body", [
    b"", b"o\n1\n", b"o\n1\n" + base64.b64encode(bytes(32)),  # too few lines / no final newline
    b"\n1\n" + base64.b64encode(bytes(32)) + b"\n",  # empty origin
    b"o\n01\n" + base64.b64encode(bytes(32)) + b"\n",  # leading zero
    b"o\n+1\n" + base64.b64encode(bytes(32)) + b"\n",
    b"o\n1_0\n" + base64.b64encode(bytes(32)) + b"\n",
    b"o\n-1\n" + base64.b64encode(bytes(32)) + b"\n",
    "o\n\u0663\n".encode() + base64.b64encode(bytes(32)) + b"\n",  # non-ASCII digit
    b"o\n1\n" + base64.b64encode(bytes(31)) + b"\n",  # short root
    b"o\n1\n" + base64.b64encode(bytes(32)).rstrip(b"=") + b"\n",  # unpadded base64
    b"o\n1\n" + base64.urlsafe_b64encode(b"\xff" * 32) + b"\n",  # URL-safe alphabet
    b"o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n",  # non-canonical trailing bits
    b"o\n1\n" + base64.b64encode(bytes(32)) + b"\n\next\n",  # empty extension line
    b"o\n1\n" + base64.b64encode(bytes(32)) + b"\nex\tt\n",  # control character
    b"o\xff\n1\n" + base64.b64encode(bytes(32)) + b"\n",  # invalid UTF-8
])
def test_checkpoint_parse_rejects(body: bytes) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.parse(body)


def test_checkpoint_fields_are_validated() -> None:
    for bad in [("", 1, bytes(32)), ("a\nb", 1, bytes(32)), (ORIGIN, -1, bytes(32)), (ORIGIN, True, bytes(32)),
                (ORIGIN, 1, bytes(31))]:
        with pytest.raises(CheckpointError):
            Checkpoint(*bad)
    with pytest.raises(CheckpointError):
        Checkpoint(ORIGIN, 1, bytes(32), ("",))


# --- verification failures -------------------------------------------------------------------------


def test_verify_checkpoint_accepts_and_checks_origin(log: NoteSigner, note: bytes) -> None:
    cp = verify_checkpoint(note, log.verifier)
    assert cp.size == 5 and cp.origin == ORIGIN
    assert verify_checkpoint(note, log.verifier, origin=ORIGIN) == cp
    with pytest.raises(CheckpointError, match="origin"):
        verify_checkpoint(note, log.verifier, origin="other.example/log")


def test_wrong_key_is_rejected(note: bytes) -> None:
    other = NoteSigner.generate(ORIGIN)  # same name, other key: a different key ID, so unknown
    with pytest.raises(CheckpointError, match="no signature from a known key"):
        verify_checkpoint(note, other.verifier)


def test_known_key_with_bad_signature_rejects_the_note(log: NoteSigner, note: bytes) -> None:
    text, sigs = split_note(note)
    forged = sigs[0].signature[:-1] + bytes([sigs[0].signature[-1] ^ 1])
    bad = text + b"\n" + f"{EM} {log.name} {base64.b64encode(log.key_id + forged).decode()}\n".encode()
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(bad, [log.verifier])
    tampered = note.replace(b"\n5\n", b"\n6\n")
    with pytest.raises(CheckpointError, match="invalid signature"):
        verify_checkpoint(tampered, log.verifier)


def test_unknown_signatures_are_ignored_not_trusted(log: NoteSigner, note: bytes) -> None:
    stranger = NoteSigner.generate("stranger.example/key")
    both = sign_note(split_note(note)[0], [stranger], existing=split_note(note)[1])
    text, good = open_note(both, [log.verifier])
    assert good == [log.verifier]
    assert verify_checkpoint(both, log.verifier).size == 5
    only_stranger = sign_note(split_note(note)[0], [stranger])
    with pytest.raises(CheckpointError):
        verify_checkpoint(only_stranger, log.verifier)
    # A line with a known key's name but another key ID, and garbage signature, is just unknown.
    junk = note + f"{EM} {log.name} {base64.b64encode(b'ABCD' + bytes(64)).decode()}\n".encode()
    assert open_note(junk, [log.verifier])[1] == [log.verifier]


def _line(name: str, raw: bytes) -> bytes:
    return f"{EM} {name} {base64.b64encode(raw).decode()}\n".encode()


@pytest.mark.parametrize("case", [
    "no-separator", "no-sig-lines", "no-final-newline", "hyphen-not-em-dash", "bad-base64", "short-sig",
    "noncanonical-base64", "space-in-name", "plus-in-name", "control-char", "bad-utf8", "too-big",
    "too-many-sigs", "duplicate-line", "text-only",
])
def test_malformed_notes_are_rejected(case: str, log: NoteSigner, note: bytes) -> None:
    text, sigs = split_note(note)
    good_line = sigs[0].line().encode()
    bad = {
        "no-separator": text + good_line,
        "no-sig-lines": text + b"\n",
        "no-final-newline": note[:-1],
        "hyphen-not-em-dash": text + b"\n" + good_line.replace(EM.encode(), b"-"),
        "bad-base64": text + b"\n" + good_line[:-3] + b"!=\n",
        "short-sig": text + b"\n" + _line(log.name, log.key_id),
        "noncanonical-base64": text + b"\n" + f"{EM} x AAAAAB==\n".encode(),
        "space-in-name": text + b"\n" + _line("a\u00a0b", bytes(68)),
        "plus-in-name": text + b"\n" + _line("a+b", bytes(68)),
        "control-char": text.replace(b"\n5\n", b"\n5\r\n") + b"\n" + good_line,
        "bad-utf8": text + b"\n" + good_line.replace(log.name.encode(), b"\xc3\x28"),
        "too-big": text + b"x" * MAX_NOTE_SIZE + b"\n\n" + good_line,
        "too-many-sigs": text + b"\n" + good_line + b"".join(_line(f"k{i}", bytes(68)) for i in range(MAX_SIGNATURES)),
        "duplicate-line": note + good_line,
        "text-only": text,
    }[case]
    with pytest.raises(NoteError):
        open_note(bad, [log.verifier])


@pytest.mark.parametrize("vkey", [
    "", "PeterNeumann", "PeterNeumann+c74f20a3", "PeterNeumann+c74f20a3+",
    "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # we write lowercase only
    "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # key ID mismatch
    "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",  # wrong length (Go's test)
    "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # unknown algorithm (Go's test)
    "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",  # bad base64
])
def test_bad_verifier_keys(vkey: str) -> None:
    with pytest.raises(NoteError):
        NoteVerifier.from_verifier_key(vkey)


def test_every_truncation_and_bump_of_a_key_is_rejected() -> None:
    """Go's TestNewVerifier/TestNewSigner manglings: every substring and every byte +1 fails."""
    for key, parse in [(VECTORS["interop"][0]["verifier_key"], NoteVerifier.from_verifier_key),
                       (VECTORS["interop"][0]["signer_key"], NoteSigner.from_signer_key)]:
        variants = {key[i:j] for i in range(len(key)) for j in range(i + 1, len(key) + 1)} - {key}
        variants |= {key[:i] + chr(ord(key[i]) + 1) + key[i + 1:] for i in range(len(key))}
        for k in sorted(variants)[:: max(1, len(variants) // 400)]:
            with pytest.raises((NoteError, ValueError)):
                parse(k)


def test_cosignature_key_is_not_a_note_key() -> None:
    vkey = VECTORS["cosignature"]["verifier_key"]
    with pytest.raises(NoteError, match="algorithm"):
        NoteVerifier.from_verifier_key(vkey)
    with pytest.raises(NoteError, match="algorithm"):
        CosignatureVerifier.from_verifier_key(VECTORS["checkpoint"]["verifier_key"])


def test_cosigning_needs_the_log_signature(log: NoteSigner, note: bytes) -> None:
    w = CosignatureSigner("w.example/1", Ed25519PrivateKey.from_private_bytes(bytes(32)), clock=lambda: 100)
    cosigned = cosign_checkpoint(note, log.verifier, w)
    assert open_note(cosigned, [log.verifier, w.verifier])[1] == [log.verifier, w.verifier]
    with pytest.raises(CheckpointError):
        cosign_checkpoint(note, NoteSigner.generate(ORIGIN).verifier, w)
    # A cosignature over other text fails with the witness key known.
    other = sign_checkpoint(Checkpoint(ORIGIN, 6, bytes(32)), log)
    wline = cosigned.rstrip(b"\n").split(b"\n")[-1] + b"\n"
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(other + wline, [log.verifier, w.verifier])


def test_signing_rules(log: NoteSigner) -> None:
    for text in [b"", b"no newline", b"ends blank\n\n", b"\n", b"ctl\x01\n", b"\xff\n"]:
        with pytest.raises(NoteError):
            sign_note(text, [log])
    with pytest.raises(NoteError):
        sign_note(b"x\n", [log, log])
    with pytest.raises(NoteError):
        sign_note(b"x\n", [])
    with pytest.raises(CheckpointError, match="origin"):
        sign_checkpoint(Checkpoint("another.example/log", 0, bytes(32)), log)
    with pytest.raises(NoteError):
        NoteSigner.generate("bad name")
    # Empty lines inside the text are allowed: the last blank line separates the signatures.
    assert open_note(sign_note(b"a\n\nb\n", [log]), [log.verifier])[0] == b"a\n\nb\n"


def test_key_strings_round_trip() -> None:
    s = NoteSigner.generate("example.org/log")
    again = NoteSigner.from_signer_key(s.signer_key())
    assert again.verifier_key() == s.verifier_key() and again.key_id == s.key_id and len(s.key_id) == 4
    v = NoteVerifier.from_verifier_key(s.verifier_key())
    assert v.verify(b"m", s.sign(b"m")) and not v.verify(b"n", s.sign(b"m"))
    assert isinstance(v.public_key, Ed25519PublicKey)
