"""The suspect model as the verifier sees it: LoRA factors, or per-layer ΔW against a public backbone.

Accepted inputs (spec/verify.md, "Suspects"):
- a peft LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``), read with
  json and safetensors only (``emshield.model.adapter.read_peft_adapter``; peft is never imported);
- an EMShield core file (safetensors with metadata ``format = emshield/core/v1``);
- a merged model: a safetensors file, a Hugging Face folder (single or sharded), a ``.pt``/``.bin``
  state dict (zip or legacy, through the restricted unpickler of ``emshield.model.torchfile``) or a
  GGUF file. A merged model needs the public backbone: it is aligned to the backbone
  (``emshield.model.canonical``: permutations, rescalings, folded norms and dummy units undone), and
  ΔW = W_canonical − W_backbone is read lazily, one layer at a time.

Everything here is local I/O; nothing trusts the log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emshield.core import CORE_FORMAT, CORE_META_KEY, LoraFactors, ModelFileError
from emshield.marking import batched, fingerprint, secret, watermark
from emshield.marking.params import MarkingParams
from emshield.model.adapter import load_core, read_peft_adapter
from emshield.model.canonical import CanonicalError, Canonicaliser, LlamaShape, llama_layout
from emshield.model.io import PEFT_CONFIG, PEFT_WEIGHTS, TensorSource, backbone_id_of, open_tensors
from verifier.errors import BadSuspect, Unreadable

MAX_CONFIG_BYTES = 1 << 20

KIND_ADAPTER = "adapter"  # peft folder or core file: factors, no backbone needed
KIND_MERGED = "merged"  # full weights: ΔW against the backbone


def _float64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy()


@dataclass
class Suspect:
    """A loaded suspect. Use as a context manager: merged models keep their files open (lazy reads)."""

    path: Path
    kind: str
    core: dict[str, LoraFactors] | None = None
    backbone_id: str | None = None  # of --backbone, when one was given
    _weights: TensorSource | None = None
    _backbone: TensorSource | None = None
    _canonical: Canonicaliser | None = None
    _canonical_note: str = ""
    _deltas: dict[str, np.ndarray] = field(default_factory=dict)
    _stack: ExitStack = field(default_factory=ExitStack)

    def __enter__(self) -> Suspect:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def describe(self) -> dict[str, Any]:
        """The verdict's ``suspect`` object: what was read, and what canonicalisation undid."""
        out: dict[str, Any] = {"path": str(self.path), "kind": self.kind, "backbone_id": self.backbone_id}
        if self.kind == KIND_MERGED:
            if self._canonical is not None:
                undone = ", ".join(f"{k} {v}" for k, v in sorted(self._canonical.report.items()))
                out["canonicalisation"] = "aligned to the backbone" + (f": {undone}" if undone else ": nothing to undo")
            else:
                out["canonicalisation"] = f"not aligned ({self._canonical_note})"
        return out

    def unfit_reason(self, params: MarkingParams) -> str | None:
        """Why these marking parameters cannot apply to this suspect (None: they can).

        Parameters apply when their backbone is the given backbone (if one was given; a merged
        model always has one) and every marked layer is present with the parameters' ΔW shape.
        Raises BadSuspect for a merged model that lacks a marked tensor the backbone has.
        """
        if self.backbone_id is not None and params.backbone_id != self.backbone_id:
            return f"parameters are for backbone {params.backbone_id[:16]}…, not {self.backbone_id[:16]}…"
        for layer in params.layers:
            want = (layer.out_features, layer.in_features)
            if self.core is not None:
                f = self.core.get(layer.name)
                if f is None:
                    return f"suspect has no adapter for layer {layer.name}"
                if f.shape != want:
                    return f"layer {layer.name}: adapter ΔW shape {f.shape}, parameters say {want}"
                continue
            assert self._weights is not None and self._backbone is not None
            if layer.name not in self._backbone or tuple(self._backbone.get(layer.name).shape) != want:
                return f"the backbone has no tensor {layer.name} of shape {want}"
            # The parameters fit the backbone: a suspect that differs in layout is not a merge of it
            # (canonicalisation maps a rewritten layout back to the backbone's shapes).
            if self._canonical is not None:
                continue
            if layer.name not in self._weights or tuple(self._weights.get(layer.name).shape) != want:
                raise BadSuspect(f"{self.path} is not a merge of the given backbone: its tensor {layer.name} "
                                 f"is missing or not of the backbone's shape {want}")
        return None

    def delta(self, name: str) -> np.ndarray:
        """ΔW of one layer of a merged model in float64 (cached: several issuers may read it)."""
        if name not in self._deltas:
            assert self._weights is not None and self._backbone is not None
            w0 = _float64(self._backbone.get(name))
            if self._canonical is not None:
                try:
                    w = self._canonical.tensor(name)
                except CanonicalError as exc:
                    raise BadSuspect(f"{self.path} is not a merge of the given backbone (nor a rewrite of one): "
                                     f"{exc}") from exc
            else:
                w = _float64(self._weights.get(name))
            if w.shape != w0.shape:
                raise BadSuspect(f"tensor {name}: suspect shape {w.shape} differs from the backbone's {w0.shape}")
            if not np.all(np.isfinite(w)):
                raise BadSuspect(f"tensor {name}: suspect holds non-finite values")
            self._deltas[name] = w - w0
        return self._deltas[name]

    def _read(self, params: MarkingParams, from_factors: Callable, from_deltas: Callable, what: str) -> Any:
        try:
            if self.core is not None:
                return from_factors(self.core, params)
            return from_deltas(self.delta, params)
        except BadSuspect:
            raise
        except ValueError as exc:  # e.g. a layer with ΔW = 0: nothing to read
            raise Unreadable(f"cannot read {what}: {exc}") from exc

    def extract(self, params: MarkingParams) -> watermark.Extraction:
        """Blind watermark read-out under one issuer's parameters."""
        return self._read(params, watermark.extract_from_factors, watermark.extract_from_deltas, "a watermark")

    def fingerprint(self, params: MarkingParams) -> fingerprint.Fingerprint:
        """The suspect's fingerprint under one issuer's parameters."""
        return self._read(params, fingerprint.fingerprint_factors, fingerprint.fingerprint_deltas, "a fingerprint")

    def secret_presence(self, params: MarkingParams, key: bytes) -> secret.Presence:
        """The secret tier's presence score of one detection key (a disclosed one, or the issuer's own)."""
        return self._read(params, lambda core, p: secret.presence_from_factors(core, key, p),
                          lambda deltas, p: secret.presence_from_deltas(deltas, key, p), "the secret tier")

    def secret_scores(self, params: MarkingParams, keys: list[bytes]) -> np.ndarray:
        """Presence scores of many detection keys at once (the issuer's trace, emshield.trace)."""
        def deltas(name: str) -> np.ndarray:
            return self.core[name].delta() if self.core is not None else self.delta(name)
        return self._read(params, lambda core, p: batched.scores(deltas, keys, p),
                          lambda _, p: batched.scores(deltas, keys, p), "the secret tier")


def _is_core_file(path: Path) -> bool:
    with open_tensors(path) as src:
        return src.metadata.get(CORE_META_KEY) == CORE_FORMAT


def _backbone_id(src: TensorSource, path: Path) -> str:
    if not len(src):
        raise BadSuspect(f"backbone {path} holds no tensors")
    return backbone_id_of(src)


def _backbone_shape(backbone: Path) -> LlamaShape | None:
    """The Llama shape from the backbone folder's ``config.json`` (None: no config beside it)."""
    config = (backbone if backbone.is_dir() else backbone.parent) / "config.json"
    if not config.is_file():
        return None
    if config.stat().st_size > MAX_CONFIG_BYTES:
        raise BadSuspect(f"{config} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadSuspect(f"{config} is not a readable JSON config: {exc}") from exc
    if not isinstance(cfg, dict):
        raise BadSuspect(f"{config} is not a JSON object")
    try:
        return LlamaShape.from_config(cfg)
    except CanonicalError:
        return None


def _attach_canonicaliser(suspect: Suspect, backbone: Path) -> None:
    """Align a merged suspect to the backbone before differencing (spec/verify.md §2.1), when both
    have the Llama layout and the backbone's config gives its head structure."""
    assert suspect._weights is not None and suspect._backbone is not None
    shape = _backbone_shape(backbone)
    if shape is None:
        suspect._canonical_note = "the backbone has no Llama config.json beside it"
        return
    names_s, names_b = set(suspect._weights.keys()), set(suspect._backbone.keys())
    if not (llama_layout(names_b, shape) and llama_layout(names_s, shape)):
        suspect._canonical_note = "the suspect or the backbone lacks the Llama tensor layout"
        return
    weights, bb = suspect._weights, suspect._backbone

    def read(src: TensorSource) -> Callable[[str], np.ndarray]:
        def get(name: str) -> np.ndarray:
            arr = _float64(src.get(name))
            if not np.all(np.isfinite(arr)):
                raise BadSuspect(f"tensor {name}: holds non-finite values")
            return arr
        return get

    suspect._canonical = Canonicaliser(read(weights), read(bb), names_s, shape)


def load_suspect(path: str | Path, backbone: str | Path | None = None) -> Suspect:
    """Open a suspect (see the module docstring for the accepted layouts).

    Raises BadSuspect for anything unreadable, unsafe (a pickle with code), or a merged model
    without a backbone. A bare ``adapter_model.safetensors`` without its config is refused: the
    LoRA scale lives in the config.
    """
    p = Path(path)
    bb = Path(backbone) if backbone is not None else None
    suspect = Suspect(p, KIND_MERGED)
    try:
        if bb is not None:
            bsrc = suspect._stack.enter_context(open_tensors(bb))
            suspect.backbone_id = _backbone_id(bsrc, bb)
            suspect._backbone = bsrc
        if p.is_dir() and (p / PEFT_CONFIG).is_file():
            suspect.kind, suspect.core = KIND_ADAPTER, read_peft_adapter(p)
        elif p.is_dir() and (p / PEFT_WEIGHTS).is_file():
            raise BadSuspect(f"{p}: {PEFT_WEIGHTS} without {PEFT_CONFIG} (the LoRA scale is in the config)")
        elif p.is_file() and p.suffix == ".safetensors" and _is_core_file(p):
            suspect.kind, suspect.core = KIND_ADAPTER, load_core(p)
        else:
            weights = suspect._stack.enter_context(open_tensors(p))
            if any(".lora_A" in k or ".lora_B" in k for k in weights.keys()):
                raise BadSuspect(f"{p}: holds LoRA factors but is not an adapter folder with {PEFT_CONFIG}")
            if bb is None:
                raise BadSuspect(f"{p} is a merged model: give the public backbone with --backbone")
            suspect._weights = weights
            _attach_canonicaliser(suspect, bb)
        return suspect
    except ModelFileError as exc:
        suspect.close()
        raise BadSuspect(str(exc)) from exc
    except BaseException:
        suspect.close()
        raise
