"""Witness key files and add-checkpoint request parsing: strict, and refusing what is unsafe."""

from __future__ import annotations

import base64

import pytest

from emshield.tlog.addcheckpoint import AddCheckpointError, parse_add_checkpoint
from emshield.tlog.checkpoint import CosignatureVerifier
from witness.keyfile import WitnessKeyError, parse_witness_key, read_witness_key, write_witness_key


def test_key_file_round_trip_and_refusals(tmp_path) -> None:
    path = tmp_path / "w.key"
    signer = write_witness_key(path, "witness.test/w1")
    assert path.stat().st_mode & 0o777 == 0o600
    again = read_witness_key(path)
    assert again.verifier_key() == signer.verifier_key()
    assert CosignatureVerifier.from_verifier_key(signer.verifier_key()).verify(b"msg\n", again.sign(b"msg\n"))
    with pytest.raises(FileExistsError):
        write_witness_key(path, "witness.test/w1")
    path.chmod(0o644)
    with pytest.raises(WitnessKeyError, match="readable by others"):
        read_witness_key(path)
    text = path.read_text().strip()
    name, kid, key = text.removeprefix("PRIVATE+KEY+").split("+", 2)
    raw = base64.b64decode(key)
    wrong_alg = base64.b64encode(bytes([1]) + raw[1:]).decode()
    for bad, why in [(text.replace("PRIVATE+KEY+", "PRIVATE+KEX+"), "PRIVATE"),
                     (f"PRIVATE+KEY+{name}+{'0' * 8 if kid != '0' * 8 else '1' * 8}+{key}", "key id"),
                     (f"PRIVATE+KEY+{name}+{kid}+{wrong_alg}", "0x04"),
                     (f"PRIVATE+KEY+{name}+{kid}+{key[:-4]}", "0x04"),
                     (f"PRIVATE+KEY+{name}+{kid}+!!", "base64"),
                     (f"PRIVATE+KEY+bad name+{kid}+{key}", "invalid key name")]:
        with pytest.raises(WitnessKeyError, match=why):
            parse_witness_key(bad)


def test_add_checkpoint_body_parsing() -> None:
    h = base64.b64encode(bytes(32)).decode()
    req = parse_add_checkpoint(f"old 5\n{h}\n{h}\n\nnote text\n\n\u2014 sig\n".encode())
    assert (req.old_size, len(req.proof), req.note) == (5, 2, "note text\n\n\u2014 sig\n".encode())
    for body, why in [(b"old 5\n", "empty line"), (b"old -1\n\nx", "old"), (b"old 1 \n\nx", "old"),
                      (b"old 99999999999999999999999\n\nx", "old"), ("old 1\n\u00e9\n\nx".encode(), "ASCII"),
                      (f"old 1\n{h[:-1]}\n\nx".encode(), "base64"),
                      (("old 1\n" + (h + "\n") * 64 + "\nx").encode(), "more than 63"),
                      (b"x" * 70_000, "over")]:
        with pytest.raises(AddCheckpointError, match=why):
            parse_add_checkpoint(body)
