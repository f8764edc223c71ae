"""The log explorer (spec/explorer.md) in real headless Chromium against a real log server behind
a real HTTP proxy that corrupts answers on demand (`_kit.tamper_proxy`). With honest answers every
check on the page is green; with a wrong root, a forged signature, a flipped entry byte, a bad
proof or a rollback, the checks that depend on the tampered answer turn red and nothing the
tampering touches stays green. Screenshots: tests/_output/explorer/ (CI artefacts).

Waits are on conditions in the page (no check still pending), never on time."""

from __future__ import annotations

import hashlib

import pytest

from _kit.browser import VIEWPORT, chromium, screenshot_dir
from _kit.explorer import explorer_log
from _kit.logs import public_bytes
from _kit.tamper_proxy import TamperProxy
from emshield.tlog import entry as E
from emshield.tlog.checkpoint import Checkpoint, NoteSigner, sign_checkpoint

SHOTS = screenshot_dir("explorer")
SETTLED = """(scope) => {
    const root = document.querySelector(scope);
    return root && root.querySelector("[data-check]") && !document.querySelector("[data-check][data-state=wait]")
        && document.querySelector("#banner").dataset.state !== "wait";
}"""

CONSISTENCY_DONE = "() => ['pass', 'fail'].includes(document.querySelector('#consistency-body [data-check]')?.dataset.state)"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with explorer_log(tmp_path_factory.mktemp("explorer")) as log, TamperProxy(log.url) as proxy, chromium() as browser:
        yield log, proxy, browser


@pytest.fixture
def open_page(env):
    """A new browser context (empty cache and localStorage) on the explorer, keys pinned."""
    log, proxy, browser = env
    contexts = []

    def start(*, pin: bool = True, mode: str = "honest"):
        proxy.mode = mode
        ctx = browser.new_context(viewport=VIEWPORT)
        contexts.append(ctx)
        page = ctx.new_page()
        page.errors, page.urls = [], []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.on("request", lambda r: page.urls.append(r.url))
        page.goto(proxy.url + "/explore/")
        if pin:
            page.fill("#log-key", log.verifier_key)
            page.fill("#witness-keys", log.witness_key)
            page.click("#pin-button")
            page.wait_for_load_state()
        settle(page, "#browse")
        return page

    yield start
    proxy.mode = "honest"
    proxy.note = None
    for ctx in contexts:
        ctx.close()


def settle(page, scope: str) -> None:
    page.wait_for_function(SETTLED, arg=scope, timeout=30_000)


def checks(page, scope: str = "body") -> dict[str, tuple[str, str]]:
    """Every check in ``scope``: data-check name -> (state, text)."""
    return {n: (s, t) for n, s, t in page.evaluate(
        "(scope) => [...document.querySelectorAll(scope + ' [data-check]')].map(n => [n.dataset.check, n.dataset.state, n.title])",
        scope)}


def search(page, query: str) -> None:
    page.fill("#search-input", query)
    page.click("#search-button")
    page.wait_for_function("(q) => document.querySelector('#search-results').dataset.query === q", arg=query)
    settle(page, "#search-results")


def open_entry(page, index: int) -> None:
    page.click(f"#search-table tr[data-leaf='{index}'] a") if page.query_selector(
        f"#search-table tr[data-leaf='{index}']") else page.evaluate(f"location.hash = 'entry={index}'")
    page.wait_for_function("(i) => document.querySelector('#entry-title')?.textContent === 'Entry ' + i", arg=index)
    settle(page, "#entry")


def test_honest_log_every_check_is_green(env, open_page) -> None:
    log, proxy, _ = env
    page = open_page()
    home = checks(page)
    assert home["checkpoint-signature"][0] == "pass"
    assert home["checkpoint-consistency"][0] == "pass" and "first checkpoint" in home["checkpoint-consistency"][1]
    assert home["witness:witness.test.emshield.example/w1"][0] == "pass"
    assert page.text_content("#checkpoint-size") == str(log.size())
    issuers = {k: v for k, v in home.items() if k.startswith("issuer-")}
    assert len(issuers) == 4 and all(s == "pass" for s, _ in issuers.values()), issuers
    assert "tiny-llama/acme" in page.text_content("#issuer-table")  # the backbone, from the decoded parameters
    rows = {k: v for k, v in home.items() if k.startswith("inclusion:")}
    assert len(rows) == log.size() % 256 or len(rows) == 256
    assert all(s == "pass" for s, _ in rows.values())
    attributed = page.text_content(f"#browse tr[data-leaf='{log.facts['attribution']['index']}']")
    assert "attribution" in attributed and f"leaf {log.facts['attribution']['issuance_index']}" in attributed
    assert "T = 12345.678901" in attributed
    page.screenshot(path=str(SHOTS / "honest-home.png"))

    single = log.facts["single_entry"]
    search(page, single["device"])
    found = checks(page, "#search-results")
    assert set(found) == {f"inclusion:{single['index']}", f"match:{single['index']}", f"signature:{single['index']}"}
    assert all(s == "pass" for s, _ in found.values()), found
    page.screenshot(path=str(SHOTS / "honest-search.png"), full_page=True)
    open_entry(page, single["index"])
    entry = checks(page, "#entry")
    assert entry["entry-inclusion"][0] == "pass" and entry["entry-signature"][0] == "pass"
    assert entry["entry-side-record"][0] == "skip"  # policy "watermark": no fingerprint committed
    assert page.query_selector_all("#entry-proof li")

    batch = log.facts["batch_entry"]
    search(page, batch["device"])
    open_entry(page, batch["index"])
    entry = checks(page, "#entry")
    assert entry["entry-signature"] == ("pass", entry["entry-signature"][1]) and "batch signature" in entry["entry-signature"][1]

    fp = log.facts["fingerprint"]
    search(page, fp["hash"])  # a fingerprint hash: found through the index by commitment
    assert checks(page, "#search-results")[f"match:{fp['index']}"][0] == "pass"
    open_entry(page, fp["index"])
    entry = checks(page, "#entry")
    assert {k: s for k, (s, _) in entry.items()} == {"entry-inclusion": "pass", "entry-signature": "pass",
                                                     "entry-side-record": "pass"}
    page.screenshot(path=str(SHOTS / "honest-entry.png"), full_page=True)

    attributed = log.facts["attribution"]
    open_entry(page, attributed["index"])
    entry = checks(page, "#entry")
    assert {k: s for k, (s, _) in entry.items()} == {"entry-inclusion": "pass", "entry-signature": "pass",
                                                     "entry-side-record": "skip", "entry-opening": "pass"}, entry
    assert f"leaf {attributed['issuance_index']}" in entry["entry-opening"][1]
    assert "Acme Models" in entry["entry-signature"][1]
    fields = page.text_content("#entry-fields")
    assert "attribution" in fields and attributed["suspect_sha256"] in fields and "12345.678901 over 512 terms" in fields
    assert page.get_attribute("#entry-attributed", "href") == f"#entry={attributed['issuance_index']}"
    page.screenshot(path=str(SHOTS / "attribution-entry.png"), full_page=True)

    unknown = log.facts["unknown_index"]
    open_entry(page, unknown)
    entry = checks(page, "#entry")
    assert entry["entry-inclusion"][0] == "pass"
    assert entry["entry-signature"][0] == "skip" and "unknown" in entry["entry-signature"][1]
    assert "issuer-key-rotation" in page.text_content("#entry-unknown")
    page.wait_for_selector("#other-table")
    assert "issuer-key-rotation" in page.text_content("#other-table")
    page.screenshot(path=str(SHOTS / "unknown-entry.png"), full_page=True)

    page.fill("#consistency-first", "5")
    page.fill("#consistency-second", str(log.size()))
    page.click("#consistency-button")
    page.wait_for_function(CONSISTENCY_DONE)
    state, text = checks(page, "#consistency-body")["consistency-proof"]
    assert state == "pass", text
    assert "derived from the server's proofs" in page.text_content("#consistency-body")
    page.screenshot(path=str(SHOTS / "consistency.png"), full_page=True)

    search(page, E.issuer_key_id(public_bytes(log.keys["Beta Labs"])).hex())  # scans bundles, newest first
    scanned = checks(page, "#search-results")
    assert len(scanned) == 200 + 40 and all(s == "pass" for s, _ in scanned.values())
    assert "the whole log" in page.text_content("#scan-status")
    assert page.errors == []
    assert page.urls and all(u.startswith(proxy.url + "/") for u in page.urls), set(page.urls)  # nothing from elsewhere


def test_without_a_pinned_key_nothing_is_green(open_page) -> None:
    page = open_page(pin=False)
    states = checks(page)
    assert states and not [k for k, (s, _) in states.items() if s == "pass"], states
    assert states["checkpoint-signature"][0] == "skip"
    assert page.get_attribute("#banner", "data-state") == "skip"


def assert_nothing_green(states: dict) -> None:
    green = [k for k, (s, _) in states.items() if s == "pass"]
    assert not green, green


@pytest.mark.parametrize("mode", ["wrong-root", "forged-signature"])
def test_a_tampered_checkpoint_is_red_and_nothing_is_green(env, open_page, mode) -> None:
    log, _, _ = env
    page = open_page(mode=mode)
    search(page, log.facts["single_entry"]["device"])
    open_entry(page, log.facts["single_entry"]["index"])
    states = checks(page)
    assert states["checkpoint-signature"][0] == "fail"
    assert "does not verify" in states["checkpoint-signature"][1]
    assert page.get_attribute("#banner", "data-state") == "fail"
    assert_nothing_green(states)
    assert states["entry-inclusion"][0] == "fail" and "no trusted checkpoint" in states["entry-inclusion"][1]
    page.screenshot(path=str(SHOTS / f"tampered-{mode}.png"))


@pytest.mark.parametrize("mode", ["flipped-entry-byte", "bad-proof"])
def test_tampered_entries_or_proofs_are_red(env, open_page, mode) -> None:
    log, _, _ = env
    page = open_page(mode=mode)
    single = log.facts["single_entry"]
    search(page, single["device"])
    open_entry(page, single["index"])
    states = checks(page)
    assert states["checkpoint-signature"][0] == "pass"  # the checkpoint itself was not touched
    entry_checks = {k: v for k, v in states.items() if not k.startswith(("checkpoint-", "witness:"))}
    assert entry_checks
    # Every entry, registration and proof check is red (the side record of a watermark-only entry: grey).
    assert all(s == "fail" for k, (s, _) in entry_checks.items() if k != "entry-side-record"), entry_checks
    assert entry_checks["entry-side-record"][0] in ("skip", "fail")
    if mode == "bad-proof":
        page.fill("#consistency-first", "5")
        page.fill("#consistency-second", str(log.size()))
        page.click("#consistency-button")
        page.wait_for_function(CONSISTENCY_DONE)
        assert checks(page, "#consistency-body")["consistency-proof"][0] == "fail"
    page.screenshot(path=str(SHOTS / f"tampered-{mode}.png"), full_page=True)


def test_a_rollback_is_red(env, open_page) -> None:
    log, proxy, _ = env
    page = open_page()
    old_note = page.text_content("#checkpoint-note").encode()
    old_size = int(page.text_content("#checkpoint-size"))
    log.append(3)
    log.wait_for_size(old_size + 3)
    page.reload()
    settle(page, "#browse")
    extended = checks(page)["checkpoint-consistency"]
    assert extended[0] == "pass" and f"extends size {old_size}" in extended[1], extended
    proxy.note, proxy.mode = old_note, "rollback"
    page.reload()
    settle(page, "#browse")
    states = checks(page)
    # A genuine older checkpoint: its signature and its cosignature are valid, and say so ...
    assert states["checkpoint-signature"][0] == "pass"
    assert states["witness:witness.test.emshield.example/w1"][0] == "pass"
    # ... but it is not the log this browser saw, so nothing else is trusted.
    assert states["checkpoint-consistency"][0] == "fail" and "rollback" in states["checkpoint-consistency"][1]
    assert page.get_attribute("#banner", "data-state") == "fail"
    assert_nothing_green({k: v for k, v in states.items() if not k.startswith(("checkpoint-signature", "witness:"))})
    assert "evidence of misbehaviour: 1" in page.text_content("#seen summary")
    page.screenshot(path=str(SHOTS / "tampered-rollback.png"))


def test_a_fork_signed_by_the_log_key_is_red(env, open_page) -> None:
    """The log's own key signs another tree of the size this browser already verified: a split view."""
    log, proxy, _ = env
    page = open_page()
    size = int(page.text_content("#checkpoint-size"))
    signer = NoteSigner.from_signer_key(log.key_file.read_text().strip())
    proxy.note = sign_checkpoint(Checkpoint(signer.name, size, hashlib.sha256(b"emshield-test/fork").digest()), signer)
    proxy.mode = "fork"
    page.reload()
    settle(page, "#browse")
    states = checks(page)
    assert states["checkpoint-signature"][0] == "pass"  # the log's key did sign it
    assert states["checkpoint-consistency"][0] == "fail" and "fork" in states["checkpoint-consistency"][1]
    assert_nothing_green({k: v for k, v in states.items() if k != "checkpoint-signature"})
    assert page.get_attribute("#banner", "data-state") == "fail"
    page.screenshot(path=str(SHOTS / "tampered-fork.png"))
