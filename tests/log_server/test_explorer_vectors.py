"""The explorer's verification modules (log_server/explorer/static/verify/*.js), run in real
Chromium, against the same vectors the Python core is checked with: every RFC 9162 proof vector
(rejections included), the signed-note and checkpoint vectors with Go's key-mangling test, every
entry vector (valid, malformed, bad signatures, batches), the tile vectors, and real marking
parameters and fingerprints. WebCrypto's Ed25519 is exercised by every signature here."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from _kit.browser import chromium
from _kit.logs import ServerProcess, init_log
from _kit.paths import VECTORS
from emshield.marking.fingerprint import Fingerprint
from emshield.marking.params import LayerSpec, MarkingParams
from emshield.tlog import merkle

PROOFS = VECTORS / "tlog" / "rfc9162-proofs"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    files = init_log(tmp_path_factory.mktemp("explorer-vectors"))
    server = ServerProcess(files.db, workers=1, threads=2).start()
    try:
        with chromium() as browser:
            pg = browser.new_page()
            pg.goto(server.url + "/checkpoint")  # any page of the log's origin: a secure context
            yield pg
    finally:
        server.stop()


def run(page, body: str, arg):
    """Evaluate ``body`` (an async function body seeing ``m`` = the verify modules and ``arg``)."""
    return page.evaluate(
        """async ([body, arg]) => {
            const base = "/explore/static/verify/";
            const m = {};
            for (const name of ["bytes", "cbor", "merkle", "note", "entry", "tiles", "log", "webcrypto"]) {
                Object.assign(m, await import(base + name + ".js"));
            }
            return await (new Function("m", "arg", "return (async () => {" + body + "})()"))(m, arg);
        }""", [body, arg])


def test_browser_has_webcrypto_ed25519(page) -> None:
    assert run(page, "return await m.webCryptoProblem();", None) is None


def test_rfc9162_proof_vectors(page) -> None:
    cases = [json.loads(p.read_text()) | {"file": str(p.relative_to(PROOFS))} for p in sorted(PROOFS.rglob("*.json"))]
    assert len(cases) == 196
    got = run(page, """
        const b = (s) => m.fromBase64(s, "vector");
        const out = {};
        for (const v of arg) {
            const proof = (v.proof || []).map(b);
            try {
                if ("treeSize" in v) await m.verifyInclusion(b(v.leafHash), v.leafIdx, v.treeSize, proof, b(v.root));
                else await m.verifyConsistency(v.size1, v.size2, proof, b(v.root1), b(v.root2));
                out[v.file] = "accept";
            } catch (e) {
                if (!(e instanceof m.ProofError)) throw e;
                out[v.file] = "reject";
            }
        }
        return out;""", cases)
    want = {c["file"]: "reject" if c["wantErr"] else "accept" for c in cases}
    assert got == want
    assert sum(v == "accept" for v in want.values()) >= 10


def test_tree_levels_and_paths_equal_the_python_core(page) -> None:
    """MTH and every leaf's path of trees of 1..70 leaves (the tile code's inner paths)."""
    trees = []
    for n in range(1, 71):
        leaves = [merkle.leaf_hash(b"leaf %d" % i) for i in range(n)]
        levels = merkle.tree_levels(leaves)
        trees.append({"leaves": [h.hex() for h in leaves], "root": levels[-1][0].hex(),
                      "paths": [[h.hex() for h in p] for p in merkle.inclusion_paths(levels)]})
    got = run(page, """
        const out = [];
        for (const t of arg) {
            const levels = await m.treeLevels(t.leaves.map((h) => m.fromHex(h, "leaf")));
            const paths = t.leaves.map((_, j) => m.pathFromLevels(levels, j).map(m.toHex));
            out.push({root: m.toHex(levels[levels.length - 1][0]), paths});
        }
        return out;""", trees)
    assert got == [{"root": t["root"], "paths": t["paths"]} for t in trees]


NOTES = json.loads((VECTORS / "tlog" / "notes.json").read_text())


def test_signed_note_vectors(page) -> None:
    got = run(page, """
        const enc = (s) => m.utf8.encode(s);
        const out = {interop: []};
        for (const v of arg.interop) {
            const key = await m.parseVerifierKey(v.verifier_key, m.SIG_ED25519);
            const {text, sigs} = m.splitNote(enc(v.note));
            const sig = sigs.find((s) => s.name === key.name && m.equal(s.keyId, key.keyId));
            out.interop.push([new TextDecoder().decode(text) === v.text,
                              await m.ed25519Verify(key.publicKey, sig.signature, text)]);
        }
        const cp = arg.checkpoint;
        const logKey = await m.parseVerifierKey(cp.verifier_key, m.SIG_ED25519);
        const witness = await m.parseVerifierKey(arg.cosignature.verifier_key, m.SIG_COSIGNATURE);
        const plain = await m.verifyCheckpointNote(enc(cp.note), logKey, []);
        const cos = await m.verifyCheckpointNote(enc(arg.cosignature.note), logKey, [witness]);
        const unpinned = await m.verifyCheckpointNote(enc(arg.cosignature.note), logKey, []);
        out.checkpoint = [plain.checkpoint.origin, plain.checkpoint.size, m.toHex(plain.checkpoint.root)];
        out.cosigned = cos.witnesses.map((w) => [w.name, w.state, Number(w.timestamp)]);
        out.unpinned = unpinned.witnesses.map((w) => w.state);
        // A flipped signature byte, a changed size line, another key: rejected.
        const rejects = [];
        const note = enc(cp.note);
        const flipped = note.slice(); flipped[flipped.length - 3] ^= 1;
        const resized = enc(cp.note.replace("\\n8\\n", "\\n9\\n"));
        const other = await m.parseVerifierKey(arg.interop[0].verifier_key, m.SIG_ED25519);
        for (const [n, k] of [[flipped, logKey], [resized, logKey], [note, other]]) {
            try { await m.verifyCheckpointNote(n, k, []); rejects.push(false); }
            catch (e) { rejects.push(e instanceof m.FormatError); }
        }
        out.rejects = rejects;
        // Go's key-mangling test: every proper substring and every character + 1 must be refused.
        let accepted = 0;
        for (const v of [...arg.interop.map((i) => i.verifier_key), cp.verifier_key]) {
            const bad = new Set();
            for (let i = 0; i < v.length; i++) for (let j = i + 1; j <= v.length; j++) if (j - i < v.length) bad.add(v.slice(i, j));
            for (let i = 0; i < v.length; i++) bad.add(v.slice(0, i) + String.fromCharCode(v.charCodeAt(i) + 1) + v.slice(i + 1));
            for (const k of bad) {
                try { await m.parseVerifierKey(k, m.SIG_ED25519); accepted++; } catch (e) { if (!(e instanceof m.FormatError)) throw e; }
            }
        }
        out.mangled_accepted = accepted;
        return out;""", NOTES)
    assert got["interop"] == [[True, True]] * len(NOTES["interop"])
    cp = NOTES["checkpoint"]
    assert got["checkpoint"] == [cp["origin"], cp["size"], cp["root_hex"]]
    assert got["cosigned"] == [[NOTES["cosignature"]["name"], "pass", NOTES["cosignature"]["timestamp"]]]
    assert got["unpinned"] == ["unpinned"]
    assert got["rejects"] == [True, True, True]
    assert got["mangled_accepted"] == 0


ENTRIES = json.loads((VECTORS / "tlog" / "entries.json").read_text())


def test_entry_vectors(page) -> None:
    got = run(page, """
        const h = (s) => m.fromHex(s, "vector");
        const pk = h(arg.issuer_public_key_hex);
        const out = {valid: [], malformed: [], bad: [], batch: []};
        out.key_id = m.toHex(await m.issuerKeyId(pk));
        for (const v of arg.valid) {
            const e = m.decodeEntry(h(v.cbor_hex));
            out.valid.push([e.known, e.type, m.toHex(e.signingBytes), m.toHex(await m.leafHash(h(v.cbor_hex))),
                            await m.verifyEntrySignature(e, pk)]);
        }
        for (const v of arg.malformed) {
            try { const e = m.decodeEntry(h(v.cbor_hex)); out.malformed.push(e.known ? "accepted" : "unknown"); }
            catch (e) { if (!(e instanceof m.FormatError)) throw e; out.malformed.push("rejected"); }
        }
        for (const v of arg.bad_signatures) {
            let r;
            try { r = await m.verifyEntrySignature(m.decodeEntry(h(v.cbor_hex)), h(v.public_key_hex)); }
            catch (e) { if (!(e instanceof m.FormatError)) throw e; r = "rejected"; }
            out.bad.push(r);
        }
        for (const b of arg.batch) {
            for (const v of b.entries) {
                const e = m.decodeEntry(h(v.cbor_hex));
                out.batch.push([e.batch.index, e.batch.size, m.toHex(e.signingBytes), await m.verifyEntrySignature(e, pk)]);
            }
        }
        return out;""", ENTRIES)
    assert got["key_id"] == ENTRIES["issuer_key_id_hex"]
    assert got["valid"] == [[True, v["type"], v["signing_bytes_hex"], v["leaf_hash_hex"], True] for v in ENTRIES["valid"]]
    # Rejected, or (unknown version or type) not taken for an entry of spec/entry.md.
    by_desc = dict(zip([v["desc"] for v in ENTRIES["malformed"]], got["malformed"]))
    assert "accepted" not in by_desc.values(), by_desc
    assert {d for d, r in by_desc.items() if r == "unknown"} == {"unknown version", "unknown type"}
    assert all(r in (False, "rejected") for r in got["bad"]), got["bad"]
    assert got["batch"] == [[v["index"], b["size"], v["signing_bytes_hex"], True]
                            for b in ENTRIES["batch"] for v in b["entries"]]


TILES = json.loads((VECTORS / "tiles" / "tiles.json").read_text())


def test_tile_vectors(page) -> None:
    small = [p for p in TILES["paths"] if p["index"] < 2**53]
    got = run(page, """
        const paths = arg.paths.map((p) => p.level === null
            ? m.bundle(p.index, p.index * 256 + p.width).path
            : null);
        const bundle = arg.bundle;
        const leaves = m.decodeBundle(m.fromHex(bundle.hex, "bundle"), 3, bundle.path);
        let truncated;
        try { m.decodeBundle(m.fromHex(bundle.hex.slice(0, -2), "bundle"), 3, "t"); truncated = "accepted"; }
        catch (e) { truncated = e instanceof m.FormatError ? "rejected" : String(e); }
        return {paths, indices: arg.paths.map((p) => m.encodeIndex(p.index)),
                leaves: leaves.map((l) => new TextDecoder().decode(l)), truncated};""",
        {"paths": small, "bundle": TILES["tree"]["bundles"][1]})
    for p, path, index in zip(small, got["paths"], got["indices"]):
        assert p["path"].endswith(index if p["width"] == 256 else f"{index}.p/{p['width']}"), p
        if p["level"] is None:
            assert path == p["path"]
    assert got["leaves"] == ["emshield tile vector 0", "emshield tile vector 1", "emshield tile vector 2"]
    assert got["truncated"] == "rejected"


def test_marking_params_and_fingerprint(page) -> None:
    params = MarkingParams("tiny-llama/abc", hashlib.sha256(b"vk").digest(),
                           (LayerSpec("model.layers.0.self_attn.q_proj.weight", 64, 64),
                            LayerSpec("model.layers.0.self_attn.v_proj.weight", 32, 64)))
    fp = Fingerprint(params.digest(), (("model.layers.0.self_attn.q_proj.weight", (1, 2, 3)),
                                       ("model.layers.0.self_attn.v_proj.weight", (4, 5, 16777215))))
    assert params.to_cbor().endswith(b"\x18\x96")  # the last item: fp_threshold_milli = 150
    bad_params = params.to_cbor()[:-2] + b"\x19\x00\x96"  # the same value in a non-shortest head
    got = run(page, """
        const h = (s) => m.fromHex(s, "vector");
        const p = m.decodeMarkingParams(h(arg.params));
        const f = m.decodeFingerprint(h(arg.fp));
        let bad;
        try { m.decodeMarkingParams(h(arg.bad)); bad = "accepted"; } catch (e) { bad = e instanceof m.FormatError; }
        let notParams;
        try { m.decodeMarkingParams(h("a1617601")); notParams = "accepted"; } catch (e) { notParams = e.message; }
        return {p: [p.backbone_id, m.toHex(p.vk), p.layers, p.rs_nsym, p.tau_milli, p.accept_log10_p, p.fp_k,
                    p.fp_probes, p.fp_threshold_milli],
                digest: m.toHex(await m.markingParamsDigest(h(arg.params))),
                fp: [m.toHex(f.params), f.layers], fpHash: m.toHex(await m.fingerprintHash(h(arg.fp))), bad, notParams};
        """, {"params": params.to_cbor().hex(), "fp": fp.to_cbor().hex(), "bad": bad_params.hex()})
    assert got["p"] == [params.backbone_id, params.verification_key.hex(),
                        [{"name": lay.name, "out": lay.out_features, "in": lay.in_features} for lay in params.layers],
                        10, 3000, -9, 8, 16, 150]
    assert got["digest"] == params.digest().hex()
    assert got["fp"] == [params.digest().hex(), [{"name": n, "features": list(f)} for n, f in fp.layers]]
    assert got["fpHash"] == fp.hash().hex()
    assert got["bad"] is True
    assert "exactly the fields" in got["notParams"]


def test_base64_is_strict(page) -> None:
    good = base64.b64encode(b"\x01\x02\x03\x04").decode()
    got = run(page, """
        const out = [];
        for (const s of arg) { try { m.fromBase64(s, "x"); out.push(true); } catch (e) { out.push(false); } }
        return out;""", [good, "AQIDBA", "AQIDBB==", " AQIDBA==", "AQID\\nBA==", "AQIDBA=="])
    assert got == [True, False, False, False, False, True]
