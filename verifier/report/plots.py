"""The report's plots, drawn with matplotlib's SVG backend into inline SVG text (spec/report.md,
"Plots").

Deterministic output: a fixed ``svg.hashsalt`` (element ids), no date or creator in the metadata,
text kept as text (``svg.fonttype: none``: small, selectable, searchable). No pyplot: each plot is
its own Figure, so nothing depends on global state or a display.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure

from verifier.report.data import BitEvidence, Distance

RC = {
    "svg.hashsalt": "emshield/report/v1",
    "svg.fonttype": "none",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
NULL_BAND = 3.0  # |Z| ≤ 3 holds 99.73 % of an unmarked core's statistics (N(0, 1))
LN10 = math.log(10.0)
OK, BAD, NEUTRAL, NULL = "#1a7f37", "#cf222e", "#57606a", "#d0d7de"


def to_svg(fig: Figure) -> str:
    """The figure as an inline <svg> element (no XML prologue, no dates)."""
    buf = io.StringIO()
    with matplotlib.rc_context(RC):
        FigureCanvasSVG(fig)
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list]:
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _normal_pdf(x: float) -> float:
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def bits_plot(ev: BitEvidence) -> str:
    """Per-bit statistic aligned with the best candidate codeword (c_i·Z_i), against the null band
    and the marking margin τ; and its histogram against the N(0, 1) null density."""
    aligned = [z * s for z, s in zip(ev.z, ev.signs)] if ev.signs else list(ev.z)
    with matplotlib.rc_context(RC):
        fig, (ax, hist) = _figure(9.0, 3.0, 2)
        xs = list(range(len(aligned)))
        ax.axhspan(-NULL_BAND, NULL_BAND, color=NULL, alpha=0.6, lw=0, label=f"null: |Z| ≤ {NULL_BAND:g} (99.7 %)")
        ax.axhline(ev.tau, color=OK, ls="--", lw=1, label=f"marking margin τ = {ev.tau:g}")
        ax.axhline(0, color=NEUTRAL, lw=0.8)
        colours = [OK if a > 0 else BAD for a in aligned]
        ax.scatter(xs, aligned, s=6, c=colours, zorder=3)
        ax.set_xlabel("code bit i")
        ax.set_ylabel("c_i·Z_i" if ev.signs else "Z_i")
        ax.set_title("per-bit statistic" + (", aligned with the best candidate" if ev.signs else ""))
        ax.legend(loc="lower right", fontsize=7, frameon=False)
        lo, hi = min(min(aligned), -4.0), max(max(aligned), ev.tau + 1, 4.0)
        bins = 30
        hist.hist(aligned, bins=bins, range=(lo, hi), density=True, color=OK, alpha=0.6, label="suspect")
        grid = [lo + (hi - lo) * k / 200 for k in range(201)]
        hist.plot(grid, [_normal_pdf(x) for x in grid], color=NEUTRAL, lw=1.2, label="null N(0, 1)")
        hist.axvline(ev.tau, color=OK, ls="--", lw=1)
        hist.set_xlabel("c_i·Z_i" if ev.signs else "Z_i")
        hist.set_ylabel("density")
        hist.set_title("distribution against the null")
        hist.legend(loc="upper left", fontsize=7, frameon=False)
    return to_svg(fig)


def pvalue_plot(reading: dict) -> str:
    """The chance-match bound log10 p(S) = log10(count) − S²/(2 ln 10) (and over every 2^48
    payload), the threshold, the suspect's score and the runner-up's."""
    count = max(int(reading["issuances_counted"]), 1)
    score = reading["score"] or 0.0
    top = max(score * 1.15, 12.0)
    grid = [top * k / 300 for k in range(301)]

    def bound(s: float, n: float) -> float:
        return min(0.0, math.log10(n) - s * s / (2 * LN10)) if s > 0 else 0.0

    with matplotlib.rc_context(RC):
        fig, (ax,) = _figure(9.0, 3.0)
        ax.axvspan(0, NULL_BAND, color=NULL, alpha=0.6, lw=0, label="an unmarked core's score (99.7 %)")
        ax.plot(grid, [bound(s, count) for s in grid], color=NEUTRAL, lw=1.2,
                label=f"p-value bound over the {count} issuances counted")
        ax.plot(grid, [bound(s, 2.0**48) for s in grid], color=NEUTRAL, lw=1, ls=":",
                label="… over every 2^48 payload")
        ax.axhline(math.log10(reading["p_value_threshold"]), color=BAD, ls="--", lw=1,
                   label=f"threshold p = {reading['p_value_threshold']:.0e}")
        if reading["score"] is not None:
            ax.axvline(score, color=OK if reading["accepted"] else BAD, lw=1.5,
                       label=f"suspect: S = {score:.2f}, log10 p = {reading['log10_p_value']:.1f}")
        if reading.get("runner_up_score"):
            ax.axvline(reading["runner_up_score"], color=BAD, lw=1, ls="-.",
                       label=f"runner-up mark: S = {reading['runner_up_score']:.2f}")
        ax.set_xlabel("score S = Σ c_i·Z_i / ‖Z‖")
        ax.set_ylabel("log10 chance-match p-value")
        ax.set_title(f"{reading['issuer']}: the p-value in context")
        ax.legend(loc="lower left", fontsize=7, frameon=False)
    return to_svg(fig)


def distance_plot(distances: Sequence[Distance], lineage: set[int], highlighted: str) -> str:
    """Fingerprint distance to every compared issuance against the calibrated threshold."""
    rows = sorted(distances, key=lambda d: (d.distance, d.leaf_index))
    with matplotlib.rc_context(RC):
        fig, (ax,) = _figure(9.0, 0.9 + 0.28 * len(rows))
        ys = list(range(len(rows)))[::-1]
        colours = [OK if d.leaf_index in lineage else NEUTRAL for d in rows]
        ax.barh(ys, [d.distance for d in rows], color=colours, height=0.6)
        ax.scatter([d.distance for d in rows], ys, c=colours, s=14, zorder=3)  # a distance of 0 stays visible
        threshold = rows[0].threshold if rows else 0.0
        ax.axvline(threshold, color=BAD, ls="--", lw=1, label=f"calibrated threshold {threshold:.3f}")
        ax.set_yticks(ys, [f"leaf {d.leaf_index} · {d.device_uuid[:8]}…" for d in rows])
        ax.set_xlabel("fingerprint distance (RMS feature difference)")
        ax.set_title(f"fingerprint distance to every compared issuance (green: {highlighted})")
        ax.legend(loc="lower right", fontsize=7, frameon=False)
    return to_svg(fig)


def layer_scores(ev: BitEvidence) -> list[tuple[str, float]]:
    """Per layer, the best candidate's score read from that layer alone (≈ N(0, 1) if unmarked)."""
    out = []
    for name, z in ev.layers:
        norm = math.sqrt(sum(x * x for x in z))
        signs = ev.signs or tuple(1 if x > 0 else -1 for x in ev.z)
        out.append((name, sum(c * x for c, x in zip(signs, z)) / norm if norm > 0 else 0.0))
    return out


def layers_plot(ev: BitEvidence | None, nearest: Distance | None) -> str:
    """Per-layer evidence: the watermark score of each layer alone, and the fingerprint distance
    of each layer to the nearest compared issuance."""
    panels = (ev is not None) + (nearest is not None)
    with matplotlib.rc_context(RC):
        fig, axes = _figure(9.0, 0.9 + 0.3 * max(len(ev.layers) if ev else 0, len(nearest.layers) if nearest else 0),
                            panels)
        it = iter(axes)
        if ev is not None:
            ax = next(it)
            scores = layer_scores(ev)
            ys = list(range(len(scores)))[::-1]
            ax.axvspan(-NULL_BAND, NULL_BAND, color=NULL, alpha=0.6, lw=0, label="null (99.7 %)")
            ax.barh(ys, [s for _, s in scores], color=[OK if s > NULL_BAND else NEUTRAL for _, s in scores], height=0.6)
            ax.set_yticks(ys, [_short(n) for n, _ in scores])
            ax.set_xlabel("watermark score of the layer alone")
            ax.set_title("watermark, per layer")
            ax.legend(loc="lower right", fontsize=7, frameon=False)
        if nearest is not None:
            ax = next(it)
            ys = list(range(len(nearest.layers)))[::-1]
            colours = [OK if d <= nearest.threshold else NEUTRAL for _, d in nearest.layers]
            ax.barh(ys, [d for _, d in nearest.layers], color=colours, height=0.6)
            ax.scatter([d for _, d in nearest.layers], ys, c=colours, s=14, zorder=3)
            ax.axvline(nearest.threshold, color=BAD, ls="--", lw=1, label=f"threshold {nearest.threshold:.3f}")
            ax.set_yticks(ys, [_short(n) for n, _ in nearest.layers])
            ax.set_xlabel(f"fingerprint distance to leaf {nearest.leaf_index}")
            ax.set_title("fingerprint, per layer")
            ax.legend(loc="lower right", fontsize=7, frameon=False)
    return to_svg(fig)


def _short(name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` → `layers.3.self_attn.q_proj`."""
    parts = [p for p in name.split(".") if p not in ("model", "weight")]
    return ".".join(parts)
