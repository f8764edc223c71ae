"""Adaptive attack suite against attribution: what does `emshield-verify` say about an attacked leak?

`./run bench attacks [-- --model tiny|smollm2] [--records N] [--only NAME,...] [--json FILE]`

A real log server on 127.0.0.1, one issuer, one trained core issued with the watermark to three
devices (A, B, C) through the issuance pipeline, a second core issued fingerprint-only to two
devices (D, E). Device A leaks; each row attacks A's copy the way a leaker who read the spec and
the log would, and runs `emshield-verify --json` (in-process) on the result. Columns:

- verdict: the verdict kind (device / core / none; v1 verdicts "match" are shown as their method)
- named: right (a leaking device), WRONG (an innocent device: a release blocker), none, or core
  (a core lineage, which names no device; "core+" when it lists the leaker)
- errs: raw bit errors the verifier reports; errsA: raw bit errors of the hard signs against A's
  codeword on the suspect's ΔW as it is (no canonicalisation) — what a naive reader would see
- p: the verifier's chance-match p-value; fp: its fingerprint distance
- acc / loss: task accuracy and mean answer loss of the attacked model on held-out records
- secret / T: the issuer's secret tier (`emshield trace` with the marking secret, after the public
  verdict): right / WRONG / none for the devices it names (several for a coalition), "+d" when
  every naming was disclosed in the log and the disclosure verified as `emshield-verify` checks
  it; T the highest presence score (named at T ≥ 5.26)

Rows "strip + noise / prune": the published-parameters strip, then a blind attack at the strongest
grid strength still within 1 accuracy point of the stripped copy, and at the weakest that costs at
least 1 (5) points. Rows "strip, then fine-tune": the stripped ΔW (no longer rank r) re-expressed
exactly as one-rank LoRA factors (`as_lora`), then fine-tuned like the "fine-tune" rows; rows
"strip after fine-tune ...": the fine-tuned copy stripped. Their note gives the public tier's
largest |z| on the suspect (`public |z|`; 0 right after a strip) and how far the fine-tune moved ΔW.

The fixture world uses the committed recipe core (fixtures/cores/financial-lora.safetensors, all
seven projections, 28 marked layers); `--model smollm2` uses the demo's SmolLM2 core (cached, or
trained once with the demo recipe).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _kit.formats import save_gguf  # noqa: E402
from _kit.logs import ed25519_key, running_log  # noqa: E402
from _kit.rewrites import rewrite  # noqa: E402

from emshield.core import LoraFactors  # noqa: E402
from emshield.marking import ecc, fingerprint, watermark  # noqa: E402
from emshield.marking.params import MarkingParams, payload_for_device, verification_key  # noqa: E402
from emshield.marking.strip import strip_public_mark  # noqa: E402

SECRET = bytes(range(200, 232))
FOREIGN_SECRET = bytes(range(50, 82))
FIXTURE_CORE = ROOT / "fixtures" / "cores" / "financial-lora.safetensors"
DATA = ROOT / "fixtures" / "data"


# -- the world: log, issuer, issued devices ----------------------------------------------------------


@dataclass
class Device:
    name: str
    uuid: uuid.UUID
    core: dict[str, LoraFactors]
    index: int
    policy: str
    bundle: Path
    payload: int | None


@dataclass
class World:
    url: str
    log_key: str
    backbone: Path
    params: MarkingParams
    core0: dict[str, LoraFactors]
    devices: dict[str, Device] = field(default_factory=dict)
    client: object = None
    keys: object = None  # the issuer's IssuerKeys (the secret tier's tracing and disclosure)
    backbone32: dict = field(default_factory=dict)  # the backbone's tensors in float32, loaded once


def _backbone32(world: World) -> dict[str, torch.Tensor]:
    if not world.backbone32:
        from emshield.model.io import load_tensors

        world.backbone32.update({k: v.to(torch.float32) for k, v in load_tensors(world.backbone).items()})
    return world.backbone32


def _prepare(run_kw: dict, **extra):
    from emshield.issue.pipeline import prepare_run

    sig = inspect.signature(prepare_run).parameters
    return prepare_run(**run_kw, **{k: v for k, v in extra.items() if k in sig})


def build_world(log, backbone: Path, core0: dict[str, LoraFactors], core1: dict[str, LoraFactors],
                out: Path, task_records: int) -> World:
    """Five issuances through `emshield.issue`: core0 to A, B, C under policy auto, judged on the task
    (the first ``task_records`` of financial-test.json, as `emshield issue --task-data` judges it:
    ≤ 0.5 pp accuracy, ≤ 1 % loss, both tiers present), and core1 fingerprint-only to D, E."""
    from emshield.issue.devices import DeviceTarget
    from emshield.issue.keys import IssuerKeys
    from emshield.issue.pipeline import issue_to_device, mark_for_device
    from emshield.issue.registration import marking_params_for, register_issuer
    from emshield.logclient.http import LogClient
    from emshield.model.io import backbone_id
    from emshield.tee.devicekey import DevicePublicKey
    from emshield.tlog.checkpoint import NoteVerifier

    client = LogClient(log.url, operator_token=log.token)
    keys = IssuerKeys(ed25519_key("bench-attacks-issuer"), SECRET)
    params = marking_params_for(keys, backbone_id(backbone), core0)
    register_issuer(client, keys, "Bench Issuer", params)
    world = World(log.url, log.verifier_key, backbone, params, core0, client=client, keys=keys)
    verifier = NoteVerifier.from_verifier_key(log.verifier_key)
    plan = [("auto", core0, ["A", "B", "C"]), ("fingerprint", core1, ["D", "E"])]
    n = 0
    for policy, core, names in plan:
        base = dict(client=client, log_verifier=verifier, keys=keys, core=core, backbone=backbone, policy=policy,
                    task_data=DATA / "financial-test.json", task_records=task_records)
        run = _prepare(base, allow_shared_core=True)
        for name in names:
            n += 1
            dev = uuid.UUID(int=0xA000 + n)
            target = DeviceTarget(dev, DevicePublicKey.from_secret(hashlib.sha256(dev.bytes).digest()))
            res = issue_to_device(run, target, out, now=1_795_000_000 + n)
            marked = mark_for_device(run, dev, res.salt)
            payload = payload_for_device(SECRET, dev.bytes) if res.policy == "both" else None
            world.devices[name] = Device(name, dev, marked.core, res.index, res.policy, Path(res.bundle), payload)
            rec = marked.record
            print(f"  {name}: policy {res.policy}" + (f", {rec.embedding}, secret tau {rec.secret_tau}, accuracy "
                  f"{rec.accuracy_unmarked:.4f} -> {rec.accuracy_marked:.4f}, loss {rec.loss_unmarked:.4f} -> "
                  f"{rec.loss_marked:.4f}" if rec is not None and rec.mode == "both" else ""), file=sys.stderr)
    return world


# -- verification and its summary --------------------------------------------------------------------


def verify(world: World, suspect: Path, *extra: str, backbone: bool = True, online: bool = True) -> dict:
    from click.testing import CliRunner

    from verifier.verify.cli import main as verify_main

    args = [str(suspect), "--log-key", world.log_key, "--json", *extra]
    if online:
        args += ["--log", world.url]
    if backbone:
        args += ["--backbone", str(world.backbone)]
    result = CliRunner().invoke(verify_main, args)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return {"verdict": "error", "error": "not json", "detail": (result.stdout + result.stderr)[-300:]}


def secret_trace(world: World, suspect: Path, guilty: set[str], backbone: bool = True) -> dict:
    """The issuer's trace with the secret tier, each naming disclosed and checked publicly."""
    from emshield.issue.trace import disclose, trace
    from emshield.tlog.checkpoint import NoteVerifier
    from verifier.verify.digest import suspect_sha256
    from verifier.verify.log_view import open_verified_log
    from verifier.verify.suspect import load_suspect

    names = {str(d.uuid): d.name for d in world.devices.values()}
    verifier = NoteVerifier.from_verifier_key(world.log_key)
    digest = suspect_sha256(suspect)
    with load_suspect(suspect, world.backbone if backbone else None) as loaded:
        log = open_verified_log(world.client, verifier)
        result = trace(loaded, log, SECRET, digest)
        done = disclose(world.client, verifier, world.keys, log, loaded, result, digest)
    who = sorted(names.get(r.device_uuid, "?") for r in result.named)
    verdict = "none" if not who else ("WRONG" if set(who) - guilty else "right")
    if who and all(d.verified for d in done):
        verdict += "+d"
    return {"secret": verdict, "secret_who": ",".join(who), "secret_t": result.rows[0].score if result.rows else None}


def summarise(out: dict, world: World, guilty: set[str]) -> dict:
    """Verdict kind, whether the named device is right, and the figures (v1 and v2 verdicts)."""
    names = {str(d.uuid): d.name for d in world.devices.values()}
    kind, named, lineage = out.get("verdict"), None, []
    if kind == "match":  # v1
        kind = out["match"]["method"]
        named = out["match"]["device_uuid"]
    elif kind == "device":
        named = out["device"]["device_uuid"]
    elif kind == "core":
        lineage = [names.get(i["device_uuid"], "?") for i in out["core"]["issuances"]]
    elif kind == "error":
        kind = f"error:{out.get('error')}"
    if named is not None:
        verdict_of = "right" if names.get(named) in guilty else "WRONG"
    elif lineage:
        verdict_of = "core+" if guilty & set(lineage) else "core"
    else:
        verdict_of = "none"
    readings = out.get("watermark_readings") or [{}]
    reading = readings[0]
    fp = None
    named_fp = (out.get("device") or out.get("match") or {}).get("fingerprint")
    if named_fp:
        fp = named_fp.get("distance")
    elif out.get("fingerprint"):
        fp = out["fingerprint"].get("distance")
    else:
        m = re.search(r"distance ([0-9.]+)", out.get("reason", ""))
        fp = float(m.group(1)) if m else None
    named_name = names.get(named, named) if named else ",".join(lineage)
    return {"kind": kind, "named": verdict_of, "who": named_name or "", "errs": reading.get("bit_errors"),
            "p": reading.get("p_value"), "fp": fp, "detail": out.get("reason") or out.get("detail") or ""}


# -- model helpers -----------------------------------------------------------------------------------


class _Delta:
    """ΔW as a core layer for TaskModel.use and delta_drift (which need only shape and delta())."""

    def __init__(self, d: np.ndarray) -> None:
        self._d = d
        self.shape = d.shape

    def delta(self) -> np.ndarray:
        return self._d


def backbone_state(world: World) -> dict[str, torch.Tensor]:
    from emshield.model.io import load_tensors

    return {k: v.to(torch.float64) for k, v in load_tensors(world.backbone).items()}


def merged_state(world: World, deltas: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """W0 + ΔW per layer, merged in float64 and kept in float32 (as Evaluator loads it and save_state
    writes it); the other tensors are the one float32 backbone copy, shared by every row."""
    state = dict(_backbone32(world))
    for name, d in deltas.items():
        state[name] = (state[name].to(torch.float64) + torch.from_numpy(np.asarray(d, dtype=np.float64))).to(torch.float32)
    return state


def deltas_of(core: dict[str, LoraFactors]) -> dict[str, np.ndarray]:
    return {k: f.delta() for k, f in core.items()}


def save_state(state: dict[str, torch.Tensor], path: Path, dtype=torch.float32) -> Path:
    from emshield.model.io import save_tensors

    return save_tensors({k: v.to(dtype) for k, v in state.items()}, path)


class Evaluator:
    """Task accuracy and loss of a full state dict (any shapes: dummy units change the config)."""

    def __init__(self, backbone: Path, records: list[dict]) -> None:
        from transformers import AutoConfig

        from emshield.model.hf import load_tokenizer

        self.backbone, self.records = backbone, records
        self.config = AutoConfig.from_pretrained(backbone)
        self.tok = load_tokenizer(backbone)

    def model(self, state: dict[str, torch.Tensor]):
        from transformers import LlamaForCausalLM

        cfg = self.config.__class__.from_dict(self.config.to_dict())
        cfg.intermediate_size = state["model.layers.0.mlp.gate_proj.weight"].shape[0]
        cfg.num_attention_heads = state["model.layers.0.self_attn.q_proj.weight"].shape[0] // self.head_dim
        cfg.num_key_value_heads = state["model.layers.0.self_attn.k_proj.weight"].shape[0] // self.head_dim
        cfg.head_dim = self.head_dim
        model = LlamaForCausalLM(cfg).eval()
        missing, unexpected = model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        if "lm_head.weight" in missing:
            model.tie_weights()
        return model

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.config.hidden_size // self.config.num_attention_heads

    def __call__(self, state: dict[str, torch.Tensor]) -> tuple[float, float]:
        from emshield.model.taskeval import TaskModel

        model = self.model(state)
        tm = TaskModel(model, self.tok, {k: v.clone() for k, v in model.state_dict().items()})
        return tm.evaluator(self.records)(None)

    def logits(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        enc = [self.tok.encode(r["instruction"] + " " + r["input"]) for r in self.records[:4]]
        ids = torch.tensor([e[:min(48, *map(len, enc))] for e in enc])
        with torch.no_grad():
            return self.model(state)(input_ids=ids).logits.double()


# -- attacks on ΔW -----------------------------------------------------------------------------------


def z_of(deltas: dict[str, np.ndarray], params: MarkingParams) -> np.ndarray:
    return watermark.extract_from_deltas(deltas, params).z


def raw_errors(deltas: dict[str, np.ndarray], params: MarkingParams, payload: int | None) -> int | None:
    if payload is None:
        return None
    try:
        z = z_of(deltas, params)
    except ValueError:
        return None
    return int(np.sum((z > 0).astype(np.uint8) != ecc.encode(payload, params.rs_nsym)))


def frame(deltas: dict[str, np.ndarray], params: MarkingParams, target: fingerprint.Fingerprint,
          steps: int = 150, lr: float = 2e-3) -> dict[str, np.ndarray]:
    """Strip, then move ΔW (Adam on the fingerprint features) towards another device's published
    side record, then strip again: the framing attack."""
    out = strip_public_mark(deltas, params)
    want = dict((name, np.asarray(f, dtype=np.float64) / fingerprint.QUANT) for name, f in target.layers)
    k = params.fp_k
    for layer in params.layers:
        d0 = torch.from_numpy(out[layer.name]).clone()
        delta = d0.clone().requires_grad_(True)
        pr = fingerprint._probes(params, layer)
        v, u = torch.from_numpy(pr.v.copy()), torch.from_numpy(pr.u.copy())
        goal = torch.from_numpy(want[layer.name])
        scale0 = float(d0.norm())
        opt = torch.optim.Adam([delta], lr=lr * scale0 / math.sqrt(d0.numel()))
        for _ in range(steps):
            fro = delta.norm()
            sv = torch.linalg.svdvals(delta)[:k]
            rho = (delta @ v.T).norm(dim=0) * math.sqrt(layer.in_features) / fro
            omega = (delta.T @ u.T).norm(dim=0) * math.sqrt(layer.out_features) / fro
            feats = torch.cat([sv / fro, rho, omega])
            loss = ((feats - goal) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[layer.name] = delta.detach().numpy()
    return strip_public_mark(out, params)


def quantise_groups(w: np.ndarray, bits: int, group: int = 32) -> np.ndarray:
    top = 2 ** (bits - 1) - 1
    rows, cols = w.shape
    g = w.reshape(rows, cols // group, group)
    scale = np.max(np.abs(g), axis=2, keepdims=True) / top
    scale[scale == 0] = 1.0
    return (np.clip(np.rint(g / scale), -top, top) * scale).reshape(rows, cols)


def as_lora(deltas: dict[str, np.ndarray], seed: int = 0) -> tuple[dict[str, LoraFactors], int]:
    """ΔW re-expressed as LoRA factors of one rank R and scale 1 for every layer (what finetune_core
    needs), and R: each layer's SVD at its numerical rank (singular values above 1e-9·σ₁; the rest
    is float64 rounding; recover.factorise, balanced factors), R the largest of those ranks. A layer
    of lower rank is padded as peft initialises a LoRA: zero columns of B (ΔW unchanged) and random
    rows of A, so the fine-tune can use them."""
    from emshield.model.recover import factorise

    own = {n: factorise(torch.from_numpy(np.asarray(d, dtype=np.float64)), None, full_svd=True, max_rank=min(d.shape),
                        rel_tol=1e-9)[0] for n, d in deltas.items()}
    rank = max(f.rank for f in own.values())
    rng = np.random.default_rng(seed)
    out = {}
    for n, f in own.items():
        pad = rank - f.rank
        a = np.vstack([f.a, (rng.standard_normal((pad, f.shape[1])) / math.sqrt(f.shape[1])).astype(np.float32)])
        out[n] = LoraFactors(a, np.hstack([f.b, np.zeros((f.shape[0], pad), np.float32)]), 1.0)
    return out, rank


def relative_change(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> float:
    """taskeval.delta_drift of two ΔW dicts: ‖after − before‖_F / ‖before‖_F over all layers."""
    from emshield.model.taskeval import delta_drift

    return delta_drift({n: _Delta(d) for n, d in before.items()}, {n: _Delta(d) for n, d in after.items()})


def low_rank(d: np.ndarray, rank: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(d, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vt[:rank]


def subspace_noise(d: np.ndarray, rank: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise projected onto the tangent space of d's top-``rank`` singular subspaces
    (P_U·N + N·P_V − P_U·N·P_V), scaled to ``level`` × d's entry std in RMS."""
    u, _, vt = np.linalg.svd(d.astype(np.float64), full_matrices=False)
    pu, pv = u[:, :rank], vt[:rank].T
    n = rng.standard_normal(d.shape)
    t = pu @ (pu.T @ n) + (n @ pv) @ pv.T - pu @ ((pu.T @ n) @ pv) @ pv.T
    return t * (level * d.std() / np.sqrt(np.mean(t * t)))


def quantise_merged(w0: np.ndarray, d: np.ndarray, bits: int) -> np.ndarray:
    """ΔW after the merged weight W0 + ΔW is quantised group-wise to ``bits`` (float32 W0)."""
    w0 = w0.astype(np.float32)
    return quantise_groups((w0 + d).astype(np.float32), bits).astype(np.float64) - w0


def prune(d: np.ndarray, fraction: float) -> np.ndarray:
    cut = np.quantile(np.abs(d), fraction)
    return np.where(np.abs(d) <= cut, 0.0, d)


# -- suspect file formats ----------------------------------------------------------------------------


def save_legacy_pt(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save({k: v.to(torch.float16) for k, v in state.items()}, path, _use_new_zipfile_serialization=False)
    return path


# -- the table -----------------------------------------------------------------------------------------


@dataclass
class Row:
    attack: str
    suspect: Path
    guilty: set[str]
    state: dict[str, torch.Tensor] | None  # for task accuracy (None: not measured)
    errs_a: int | None = None
    extra: tuple[str, ...] = ()
    note: str = ""
    online: bool = True
    backbone: bool = True

    def __post_init__(self) -> None:
        # float32, as Evaluator loads it and save_state writes it (merged_state already is; the
        # rewrites' states are float64): half their memory, the same figures
        if self.state is not None:
            self.state = {k: v.to(torch.float32) for k, v in self.state.items()}


def fine_tuned(world: World, records: list[dict], steps: int, lr: float, name: str) -> dict[str, LoraFactors]:
    from emshield.model.taskeval import finetune_core

    return finetune_core(world.backbone, world.devices[name].core, records, steps, lr)


def public_reading(deltas: dict[str, np.ndarray], params: MarkingParams) -> str:
    """The public tier's largest |z| on ΔW as it is (the strip leaves 0; τ is the embedding margin)."""
    return f"public |z| ≤ {float(np.max(np.abs(z_of(deltas, params)))):.2f} (τ {params.tau:g})"


def rows(world: World, tmp: Path, ev: Evaluator, only: set[str] | None, model: str) -> list[Row]:
    from emshield.logclient.http import LogClient
    from emshield.model.adapter import write_peft_adapter
    from emshield.model.datasets import load_dataset

    params = world.params
    a = world.devices["A"]
    da = deltas_of(a.core)
    rng = np.random.default_rng(16)
    out: list[Row] = []
    want = (lambda n: only is None or n in only)

    def add(name: str, deltas: dict[str, np.ndarray] | None = None, *, state=None, guilty=frozenset("A"),
            errs_ref: dict | None = None, **kw) -> None:
        if not want(name):
            return
        t0 = time.perf_counter()
        st = state if state is not None else merged_state(world, deltas)
        path = save_state(st, tmp / f"{len(out):02d}.safetensors")
        ref = errs_ref if errs_ref is not None else deltas
        errs = raw_errors(ref, params, a.payload) if ref is not None else None
        out.append(Row(name, path, set(guilty), st, errs, **kw))
        print(f"  built {name} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)

    add("unattacked (merged fp32)", da)
    if want("adapter folder"):
        out.append(Row("adapter folder", write_peft_adapter(a.core, tmp / "adapter"), {"A"}, merged_state(world, da),
                       raw_errors(da, params, a.payload), backbone=False))
    # function-preserving rewrites
    base = merged_state(world, da)
    bb = backbone_state(world)  # float64, for the rewrites' raw bit errors (loaded once, not per layer)
    for label, kw in [("rewrite: heads (GQA) + v/o dims", dict(heads=True)), ("rewrite: MLP units", dict(mlp=True)),
                      ("rewrite: residual signed perm", dict(resid=True)),
                      ("rewrite: rescale + fold norms + RoPE rot", dict(scale=True)),
                      ("rewrite: 16 dummy MLP units", dict(dummy=16)),
                      ("rewrite: all of the above", dict(heads=True, mlp=True, resid=True, scale=True, dummy=16))]:
        if not want(label):
            continue
        st = rewrite(base, ev.config, rng, **kw)
        diff = float((ev.logits(st) - ev.logits(base)).abs().max())
        raw = {n: (st[n].numpy() - bb[n].numpy()) if st[n].shape == base[n].shape else None
               for n in da}
        errs = raw_errors({n: d for n, d in raw.items()}, params, a.payload) if all(
            d is not None for d in raw.values()) else None
        path = save_state(st, tmp / f"{len(out):02d}.safetensors")
        out.append(Row(label, path, {"A"}, st, errs, note=f"max |Δlogit| {diff:.1e}"))
    # fine-tuning
    fin = load_dataset(DATA / "financial-train.json")
    other = load_dataset(DATA / "identifier-train.json")
    mixed = [r for pair in zip(other, fin) for r in pair]
    steps = 200 if model == "tiny" else 60
    lrs = (2e-4, 2e-3, 4e-3) if model == "tiny" else (2e-4, 2e-3)
    for lr in lrs:
        for label, recs in ((f"fine-tune other data, {steps} steps, lr {lr:g}", other),
                            (f"fine-tune other+task data, {steps} steps, lr {lr:g}", mixed)):
            then_strip = f"strip after {label.removeprefix('fine-tune ')}" if recs is mixed else None
            if want(label) or (then_strip and want(then_strip)):
                t0 = time.perf_counter()
                tuned = deltas_of(fine_tuned(world, recs, steps, lr, "A"))
                print(f"  fine-tuned ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
                add(label, tuned)
                if then_strip:
                    stripped = strip_public_mark(tuned, params)
                    add(then_strip, stripped, note=f"{public_reading(stripped, params)}; "
                        f"fine-tune moved ΔW {relative_change(da, tuned):.1%}, strip {relative_change(tuned, stripped):.1%}")
    # collusion
    db, dc = deltas_of(world.devices["B"].core), deltas_of(world.devices["C"].core)
    add("collusion: average A,B", {n: (da[n] + db[n]) / 2 for n in da}, guilty={"A", "B"})
    add("collusion: average A,B,C", {n: (da[n] + db[n] + dc[n]) / 3 for n in da}, guilty={"A", "B", "C"})
    add("collusion: 0.7 A + 0.3 B", {n: 0.7 * da[n] + 0.3 * db[n] for n in da}, guilty={"A", "B"})
    add("collusion: sum A + B - unmarked", {n: da[n] + db[n] - world.core0[n].delta() for n in da}, guilty={"A", "B"})
    add("collusion: layers alternate A,B", {n: (da if i % 2 else db)[n] for i, n in enumerate(sorted(da))},
        guilty={"A", "B"})
    # quantisation, low rank, pruning, noise
    for bits in (4, 3):
        label = f"int{bits} group-32 quantisation (all linear weights)"
        if want(label):
            st = {k: (torch.from_numpy(quantise_groups(v.numpy(), bits)) if v.ndim == 2 and "embed" not in k else v)
                  for k, v in base.items()}
            add(label, state=st, errs_ref={n: st[n].numpy() - bb[n].numpy() for n in da})
    add("low-rank re-extraction (rank 4 of 8)", {n: low_rank(d, 4) for n, d in da.items()})
    add("low-rank re-extraction (rank 2 of 8)", {n: low_rank(d, 2) for n, d in da.items()})
    add("prune 90 % of ΔW", {n: prune(d, 0.9) for n, d in da.items()})
    nrng = np.random.default_rng(5)
    for level in (1.0, 3.0):
        add(f"noise {level:.0%} of ΔW std", {n: d + nrng.standard_normal(d.shape) * level * d.std() for n, d in da.items()})
    # stripping and framing
    stripped = strip_public_mark(da, params)
    add("strip (published parameters)", stripped)
    blind_after_strip(world, ev, stripped, add, want)
    strip_then_fine_tune(world, stripped, mixed, steps, lrs, add, want)
    if want("frame: strip + nudge to B's side record"):
        raw = LogClient(world.url).side_record(world.devices["B"].index)
        fp_b = fingerprint.Fingerprint.from_cbor(raw)
        add("frame: strip + nudge to B's side record", frame(da, params, fp_b))
    # not issued / foreign / shared
    add("unmarked core (the issuer's own)", deltas_of(world.core0), guilty=set())
    foreign = MarkingParams(params.backbone_id, verification_key(FOREIGN_SECRET, params.backbone_id), params.layers)
    if want("core marked under an unlogged key"):
        fcore, _ = watermark.embed(world.core0, payload_for_device(FOREIGN_SECRET, a.uuid.bytes), foreign)
        add("core marked under an unlogged key", deltas_of(fcore), guilty=set())
    if want("core marked for an unlogged device (issuer's key)"):
        gcore, _ = watermark.embed(world.core0, payload_for_device(SECRET, uuid.UUID(int=0xDEAD).bytes), params)
        add("core marked for an unlogged device (issuer's key)", deltas_of(gcore), guilty=set())
    add("fingerprint-only core shared by D,E (D leaks)", deltas_of(world.devices["D"].core), guilty={"D"})
    # formats and offline
    if want("legacy .pt (fp16, non-zip)"):
        out.append(Row("legacy .pt (fp16, non-zip)", save_legacy_pt(base, tmp / "legacy.pt"), {"A"}, None,
                       raw_errors(da, params, a.payload)))
    for q in ("Q8_0", "Q4_0"):
        label = f"GGUF {q}"
        if want(label):
            out.append(Row(label, save_gguf(base, ev.config, tmp / f"leak-{q}.gguf", q), {"A"}, None,
                           raw_errors(da, params, a.payload)))
    if want("offline: A's leak against B's bundle"):
        path = save_state(base, tmp / "offline.safetensors")
        out.append(Row("offline: A's leak against B's bundle", path, {"A"}, None, raw_errors(da, params, a.payload),
                       extra=("--bundle", str(world.devices["B"].bundle)), online=False))
    if want("offline: A's leak against A's bundle"):
        path = save_state(base, tmp / "offline.safetensors")
        out.append(Row("offline: A's leak against A's bundle", path, {"A"}, None, raw_errors(da, params, a.payload),
                       extra=("--bundle", str(a.bundle)), online=False))
    return out


def fmt(x, spec: str) -> str:
    if x is None:
        return "—"
    return format(x, spec)


NOISE_GRID = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)  # × ΔW's std per layer
PRUNE_GRID = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)  # fraction of ΔW's entries zeroed (smallest first)
QUANT_GRID = (8, 6, 5, 4, 3, 2)  # bits of the merged marked layers' group-32 quantisation


def blind_after_strip(world: World, ev: Evaluator, stripped: dict[str, np.ndarray], add, want) -> None:
    """The strip, then blind attacks at the strongest grid strength still within 1 pp of accuracy and
    the weakest that costs at least 1 pp and at least 5 pp (a leaker without the secret can only
    attack blindly): Gaussian noise; noise confined to the stripped ΔW's own rank-r row and column
    spaces (where the core, and so the secret mark, lives: the adaptive choice of a leaker who read
    the spec, since noise there is not diluted over directions the core never uses); pruning; and
    group-32 quantisation of the marked layers' merged weights."""
    acc0, _ = ev(merged_state(world, stripped))
    rank = next(iter(world.core0.values())).rank
    bb = _backbone32(world)  # quantise_merged rounds W0 to float32: the shared copy, not another float64 load
    attacks = {
        "noise": (NOISE_GRID, lambda n, d, x, r: d + r.standard_normal(d.shape) * x * d.std(), "{:g}× ΔW std"),
        "subspace noise": (NOISE_GRID, lambda n, d, x, r: d + subspace_noise(d, rank, x, r),
                           "{:g}× ΔW std, in ΔW's rank-%d row/column spaces" % rank),
        "prune": (PRUNE_GRID, lambda n, d, x, r: prune(d, x), "{:.0%} of ΔW"),
        "quantise": (QUANT_GRID, lambda n, d, x, r: quantise_merged(bb[n].numpy(), d, x), "int{:d} group-32, merged"),
    }
    for kind, (grid, attack, label) in attacks.items():
        if not any(want(f"strip + {kind} ({w})") for w in ("strongest within 1 pp", "-1 pp", "-5 pp")):
            continue
        found: dict[int, tuple[float, dict]] = {}
        within: tuple[float, dict] | None = None  # the strongest grid point still within 1 pp
        for x in grid:
            r = np.random.default_rng(7)
            deltas = {n: attack(n, d, x, r) for n, d in stripped.items()}
            acc, _ = ev(merged_state(world, deltas))
            drop = 100 * (acc0 - acc)
            print(f"  strip + {kind} {label.format(x)}: accuracy drop {drop:+.1f} pp", file=sys.stderr, flush=True)
            if drop < 1 and 1 not in found:
                within = (x, deltas)
            for pp in (1, 5):
                if pp not in found and drop >= pp:
                    found[pp] = (x, deltas)
            if 5 in found:
                break
        if within is not None:
            add(f"strip + {kind} (strongest within 1 pp)", within[1], note=f"{kind} {label.format(within[0])}")
        for pp in (1, 5):
            if pp in found:
                x, deltas = found[pp]
                add(f"strip + {kind} (-{pp} pp)", deltas, note=f"{kind} {label.format(x)}")


def strip_then_fine_tune(world: World, stripped: dict[str, np.ndarray], records: list[dict], steps: int,
                         lrs: tuple[float, ...], add, want) -> None:
    """The strip, then fine-tuning to wash out what is left or repair the task: the stripped ΔW as
    exact LoRA factors (one rank R for all layers), fine-tuned as the "fine-tune" rows are."""
    from emshield.model.taskeval import finetune_core

    labels = {lr: f"strip, then fine-tune other+task data, {steps} steps, lr {lr:g}" for lr in lrs}
    if not any(want(label) for label in labels.values()):
        return
    core, rank = as_lora(stripped)
    exact = relative_change(stripped, deltas_of(core))
    for lr, label in labels.items():
        if want(label):
            t0 = time.perf_counter()
            tuned = deltas_of(finetune_core(world.backbone, core, records, steps, lr))
            print(f"  fine-tuned the stripped core, rank {rank} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
            add(label, tuned, note=f"{public_reading(tuned, world.params)}; rank {rank} (re-expressed to "
                f"{exact:.0e}); fine-tune moved ΔW {relative_change(stripped, tuned):.1%}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    ap.add_argument("--records", type=int, default=None, help="held-out records for accuracy (tiny 300, smollm2 60)")
    ap.add_argument("--only", default=None, help="comma-separated row names (prefix match)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    from emshield.model.adapter import load_core
    from emshield.model.datasets import load_dataset

    t_start = time.perf_counter()
    if args.model == "tiny":
        backbone = ROOT / "fixtures" / "tiny-llama"
        core0 = load_core(FIXTURE_CORE)
        n_rec = args.records or 300
    else:
        backbone, core0 = smollm2_core()
        n_rec = args.records or 60
    rng = np.random.default_rng(3)  # a second core: the same B, a fresh random A
    core1 = {n: LoraFactors(rng.standard_normal(f.a.shape).astype(np.float32) * float(np.std(f.a)), f.b, f.scale)
             for n, f in core0.items()}
    records = load_dataset(DATA / "financial-test.json")[:n_rec]
    with tempfile.TemporaryDirectory(prefix="emshield-attacks-") as tmpdir, running_log(Path(tmpdir)) as log:
        tmp = Path(tmpdir)
        t0 = time.perf_counter()
        world = build_world(log, backbone, core0, core1, tmp / "bundles", n_rec)
        print(f"world: {len(world.devices)} issuances in {time.perf_counter() - t0:.0f} s; policies "
              + ", ".join(f"{d.name}={d.policy}" for d in world.devices.values()), file=sys.stderr)
        ev = Evaluator(backbone, records)
        table = rows(world, tmp, ev, None if not args.only else _Prefix(args.only), args.model)
        results = []
        print(f"\n{'attack':52s} {'verdict':11s} {'named':6s} {'who':6s} {'errs':>4s} {'errsA':>5s} "
              f"{'p':>9s} {'fp':>6s} {'acc':>6s} {'loss':>7s} {'secret':8s} {'who':6s} {'T':>6s}  note")
        for row in table:
            t0 = time.perf_counter()
            out = verify(world, row.suspect, *row.extra, backbone=row.backbone, online=row.online)
            s = summarise(out, world, row.guilty)
            acc, loss = ev(row.state) if row.state is not None else (None, None)
            sec = secret_trace(world, row.suspect, row.guilty, row.backbone) if row.online else \
                {"secret": "-", "secret_who": "", "secret_t": None}
            secs = time.perf_counter() - t0
            note = row.note + ("; " if row.note else "") + (s["detail"][:90] if s["kind"] in ("none", "no_match") or
                                                           s["kind"].startswith("error") else "")
            print(f"{row.attack:52s} {s['kind']:11s} {s['named']:6s} {s['who']:6s} {fmt(s['errs'], '4d')} "
                  f"{fmt(row.errs_a, '5d')} {fmt(s['p'], '9.1e')} {fmt(s['fp'], '6.3f')} {fmt(acc, '6.3f')} "
                  f"{fmt(loss, '7.4f')} {sec['secret']:8s} {sec['secret_who']:6s} {fmt(sec['secret_t'], '6.2f')}  "
                  f"{note}", flush=True)
            results.append({"attack": row.attack, **s, **sec, "errs_a": row.errs_a, "accuracy": acc, "loss": loss,
                            "note": row.note, "seconds": round(secs, 1)})
    wrong = [r["attack"] for r in results if r["named"] == "WRONG" or r["secret"].startswith("WRONG")]
    print(f"\n{len(results)} rows, {len(wrong)} wrong device names{': ' + '; '.join(wrong) if wrong else ''}; "
          f"{time.perf_counter() - t_start:.0f} s in all ({args.model})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if wrong else 0


class _Prefix:
    def __init__(self, spec: str) -> None:
        self.prefixes = [p.strip() for p in spec.split(",") if p.strip()]

    def __contains__(self, name: str) -> bool:
        return any(name.startswith(p) for p in self.prefixes)


def smollm2_core() -> tuple[Path, dict[str, LoraFactors]]:
    """SmolLM2 and the demo's core (the demo's cache, or trained once with the demo recipe)."""
    from emshield.demo import demo_core
    from emshield.model.adapter import load_core
    from emshield.model.smollm2 import cache_root

    backbone, cache, line = demo_core("smollm2", cache_root())
    print(line, file=sys.stderr)
    return backbone, load_core(cache / "core.safetensors")


if __name__ == "__main__":
    sys.exit(main())
