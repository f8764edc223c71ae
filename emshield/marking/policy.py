"""Marking policy: watermark + fingerprint when the core tolerates the mark, fingerprint only otherwise.

The fingerprint changes no weight, so every core gets one. The watermark is embedded, its cost is
measured, and it is kept only when the cost is within the caller's tolerance:
- with a task evaluation (a callable scoring a core: accuracy in [0, 1] and loss), the accuracy
  drop in percentage points and the relative loss change;
- without one, in input-aware mode the relative change of the layer outputs on the task inputs;
  otherwise the relative weight perturbation ‖δΔW‖_F / ‖W‖_F per layer (the relative output
  perturbation on isotropic inputs) when the backbone's weight norms are given, else the relative
  change of ΔW itself.
The decision and the figures behind it form a :class:`MarkRecord` for the issuance entry.

Extraction is blind and reads only the code statistics, so HOW the embedding reached them is the
issuer's choice: with a task evaluation and input moments the policy tries the fixed list
:data:`CANDIDATES` in order and keeps the first embedding within tolerance (the cost depends on the
payload's sign pattern, and different metrics put the change in different places).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from emshield.core import Core, LoraFactors
from emshield.marking import fingerprint, secret, watermark
from emshield.marking.params import MarkingParams, watermark_commitment

MODE_BOTH = "both"  # the log entry's policy values (spec/entry.md): "both" and "fingerprint"
MODE_FINGERPRINT = "fingerprint"

TaskEval = Callable[[Core], tuple[float, float]]
"""Scores a core on the task: (accuracy in [0, 1], mean loss)."""


@dataclass(frozen=True)
class Embedding:
    """One way to reach the mark's statistics: input-aware with ridge ρ, or plain (``ridge`` None)."""

    ridge: float | None

    @property
    def name(self) -> str:
        return "plain" if self.ridge is None else f"input-aware rho={self.ridge:g}"


CANDIDATES: tuple[Embedding, ...] = (Embedding(0.1), Embedding(0.01), Embedding(1.0), Embedding(None))
"""Tried in this order when the policy has a task evaluation and input moments (spec/watermark.md,
"Policy"): ρ = 0.1 meets the target for most payloads, ρ = 0.01 and 1 move the change to other input
directions, plain spreads it evenly. Without input moments only plain; without a task evaluation
only the first (nothing to choose by)."""


@dataclass(frozen=True)
class Tolerance:
    max_accuracy_drop_pp: float = 0.5
    max_loss_increase: float = 0.01  # relative
    # relative output perturbation (or ΔW change) without a task eval. 0.15: the plain τ = 3 mark
    # on the fixture recipe core perturbs its weights by 0.10-0.11 and costs no accuracy there
    # (spec/notes/watermark-fidelity.md), so the default issues traceable cores; with task data the
    # measured accuracy and loss decide instead.
    max_perturbation: float = 0.15


@dataclass(frozen=True)
class MarkRecord:
    """What `emshield mark` decided and why (JSON-able; the entry carries commitment and hash)."""

    mode: str
    reason: str
    metric: str
    measured: float | None
    tolerance: float
    payload: int | None
    watermark_commitment: str | None  # hex
    fingerprint_hash: str  # hex
    params_digest: str  # hex
    relative_delta_change: float | None
    min_margin: float | None
    accuracy_unmarked: float | None = None
    accuracy_marked: float | None = None
    loss_unmarked: float | None = None
    loss_marked: float | None = None
    embedding: str | None = None  # the candidate kept (Embedding.name), None when none was
    candidates_tried: tuple[str, ...] = ()  # "name: outcome" per candidate, in order
    secret_commitment: str | None = None  # hex, the secret tier's commitment when it was embedded
    secret_score: float | None = None  # the secret tier's presence score on the issued core
    secret_tau: float | None = None  # the margin the secret tier was embedded at (secret.STRENGTHS)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MarkResult:
    core: dict[str, LoraFactors]  # the core to issue (marked or untouched)
    fingerprint: fingerprint.Fingerprint
    record: MarkRecord


def attempts(candidates: Sequence[Embedding], secret_tier: bool) -> list[tuple[Embedding, float | None]]:
    """(embedding, secret-tier margin) pairs in the order the policy tries them.

    Without the secret tier: the candidates. With it: the first candidate at each margin of
    secret.STRENGTHS stronger than the floor, strongest first, then every candidate at the floor, so
    a core that tolerates a strong mark gets one at the cost of a few more evaluations, and a core
    that does not is marked exactly as it would be at the floor alone."""
    if not secret_tier:
        return [(c, None) for c in candidates]
    *stronger, floor = secret.STRENGTHS
    return [(candidates[0], tau) for tau in stronger] + [(c, floor) for c in candidates]


def output_perturbation(
    before: Core, after: Core, backbone_norms: Mapping[str, float] | None = None
) -> tuple[str, float]:
    """(metric name, worst layer value): ‖δΔW‖_F / ‖W‖_F with backbone norms, else / ‖ΔW‖_F."""
    worst = 0.0
    for name, f in after.items():
        change = float(np.linalg.norm(f.delta() - before[name].delta()))
        if backbone_norms is None:
            ref = float(np.linalg.norm(before[name].delta()))
        elif name in backbone_norms and backbone_norms[name] > 0:
            ref = backbone_norms[name]
        else:
            raise ValueError(f"no backbone weight norm for layer {name}")
        if change > 0:
            worst = max(worst, change / ref)
    return ("relative weight perturbation" if backbone_norms is not None else "relative ΔW change"), worst


def mark(
    core: Core,
    payload: int,
    params: MarkingParams,
    tolerance: Tolerance = Tolerance(),
    task_eval: TaskEval | None = None,
    backbone_norms: Mapping[str, float] | None = None,
    input_moments: Mapping[str, np.ndarray] | None = None,
    candidates: Sequence[Embedding] | None = None,
    baseline: tuple[float, float] | None = None,
    detection: secret.DetectionKey | None = None,
) -> MarkResult:
    """Try the watermark, keep it if its measured cost is within tolerance; fingerprint the issued core.

    ``input_moments`` (per layer E[x·xᵀ] on task data) selects input-aware embedding. With a task
    evaluation the ``candidates`` (default :data:`CANDIDATES`, plain only without input moments) are
    tried in order and the first within tolerance is kept; fingerprint only when none is. Without a
    task evaluation only the first candidate is measured. ``baseline`` is ``task_eval(core)`` when
    the caller measured it already: the unmarked core is the same for every device it is issued to.
    With ``detection`` (the issuance's secret-tier key) every candidate embeds both tiers jointly and
    the tolerance is measured with both present (spec/watermark.md, "Secret tier"). The secret tier
    is the only mark a leaker who read the log cannot locate, so its one enemy is blind damage, whose
    reach the task's own tolerance bounds: the policy embeds it as strongly as the tolerance allows,
    trying the stronger margins of :data:`secret.STRENGTHS` with the first candidate, then the
    floor margin with every candidate (see :func:`attempts`).
    """
    if candidates is None:
        candidates = CANDIDATES if input_moments is not None else (Embedding(None),)
    candidates = tuple(candidates)
    if not candidates:
        raise ValueError("no embedding candidates to try")
    if input_moments is None and any(c.ridge is not None for c in candidates):
        raise ValueError("an input-aware embedding candidate needs input moments")
    if task_eval is None:
        candidates = candidates[:1]  # nothing measured to choose by
    digest = params.digest().hex()
    if task_eval is None:
        baseline = None
    elif baseline is None:
        baseline = task_eval(core)
    tried: list[str] = []
    failed: tuple[str, str, float | None, float, dict] | None = None
    directions = None if detection is None else secret.directions(detection.key, params)
    for cand, tau in attempts(candidates, directions is not None):
        extra = None if directions is None else secret.at_strength(directions, tau)
        name = cand.name if tau is None else f"{cand.name}, secret tau={tau:g}"
        try:
            if cand.ridge is None:
                marked, report = watermark.embed(core, payload, params, extra=extra)
            else:
                marked, report = watermark.embed(core, payload, params, input_moments, cand.ridge, extra=extra)
        except watermark.CapacityError as exc:
            tried.append(f"{name}: does not fit")
            failed = (f"watermark does not fit: {exc}", "capacity", None, tolerance.max_perturbation, {})
            continue
        change = max(report.relative_change.values())
        figures: dict = {"change": change, "margin": report.min_margin}
        if baseline is not None:
            acc0, loss0 = baseline
            acc1, loss1 = task_eval(marked)
            drop_pp = 100.0 * (acc0 - acc1)
            loss_rel = (loss1 - loss0) / abs(loss0) if loss0 else float("inf")
            figures.update(accuracy_unmarked=acc0, accuracy_marked=acc1, loss_unmarked=loss0, loss_marked=loss1)
            outcome = f"{drop_pp:+.2f} pp accuracy drop, {100 * loss_rel:+.2f} % loss"
            if drop_pp > tolerance.max_accuracy_drop_pp:
                failed = (f"watermark costs {drop_pp:.2f} pp accuracy", "accuracy drop (pp)", drop_pp,
                          tolerance.max_accuracy_drop_pp, figures)
            elif loss_rel > tolerance.max_loss_increase:
                failed = (f"watermark raises the loss by {100 * loss_rel:.2f} %", "relative loss increase", loss_rel,
                          tolerance.max_loss_increase, figures)
            else:
                metric, measured, limit = "accuracy drop (pp)", drop_pp, tolerance.max_accuracy_drop_pp
                failed = None
        else:
            if report.relative_output_change:
                metric, measured = "relative output change on task inputs", max(report.relative_output_change.values())
            else:
                metric, measured = output_perturbation(core, marked, backbone_norms)
            limit = tolerance.max_perturbation
            outcome = f"{metric} {measured:.4f}"
            failed = (f"watermark {metric} {measured:.4f} above {limit}", metric, measured, limit, figures) \
                if measured > limit else None
        tried.append(f"{name}: {outcome}" + (" (over tolerance)" if failed else ""))
        if failed is None:
            fp = fingerprint.fingerprint_factors(marked, params)
            figures.pop("change"), figures.pop("margin")
            secret_figures = {} if detection is None else {
                "secret_commitment": detection.commitment.hex(),
                "secret_score": secret.presence(report.extra_terms_after).score,
                "secret_tau": tau,
            }
            record = MarkRecord(
                MODE_BOTH, "within tolerance", metric, measured, limit, payload,
                watermark_commitment(payload, params).hex(), fp.hash().hex(), digest, change, report.min_margin,
                **figures, embedding=cand.name, candidates_tried=tuple(tried), **secret_figures,
            )
            return MarkResult(marked, fp, record)
    assert failed is not None  # the loop returns on the first candidate within tolerance
    reason, metric, measured, limit, figures = failed
    if len(tried) > 1:
        reason = f"no embedding within tolerance ({len(tried)} tried; last: {reason})"
    fp = fingerprint.fingerprint_factors(core, params)
    record = MarkRecord(
        MODE_FINGERPRINT, reason, metric, measured, limit, None, None, fp.hash().hex(), digest,
        figures.pop("change", None), figures.pop("margin", None), **figures, candidates_tried=tuple(tried),
    )
    return MarkResult(dict(core), fp, record)
