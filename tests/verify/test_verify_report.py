"""`emshield-verify --report`: the forensic report (spec/report.md), one per verdict kind, rendered in
real headless Chromium (Debian's, through Playwright) with every request but the file's own refused
and recorded; the plots must be there and the proof values must be the log's own."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from _kit.browser import VIEWPORT, chromium, screenshot_dir
from _kit.cores import tiny_core
from emshield.model.adapter import write_peft_adapter
from emshield.model.merge import write_merged
from emshield.tlog import merkle
from verifier.report.html import inclusion_steps
from verifier.report.data import InclusionRecord
from verifier.verify.cli import main as verify_main

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with chromium() as b:
        yield b


def verify_with_report(world, suspect: Path, out: Path, *extra: str, bundle: Path | None = None) -> tuple[int, dict, Path]:
    report = out / "report.html"
    where = ["--bundle", str(bundle)] if bundle is not None else ["--log", world.url]
    args = [str(suspect), *where, "--log-key", world.log_key, "--json", "--report", str(report), *extra]
    result = CliRunner().invoke(verify_main, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    verdict = json.loads(result.stdout)
    assert f"report written to {report}" in result.stderr
    return result.exit_code, verdict, report


def open_offline(browser, report: Path, shot: str):
    """The report in Chromium; returns (page, requests refused). Only the file itself may load."""
    page = browser.new_page(viewport=VIEWPORT)
    refused: list[str] = []
    url = report.resolve().as_uri()

    def route(r) -> None:
        if r.request.url == url:
            r.continue_()
        else:
            refused.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(url, wait_until="load")
    page.screenshot(path=str(screenshot_dir("report") / f"{shot}.png"), full_page=False)
    return page, refused


def plots(page) -> set[str]:
    return set(page.eval_on_selector_all("div.plot[data-plot] > svg", "els => els.map(e => e.parentElement.dataset.plot)"))


def assert_proofs_are_the_logs(world, page, verdict: dict, leaves: list[tuple[int, str]]) -> None:
    """Every listed leaf's audit path, as the log serves it for the verdict's tree size, is in the
    report, with its leaf hash, index and the checkpoint root, and the report's recomputation agrees."""
    text = page.inner_text("body")
    size, root = verdict["log"]["tree_size"], verdict["log"]["root_hash"]
    assert root in text and str(size) in text
    for index, leaf_hash in leaves:
        proof = world.client.inclusion_proof_by_hash(bytes.fromhex(leaf_hash), size)
        assert proof.index == index and leaf_hash in text
        merkle.verify_inclusion(proof.leaf_hash, index, size, list(proof.hashes), bytes.fromhex(root))
        for h in proof.hashes:
            assert h.hex() in text
    assert "≠ checkpoint root" not in text
    assert text.count("= checkpoint root") >= len(leaves)


def test_device_report(world, tmp_path: Path, browser) -> None:
    target = world.issued[1]
    code, verdict, report = verify_with_report(world, write_peft_adapter(target.core, tmp_path / "adapter"), tmp_path)
    assert code == 0 and verdict["verdict"] == "device"
    page, refused = open_offline(browser, report, "device")
    assert refused == []
    assert plots(page) == {"bits", "p-value", "distances", "layers"}
    sentence = page.inner_text("#verdict")
    assert f"device {target.device}" in sentence and f"leaf {target.index}" in sentence
    m = verdict["device"]
    assert_proofs_are_the_logs(world, page, verdict, [(m["leaf_index"], m["leaf_hash"])])
    text = page.inner_text("body")
    assert m["watermark"]["watermark_commitment"] in text
    assert f"emshield-verify {tmp_path / 'adapter'}" in text and "sha256sum" in text
    note = world.client.checkpoint_note().decode()
    assert verdict["log"]["origin"] in page.inner_text("#checkpoint") and note.splitlines()[0] in text
    assert "verified with the pinned log key" in text
    page.close()


def test_core_report(world, tmp_path: Path, browser) -> None:
    target = world.issued[3]
    code, verdict, report = verify_with_report(world, write_peft_adapter(target.core, tmp_path / "adapter"), tmp_path)
    assert code == 6 and verdict["verdict"] == "core"
    page, refused = open_offline(browser, report, "core")
    assert refused == []
    assert {"distances", "layers", "p-value"} <= plots(page)
    sentence = page.inner_text("#verdict")
    assert "no device is named" in sentence and str(target.device) not in sentence
    assert "Which device the suspect came from" in page.inner_text("body")
    assert_proofs_are_the_logs(world, page, verdict, [(i["leaf_index"], i["leaf_hash"])
                                                      for i in verdict["core"]["issuances"]])
    page.close()


def test_no_match_report(world, tmp_path: Path, browser) -> None:
    suspect = write_merged(world.backbone, tiny_core(99), tmp_path / "merged")
    code, verdict, report = verify_with_report(world, suspect, tmp_path, "--backbone", str(world.backbone))
    assert code == 1 and verdict["verdict"] == "none"
    page, refused = open_offline(browser, report, "none")
    assert refused == []
    assert {"bits", "p-value", "distances", "layers"} <= plots(page)
    sentence = page.inner_text("#verdict")
    assert sentence.endswith(f"{verdict['reason']}.") and "Nothing in the log" in sentence
    text = page.inner_text("body")
    assert "nobody is named" in text and "No issuance is named: no inclusion proof to show." in text
    # a folder suspect: its per-file digests and the digest of their sha256sum listing
    assert "./model.safetensors" in text or "sha256sum" in text
    page.close()


def test_offline_report_shows_the_bundles_proofs(world, tmp_path: Path, browser) -> None:
    """Air-gapped (--bundle): the proofs shown are the bundle's tlog-proofs, which recompute the
    roots of the bundle's checkpoints."""
    target = world.issued[0]
    code, verdict, report = verify_with_report(world, write_peft_adapter(target.core, tmp_path / "adapter"), tmp_path,
                                               bundle=target.bundle)
    assert code == 0 and verdict["verdict"] == "device" and verdict["log"]["mode"] == "offline"
    page, refused = open_offline(browser, report, "offline")
    assert refused == []
    text = page.inner_text("body")
    assert text.count("= checkpoint root") == 2 and "≠ checkpoint root" not in text
    assert f"--bundle {target.bundle}" in text
    page.close()


def test_static_mirror_report_has_audit_paths_from_the_tiles(world, tmp_path: Path, browser) -> None:
    """A static tile mirror has no proof endpoint: the report's audit paths come from its hash
    tiles, and they are the log's own."""
    from _kit.logs import StaticSite, wait_for_mirror
    from emshield.tlog.checkpoint import NoteVerifier

    size = world.client.verified_checkpoint(NoteVerifier.from_verifier_key(world.log_key)).size
    wait_for_mirror(world.tiles, size)
    static = StaticSite(directory=world.tiles).start()
    try:
        target = world.issued[2]
        report = tmp_path / "report.html"
        result = CliRunner().invoke(verify_main, [str(write_peft_adapter(target.core, tmp_path / "adapter")), "--log",
                                                  static.url, "--log-key", world.log_key, "--json", "--report",
                                                  str(report)])
        verdict = json.loads(result.stdout)
    finally:
        static.stop()
    assert result.exit_code == 0 and verdict["log"]["mode"] == "static tiles"
    page, refused = open_offline(browser, report, "static")
    assert refused == []
    text = page.inner_text("body")
    assert text.count("computed from the mirror's hash tiles") == 2  # the registration and the issuance
    m = verdict["device"]
    assert_proofs_are_the_logs(world, page, verdict, [(m["leaf_index"], m["leaf_hash"])])
    page.close()


def test_inclusion_steps_recompute_the_root() -> None:
    """The report's step-by-step recomputation agrees with the log core's verifier on every leaf of
    trees of 1..9 leaves (RFC 9162 §2.1.3.2), border steps included."""
    for size in range(1, 10):
        leaves = [merkle.leaf_hash(bytes([n])) for n in range(size)]
        levels = merkle.tree_levels(leaves)
        root = merkle.root_from_leaf_hashes(leaves)
        for index, path in enumerate(merkle.inclusion_paths(levels)):
            record = InclusionRecord("t", index, size, leaves[index].hex(), tuple(h.hex() for h in path), root.hex(), "")
            steps, got = inclusion_steps(record)
            assert got == root.hex() and len(steps) == len(path)
            assert not steps or steps[-1][2] == root.hex()


def test_report_to_a_missing_folder_is_refused_before_any_work(world, tmp_path: Path) -> None:
    result = CliRunner().invoke(verify_main, [str(tmp_path / "absent"), "--log", world.url, "--log-key", world.log_key,
                                              "--report", str(tmp_path / "no" / "r.html")])
    assert result.exit_code == 2 and "--report: the folder" in result.stderr and "Traceback" not in result.stderr


def test_pdf_is_printed_by_chromium(world, tmp_path: Path) -> None:
    """The console script in its own process (Playwright's sync API runs one per thread, and this
    module's browser holds this one)."""
    target = world.issued[3]
    pdf, html = tmp_path / "report.pdf", tmp_path / "report.html"
    proc = subprocess.run([str(BIN / "emshield-verify"), str(write_peft_adapter(target.core, tmp_path / "adapter")),
                           "--log", world.url, "--log-key", world.log_key, "--report", str(html), "--report-pdf", str(pdf)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 6, proc.stderr
    assert f"report written to {pdf}" in proc.stderr
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and len(data) > 10_000


def test_pdf_without_chromium_is_a_clear_error_not_a_skip(world, tmp_path: Path, monkeypatch) -> None:
    from verifier.report import pdf

    monkeypatch.setattr(pdf, "CHROMIUM_PATHS", (tmp_path / "no-chromium",))
    monkeypatch.setenv("PATH", str(tmp_path))
    out = tmp_path / "r.pdf"
    result = CliRunner().invoke(verify_main, [str(world.backbone), "--log", world.url, "--log-key", world.log_key,
                                              "--report-pdf", str(out)])
    assert result.exit_code == 7 and "--report-pdf needs Chromium" in result.stderr
    assert not out.exists()


HOSTILE = '<img src="http://198.51.100.7/x.png"><script>fetch("http://198.51.100.7/")</script>'


def hostile_data(tmp_path: Path):
    """A no-match report whose every attacker-controlled string is markup that would load something."""
    from verifier.report.data import BitEvidence, Distance, ReportData

    verdict = {"v": 2, "verdict": "none", "exit_code": 1, "device": None, "core": None,
               "reason": f"no watermark is read {HOSTILE}", "notes": [HOSTILE],
               "suspect": {"path": str(tmp_path / "x.pt"), "kind": HOSTILE, "backbone_id": None},
               "log": {"url": "http://127.0.0.1:1", "mode": "api", "origin": HOSTILE, "tree_size": 3,
                       "root_hash": "00" * 32, "cosigned_by": [HOSTILE]},
               "watermark_readings": [{"issuer": HOSTILE, "issuer_key_id": "11" * 32, "accepted": False,
                                       "decoded": False, "reason": HOSTILE, "bit_errors": 40, "code_bits": 128,
                                       "score": 1.5, "runner_up_score": 0.0, "candidates": 9, "issuances_counted": 3,
                                       "p_value": 1.0, "log10_p_value": 0.0, "log10_p_value_any": 0.0,
                                       "p_value_threshold": 1e-9, "watermark_commitment": None}],
               "fingerprint": None, "issuers_considered": [{"issuer": HOSTILE, "key_id": "11" * 32, "applies": True,
                                                             "reason": HOSTILE}]}
    z = tuple(((n * 37) % 11 - 5) / 2.0 for n in range(128))
    bits = BitEvidence(HOSTILE, 3.0, z, tuple(1 if n % 3 else -1 for n in range(128)), (("layer.0." + HOSTILE, z),))
    dist = Distance(2, HOSTILE, HOSTILE, 0.4, 0.15, (("layer.0", 0.4),))
    return ReportData(verdict, (), "ab" * 32, f"{HOSTILE}\n3\nAAAA\n\n\u2014 {HOSTILE} AAAAAAAA\n", f"{HOSTILE}+00+AA",
                      (), (bits,), (dist,), (f"emshield-verify {HOSTILE}",), (HOSTILE,))


def test_hostile_strings_are_shown_as_text_and_load_nothing(tmp_path: Path, browser) -> None:
    from verifier.report.html import render

    html = render(hostile_data(tmp_path))
    assert "<script" not in html and "<img" not in html
    report = tmp_path / "hostile.html"
    report.write_text(html, encoding="utf-8")
    page, refused = open_offline(browser, report, "hostile")
    assert refused == []
    assert HOSTILE in page.inner_text("body")
    assert plots(page) == {"bits", "p-value", "distances", "layers"}
    page.close()


def test_rendering_is_deterministic(tmp_path: Path) -> None:
    """The same evidence draws the same bytes (fixed SVG hash salt, no dates in the metadata)."""
    from verifier.report.html import render

    data = hostile_data(tmp_path)
    first = render(data)
    assert render(data) == first
    assert "<dc:date>" not in first and "Matplotlib v" not in first
