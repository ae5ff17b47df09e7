"""The outputs of a replay comparison: a JSON summary and a self-contained plotly HTML.

JSON summary (schema_version 1):
    {"surface": {...}, "budget": B, "cutoff": c, "optimum": o, "median": m, "horizon": H,
     "seeds": n, "random_baseline": [S_rand(1..H)],
     "strategies": {name: {"p_score": {"mean", "std", "se", "per_seed",
                                      "vs_best": {"best", "diff", "se", "tie"}},
                           "reach": {"within_5pct": {"10": f, "25": f, "50": f, "100": f},
                                     "within_1pct": {...}},
                           "to_within_5pct": {"mean", "se", "reached", "per_seed"},
                           "ms_per_proposal": x, "evaluations": mean, "proposals": mean,
                           "invalid": mean, "revisits": mean, "exhausted": runs,
                           "mean_best": [...], "ci95_low": [...], "ci95_high": [...],
                           "shares": {member: fraction}}}}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from autotune.replay.runner import Comparison
from autotune.replay.scoring import evaluations_to_within, extend, p_score, reach_fractions
from autotune.replay.stats import mean_se, versus_best

# plotly is imported where the HTML page is drawn: the replay package imports this module
# for its tables, and plotly takes a second to load.

SCHEMA_VERSION = 1


def _clean(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def summarise(comp: Comparison) -> dict[str, Any]:
    surface = comp.surface
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "surface": {
            "name": surface.name,
            "source": surface.source,
            "objective": surface.objective,
            "direction": surface.direction,
            "configs": len(surface),
            "failing_configs": int(surface.failed.sum()),
            "knobs": {k: len(v) for k, v in surface.knobs.items()},
            **({"partial": surface.meta["partial"]} if "partial" in surface.meta else {}),
        },
        "budget": comp.budget,
        "cutoff": comp.cutoff,
        "optimum": surface.optimum,
        "median": surface.median,
        "horizon": comp.horizon,
        "seeds": len(comp.seeds),
        "random_baseline": comp.random_curve.tolist(),
        "strategies": {},
    }
    for name, traces in comp.traces.items():
        curves = [extend(t.best, comp.horizon, surface.worst) for t in traces]
        scores = np.array([p_score(c, comp.random_curve, surface.optimum, comp.budget) for c in curves])
        stack = np.vstack(curves)
        mean = stack.mean(axis=0)
        half = 1.96 * stack.std(axis=0, ddof=1) / math.sqrt(len(curves)) if len(curves) > 1 else np.zeros_like(mean)
        labels = [lab for t in traces for lab in t.proposed_by]
        shares = {lab: labels.count(lab) / len(labels) for lab in sorted(set(labels))} if labels else {}
        proposal_s = [s for t in traces for s in t.proposal_s]
        out["strategies"][name] = {
            "p_score": {"mean": _clean(mean_se(scores)[0]),
                        "std": _clean(float(np.nanstd(scores, ddof=1))) if len(scores) > 1 else 0.0,
                        "se": _clean(mean_se(scores)[1]),
                        "per_seed": [_clean(float(x)) for x in scores]},
            "reach": reach_fractions(curves, surface.optimum),
            "to_within_5pct": _to_within(traces, surface.optimum),
            "ms_per_proposal": _clean(1000.0 * float(np.mean(proposal_s))) if proposal_s else None,
            "evaluations": float(np.mean([t.evaluations for t in traces])),
            "proposals": float(np.mean([t.proposals for t in traces])),
            "invalid": float(np.mean([t.invalid for t in traces])),
            "revisits": float(np.mean([t.revisits for t in traces])),
            "exhausted": int(sum(t.exhausted for t in traces)),
            "mean_best": mean.tolist(),
            "ci95_low": (mean - half).tolist(),
            "ci95_high": (mean + half).tolist(),
            "shares": shares,
            "share_curves": _share_curves(traces, comp.horizon) if len(shares) > 1 else {},
        }
    attach_paired(out)
    return out


def attach_paired(summary: dict[str, Any]) -> None:
    """Set each strategy's p_score.vs_best: the paired comparison with the best of the summary."""
    paired = versus_best({n: s["p_score"]["per_seed"] for n, s in summary["strategies"].items()})
    for name, s in summary["strategies"].items():
        if name in paired:
            s["p_score"]["vs_best"] = {k: (_clean(v) if isinstance(v, float) else v) for k, v in paired[name].items()}


def _mark(name: str, p: dict[str, Any]) -> str:
    """'best', 'tie' (within 2 paired standard errors of the best) or the paired difference."""
    vs = p.get("vs_best")
    if not vs:
        return ""
    if vs["best"] == name:
        return "best"
    return "tie" if vs["tie"] else f"{_num(vs['diff']):+.3f}"


def _num(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _to_within(traces, optimum: float) -> dict[str, Any]:
    """Evaluations each run needed to come within 5% of the optimum: mean ± standard error
    over the runs that did, and the fraction that did within the horizon."""
    needed = [evaluations_to_within(t.best, optimum) for t in traces]
    mean, se = mean_se([float(n) for n in needed if n is not None])
    return {"mean": _clean(mean), "se": _clean(se), "reached": sum(n is not None for n in needed) / max(1, len(needed)),
            "per_seed": needed}


def _share_curves(traces, horizon: int, bins: int = 20) -> dict[str, Any]:
    """Fraction of evaluations each member proposed, per block of evaluations, over seeds."""
    edges = np.unique(np.linspace(0, horizon, min(bins, horizon) + 1).astype(int))
    names = sorted({lab for t in traces for lab in t.proposed_by})
    curves: dict[str, list[float]] = {n: [] for n in names}
    for lo, hi in zip(edges[:-1], edges[1:]):
        block = [lab for t in traces for lab in t.proposed_by[lo:hi]]
        for n in names:
            curves[n].append(block.count(n) / len(block) if block else 0.0)
    return {"at": [int(h) for h in edges[1:]], "fractions": curves}


def ranking(summary: dict[str, Any]) -> list[tuple[str, float]]:
    """Strategies by mean P-score, best first."""
    rows = [(n, s["p_score"]["mean"]) for n, s in summary["strategies"].items()]
    return sorted(rows, key=lambda r: -(r[1] if r[1] is not None else -math.inf))


def table(summary: dict[str, Any]) -> str:
    """A plain-text table of the summary (what the command prints)."""
    partial = summary["surface"].get("partial")
    lines = [
        f"surface {summary['surface']['name']}: {summary['surface']['configs']} configs"
        + (f" of {partial['configs']} (a sweep in progress)" if partial else "") + ", "
        f"{summary['surface']['objective']} ({summary['surface']['direction']}), optimum {summary['optimum']:.6g}, "
        f"budget {summary['budget']} evaluations, {summary['seeds']} seeds",
        "P-score: mean ± standard error over seeds; vs best: paired difference to the best, "
        "'tie' when under 2 standard errors",
        f"{'strategy':<22} {'P-score':>15} {'vs best':>7} {'5%@10':>6} {'5%@25':>6} {'1%@25':>6} {'1%@50':>6} {'ms/prop':>8} {'invalid':>8} {'revisit':>8}",
    ]
    for name, _ in ranking(summary):
        s = summary["strategies"][name]
        r5, r1 = s["reach"]["within_5pct"], s["reach"]["within_1pct"]
        p = s["p_score"]
        ms = s["ms_per_proposal"]
        lines.append(
            f"{name:<22} {_num(p['mean']):>7.3f} ± {_num(p.get('se')):<5.3f} {_mark(name, p):>7} {r5['10']:>6.2f} {r5['25']:>6.2f} {r1['25']:>6.2f} "
            f"{r1['50']:>6.2f} {(ms if ms is not None else float('nan')):>8.2f} {s['invalid']:>8.1f} {s['revisits']:>8.1f}"
        )
    return "\n".join(lines)


def write_json(summary: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


def write_html(summary: dict[str, Any], path: str | Path) -> None:
    """One self-contained HTML page (plotly inlined): best-so-far with 95% bands, P-score
    bars, the portfolio's strategy shares."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = [n for n, _ in ranking(summary)]
    horizon = summary["horizon"]
    ts = list(range(1, horizon + 1))
    fig = make_subplots(rows=3, cols=1, vertical_spacing=0.08,
                        subplot_titles=("Best so far (true value), mean with 95% band",
                                        "P-score (0 = random search, 1 = optimum), mean ± std over seeds",
                                        "Portfolio: share of evaluations per member strategy"))
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"]
    for i, name in enumerate(names):
        s = summary["strategies"][name]
        color = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=ts + ts[::-1], y=s["ci95_high"] + s["ci95_low"][::-1], fill="toself",
                                 fillcolor=color, opacity=0.15, line={"width": 0}, hoverinfo="skip",
                                 showlegend=False, legendgroup=name), row=1, col=1)
        fig.add_trace(go.Scatter(x=ts, y=s["mean_best"], name=name, line={"color": color}, legendgroup=name),
                      row=1, col=1)
    fig.add_trace(go.Scatter(x=ts, y=summary["random_baseline"], name="random (exact)",
                             line={"color": "black", "dash": "dot"}), row=1, col=1)
    fig.add_vline(x=summary["budget"], line={"dash": "dash", "color": "grey"}, row=1, col=1)
    fig.add_hline(y=summary["optimum"], line={"dash": "dash", "color": "green"}, row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=[summary["strategies"][n]["p_score"]["mean"] for n in names],
                         error_y={"type": "data", "array": [summary["strategies"][n]["p_score"]["std"] for n in names]},
                         marker_color=[palette[i % len(palette)] for i in range(len(names))], showlegend=False),
                  row=2, col=1)
    port = summary["strategies"].get("portfolio", {}).get("share_curves") or {}
    colour_of = {name: palette[i % len(palette)] for i, name in enumerate(names)}  # a member keeps its colour
    for member, fr in sorted((port.get("fractions") or {}).items()):
        fig.add_trace(go.Scatter(x=port["at"], y=fr, name=f"portfolio: {member}", stackgroup="shares",
                                 line={"width": 0.5, "color": colour_of.get(member, "#7f7f7f")}), row=3, col=1)
    fig.update_xaxes(title_text="evaluations", row=1, col=1)
    fig.update_yaxes(title_text=summary["surface"]["objective"], row=1, col=1)
    fig.update_xaxes(title_text="evaluations", row=3, col=1)
    fig.update_yaxes(range=[0, 1], row=3, col=1)
    surf = summary["surface"]
    of = f" of {surf['partial']['configs']} (a sweep in progress)" if "partial" in surf else ""
    fig.update_layout(height=1300, title=(f"Replay on {surf['name']} ({surf['configs']} configs{of}, {surf['objective']} "
                                          f"{surf['direction']}; budget {summary['budget']}, {summary['seeds']} seeds)"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)


def comparison_markdown(summaries: list[dict[str, Any]], order: list[str] | None = None) -> str:
    """One markdown table over several surfaces: mean P-score ± standard error per
    strategy; the best and those tied with it (paired difference under 2 standard
    errors) in bold. The seeds column is the most any strategy of the row ran; a strategy
    that ran fewer says how many (its paired verdict uses the seeds both ran)."""
    names = order or sorted({n for s in summaries for n in s["strategies"]})
    head = "| surface | configs | budget | seeds | " + " | ".join(names) + " |"
    lines = [head, "|" + " --- |" * (4 + len(names))]
    for s in summaries:
        means = {n: s["strategies"][n]["p_score"]["mean"] for n in names if n in s["strategies"]}
        best = max((m for m in means.values() if m is not None), default=None)
        cells = []
        row_seeds = max([_seeds_ran(s, n) for n in means] or [s["seeds"]])
        for n in names:
            if n not in s["strategies"] or means[n] is None:
                cells.append("")
                continue
            ps = s["strategies"][n]["p_score"]
            se = ps["se"] if ps.get("se") is not None else (ps["std"] or 0.0) / math.sqrt(max(1, s["seeds"]))
            text = f"{ps['mean']:.2f} ± {se:.2f}"
            tied = ps["vs_best"]["tie"] if "vs_best" in ps else means[n] == best
            ran = _seeds_ran(s, n)
            cells.append((f"**{text}**" if tied else text) + (f" ({ran} seeds)" if ran < row_seeds else ""))
        surf = s["surface"]
        lines.append(f"| {surf['name']} | {surf['configs']} | {s['budget']} | {row_seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seeds_ran(summary: dict[str, Any], name: str) -> int:
    per_seed = summary["strategies"][name]["p_score"].get("per_seed")
    return len(per_seed) if per_seed is not None else summary["seeds"]
