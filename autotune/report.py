"""`autotune report`: one self-contained HTML file of plotly figures about the store.

plotly.js is embedded inline (no CDN): the file opens on an offline machine. The page
opens with what `autotune export` writes per study and the confirmation's verdict in
words; then the figures: optimisation history coloured by strategy, best search score
so far per context, strategy shares over time, parallel coordinates and parameter
importances per study, and tok/s against context length for the baseline and the
exported config (confirmed medians where re-measured). The search's maximum is
labelled unconfirmed wherever it appears.
"""

from __future__ import annotations

import html
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autotune.store.views import StudyView, is_feasible, metric_medians
from autotune.export import confirmed_metrics, export_choice, write_atomic
from autotune.verdict import plain_verdict, plural

# plotly and optuna are imported where a figure is drawn: `autotune tune` reads
# DEFAULT_OUT from here and must not pay for them.

DEFAULT_OUT = Path("studies/report.html")
# Optuna's importances fit a random forest to the trials: below this many completed
# trials they are left out, and below CAVEAT_TRIALS they carry a caveat.
MIN_IMPORTANCE_TRIALS = 10
CAVEAT_TRIALS = 30
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#17becf", "#bcbd22"]


def _strategy(trial) -> str:
    if trial.user_attrs.get("baseline") is True:
        return "baseline"
    return str(trial.user_attrs.get("strategy") or "unknown")


def _colours(views: list[StudyView]) -> dict[str, str]:
    names = sorted({_strategy(t) for v in views for t in v.trials})
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)}


def _label(view: StudyView) -> str:
    return view.name


def history_figure(views: list[StudyView], colours: dict[str, str]):
    """Score per trial, one panel per study, one colour per proposing strategy."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    height = max(360, 260 * len(views))
    # ~80 px between panels, whatever their number, so titles clear the axis above.
    fig = make_subplots(rows=len(views), cols=1, subplot_titles=[_label(v) for v in views],
                        vertical_spacing=min(0.3, 80 / height) if len(views) > 1 else 0.0)
    shown = set()
    for row, view in enumerate(views, start=1):
        by_strategy: dict[str, list] = {}
        for trial in view.complete:
            by_strategy.setdefault(_strategy(trial), []).append(trial)
        for name, trials in sorted(by_strategy.items()):
            fig.add_trace(go.Scatter(
                x=[t.number for t in trials], y=[t.value for t in trials], mode="markers",
                name=name, legendgroup=name, showlegend=name not in shown,
                marker=dict(color=colours[name], size=9,
                            symbol=["circle" if is_feasible(t) else "circle-open" for t in trials]),
                hovertext=[_hover(t) for t in trials], hoverinfo="text",
            ), row=row, col=1)
            shown.add(name)
        _mark_search_max_and_export(fig, view, row)
        fig.update_yaxes(title_text="score", row=row, col=1)
    fig.update_xaxes(title_text="trial number", row=len(views), col=1)
    fig.update_layout(title="Optimisation history (open circles: below the recall floor)",
                      height=height)
    return fig


def _mark_search_max_and_export(fig, view: StudyView, row: int) -> None:
    """Arrows at the search's maximum (unconfirmed) and at the trial export writes."""
    chosen, source = export_choice(view)
    best = view.best
    marks = []
    if best is not None:
        marks.append((best, "search max (unconfirmed)", -30))
    if chosen is not None and chosen.value is not None:
        label = "export: confirmed winner" if source == "tuned" else "export: baseline stays"
        marks.append((chosen, label, 30))
    for trial, text, dy in marks:
        fig.add_annotation(x=trial.number, y=trial.value, text=text, showarrow=True, arrowhead=2,
                           ay=dy, ax=20, font=dict(size=11), row=row, col=1)


def _hover(trial) -> str:
    knobs = ", ".join(f"{k}={v}" for k, v in trial.params.items())
    return f"#{trial.number} {_strategy(trial)}<br>score {trial.value:.3f}<br>{knobs}"


def best_so_far_figure(views: list[StudyView]):
    import plotly.graph_objects as go

    fig = go.Figure()
    for view in views:
        xs, ys, best = [], [], None
        for trial in view.complete:
            if is_feasible(trial) and (best is None or trial.value > best):
                best = trial.value
            if best is not None:
                xs.append(trial.number)
                ys.append(best)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", line_shape="hv", name=_label(view)))
    fig.update_layout(title="Best search score so far, per context length (unconfirmed: a maximum of noisy "
                            "measurements; the verdict above says what holds up)",
                      xaxis_title="trial number", yaxis_title="best feasible search score", height=420)
    return fig


def strategy_share_figure(views: list[StudyView], colours: dict[str, str]):
    """Cumulative share of trials proposed by each strategy, pooled over studies by trial number."""
    import plotly.graph_objects as go

    trials = sorted(((t.number, _strategy(t)) for v in views for t in v.trials), key=lambda p: p[0])
    names = sorted({s for _, s in trials})
    numbers = sorted({n for n, _ in trials})
    counts = {s: 0 for s in names}
    series: dict[str, list[int]] = {s: [] for s in names}
    index = 0
    for number in numbers:
        while index < len(trials) and trials[index][0] <= number:
            counts[trials[index][1]] += 1
            index += 1
        for s in names:
            series[s].append(counts[s])
    fig = go.Figure()
    for s in names:
        fig.add_trace(go.Scatter(x=numbers, y=series[s], name=s, mode="lines", stackgroup="share",
                                 groupnorm="percent", line=dict(color=colours[s])))
    fig.update_layout(title="Strategy shares over time (trials proposed so far, all studies)",
                      xaxis_title="trial number", yaxis_title="% of trials", height=420)
    return fig


def parallel_figure(view: StudyView):
    """Parallel coordinates of the knobs (categorical axes) and the score."""
    import plotly.graph_objects as go

    trials = view.complete
    params = sorted({p for t in trials for p in t.params})
    dimensions = []
    for param in params:
        values = sorted({t.params.get(param) for t in trials if param in t.params}, key=_sort_key)
        position = {v: i for i, v in enumerate(values)}
        dimensions.append(dict(
            label=param, tickvals=list(range(len(values))), ticktext=[str(v) for v in values],
            range=[-0.5, max(0.5, len(values) - 0.5)],
            values=[position.get(t.params.get(param), 0) for t in trials],
        ))
    scores = [t.value for t in trials]
    dimensions.append(dict(label="score", values=scores))
    fig = go.Figure(go.Parcoords(
        dimensions=dimensions,
        line=dict(color=scores, colorscale="Viridis", showscale=True, colorbar=dict(title="score")),
    ))
    fig.update_layout(title=f"Parallel coordinates: {_label(view)}", height=420)
    return fig


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def importances(view: StudyView, study) -> tuple[dict[str, float] | None, str | None]:
    """(importance per knob, None) or (None, why there are none)."""
    import optuna

    complete = view.complete
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return None, (f"{plural(len(complete), 'completed trial')}; importances are shown from "
                      f"{MIN_IMPORTANCE_TRIALS} on, as a forest fitted to fewer says little")
    varied = [p for p in {p for t in complete for p in t.params} if len({t.params.get(p) for t in complete}) > 1]
    if not varied:
        return None, "no knob took more than one value"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = optuna.importance.get_param_importances(study, params=sorted(varied))
        except (ValueError, RuntimeError) as exc:
            return None, f"importances unavailable: {exc}"
    if any("too small" in str(w.message) for w in caught):
        return None, f"too few completed trials ({len(complete)}) for importances"
    return dict(result), None


def importance_figure(views: list[StudyView]):
    import plotly.graph_objects as go

    fig = go.Figure()
    notes = []
    for view in views:
        result, why = importances(view, view.study)
        if result is None:
            notes.append(f"{_label(view)}: {why}")
            continue
        names = sorted(result)
        fig.add_trace(go.Bar(x=names, y=[result[n] for n in names], name=_label(view)))
        if len(view.complete) < CAVEAT_TRIALS:
            notes.append(f"{_label(view)}: from only {plural(len(view.complete), 'completed trial')}; "
                         f"a rough hint below {CAVEAT_TRIALS}")
    fig.update_layout(title="Parameter importances (Optuna, per study)", barmode="group",
                      yaxis_title="importance", height=420)
    if notes:
        fig.add_annotation(text="<br>".join(html.escape(n) for n in notes), showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=1.0, yanchor="top", align="left")
    return fig


def _confirmed_medians(view: StudyView, trial) -> dict[str, float]:
    """A trial's medians: the confirmation's re-measurement where there is one."""
    return (confirmed_metrics(view.user_attrs.get("confirmation"), trial.number)
            or metric_medians(trial.user_attrs.get("metrics")))


def throughput_figure(views: list[StudyView]):
    """Prefill and decode tok/s (medians) against context, baseline vs what export
    writes, per group; confirmed medians where the configs were re-measured."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["prefill tok/s", "decode tok/s"])
    groups: dict[str, list[StudyView]] = {}
    for view in views:
        groups.setdefault(f"{view.key.shape}/{view.key.device_kind}/{'+'.join(view.key.backends)}/{view.dtype}", []).append(view)
    for index, (group, members) in enumerate(sorted(groups.items())):
        members = sorted(members, key=lambda v: v.key.context)
        colour = _PALETTE[index % len(_PALETTE)]
        for which, dash in (("baseline", "dot"), ("exported", "solid")):
            picked = [(v, v.baseline if which == "baseline" else export_choice(v)[0]) for v in members]
            picked = [(v.key.context, _confirmed_medians(v, t)) for v, t in picked if t is not None]
            for col, metric in ((1, "prefill_tok_s"), (2, "decode_tok_s")):
                points = [(c, m[metric]) for c, m in picked if metric in m]
                fig.add_trace(go.Scatter(
                    x=[c for c, _ in points], y=[y for _, y in points], mode="lines+markers",
                    name=f"{group} {which}", legendgroup=f"{group} {which}", showlegend=col == 1,
                    line=dict(color=colour, dash=dash),
                ), row=1, col=col)
    fig.update_xaxes(type="log", title_text="context length (tokens)")
    fig.update_yaxes(title_text="tok/s")
    fig.update_layout(title="Throughput against context length: baseline (dotted) and what export writes "
                            "(solid), confirmed medians where re-measured", height=440)
    return fig


def summary_table(views: list[StudyView]) -> str:
    """What `autotune export` writes per study, with the verdict in words."""
    rows, verdicts = [], []
    for view in views:
        chosen, source = export_choice(view)
        best, baseline = view.best, view.baseline
        m = _confirmed_medians(view, chosen) if chosen is not None else {}
        fingerprint = view.user_attrs.get("fingerprint") or {}
        cells = [
            view.name, f"{len(view.complete)}/{len(view.trials)}",
            f"{source} (#{chosen.number})" if chosen is not None else "-",
            ", ".join(f"{k}={v}" for k, v in chosen.params.items()) if chosen is not None else "-",
            f"{m['prefill_tok_s']:,.1f}" if "prefill_tok_s" in m else "-",
            f"{m['decode_tok_s']:,.1f}" if "decode_tok_s" in m else "-",
            f"{best.value:.3f} (#{best.number})" if best else "-",
            f"{baseline.value:.3f}" if baseline else "-",
            fingerprint.get("device_name", "-"),
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
        verdicts.append(f"<li><b>{html.escape(view.name)}</b>: "
                        f"{html.escape(plain_verdict(view.user_attrs.get('confirmation')))}</li>")
    head = "".join(f"<th>{h}</th>" for h in [
        "study", "completed/all", "export writes", "config", "prefill tok/s", "decode tok/s",
        "search max (unconfirmed)", "baseline search score", "device"])
    return (f"<table id='export'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"<ul id='verdicts'>{''.join(verdicts)}</ul>")


def build_report(views: list[StudyView], *, source: str) -> str:
    """The whole HTML page (plotly.js inline in the first figure)."""
    import plotly.io as pio

    colours = _colours(views)
    figures = [
        ("Optimisation history", history_figure(views, colours)),
        ("Best so far", best_so_far_figure(views)),
        ("Strategy shares", strategy_share_figure(views, colours)),
    ]
    figures += [(f"Parallel coordinates: {v.name}", parallel_figure(v)) for v in views if v.complete]
    figures += [
        ("Parameter importances", importance_figure(views)),
        ("Throughput against context length", throughput_figure(views)),
    ]
    parts = []
    for index, (title, fig) in enumerate(figures):
        div = pio.to_html(fig, include_plotlyjs=index == 0, full_html=False,
                          config={"displaylogo": False, "responsive": True})
        parts.append(f"<section><h2>{html.escape(title)}</h2>{div}</section>")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>xlstm-autotune report</title>
<style>body{{font-family:sans-serif;margin:1.5em;}} table{{border-collapse:collapse;}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:90%;}}</style></head>
<body><h1>xlstm-autotune report</h1>
<p>Store: {html.escape(source)} &middot; {plural(len(views), 'study', 'studies')} &middot; written {stamp}.
Score = w_decode&middot;decode/baseline + w_prefill&middot;prefill/baseline + w_recall&middot;recall
(README, "Tuning"), so each speed term is 1.0 at the baseline's speed; open markers fell below the recall floor.</p>
<h2>What <code>autotune export</code> writes</h2>
<p>Per study: the confirmed winner, or the baseline when nothing beat it beyond noise when
re-measured. Speeds are the re-measured medians where there are any. The search maximum is
the best of many noisy measurements and is unconfirmed.</p>
{summary_table(views)}
{''.join(parts)}
</body></html>
"""


def write_report(views: list[StudyView], out: Path, *, source: str) -> None:
    """Write the report of `views` to `out` (atomically); `source` names the store."""
    write_atomic(out, build_report(views, source=source))
