"""`autotune best`: what `autotune export` writes per context length, read from the
Optuna store, beside the search's (unconfirmed) maximum and the verdict in words."""

from __future__ import annotations

import argparse
from typing import Any

from autotune.commands.store_arguments import add_store_arguments, studies_from_args
from autotune.export import confirmed_metrics, export_choice
from autotune.names import KNOBS
from autotune.store.views import StudyView, knobs_of, metric_medians
from autotune.verdict import plain_verdict


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _config_text(config: dict[str, Any]) -> str:
    ordered = [k for k in KNOBS if k in config] + sorted(k for k in config if k not in KNOBS)
    return " ".join(f"{k}={config[k]}" for k in ordered)


def render_tables(views: list[StudyView]) -> str:
    """One table per (shape, device, backends, dtype): a row per context length saying
    what `autotune export` writes (speeds: confirmed medians where re-measured), then
    the search maximum, which no confirmation has vouched for, and the verdict in words."""

    groups: dict[tuple, list[StudyView]] = {}
    for view in views:
        groups.setdefault((view.key.shape, view.key.device_kind, "+".join(view.key.backends), view.dtype), []).append(view)
    headers = ["context", "trials", "export writes", "config", "prefill tok/s", "decode tok/s", "recall",
               "search max (unconfirmed)"]
    blocks = []
    for (shape, device_kind, backends, dtype), members in groups.items():
        rows, verdicts = [], []
        for view in members:
            done = f"{len(view.complete)}/{len(view.trials)}"
            chosen, source = export_choice(view)
            best = view.best
            search_max = f"{best.value:.3f} #{best.number} {best.user_attrs.get('strategy', '-')}" if best else "-"
            verdicts.append(f"  L{view.key.context}: {plain_verdict(view.user_attrs.get('confirmation'))}")
            if chosen is None:
                rows.append([f"L{view.key.context}", done, "-", "no completed baseline", "-", "-", "-", search_max])
                continue
            confirmation = view.user_attrs.get("confirmation")
            m = confirmed_metrics(confirmation, chosen.number) or metric_medians(chosen.user_attrs.get("metrics"))
            rows.append([
                f"L{view.key.context}", done, f"{source} #{chosen.number}", _config_text(knobs_of(chosen)),
                _fmt(m.get("prefill_tok_s")), _fmt(m.get("decode_tok_s")), _fmt(m.get("recall"), 3), search_max,
            ])
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        lines = [f"{shape} on {device_kind}, backend {backends}, {dtype}"]
        lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        blocks.append("\n".join(lines + ["", "What export writes, and why:"] + verdicts))
    return "\n\n".join(blocks)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_arguments(parser)


def run(args: argparse.Namespace) -> int:
    _, views = studies_from_args(args)
    print(render_tables(views))
    print(
        "\n'export writes' is the config `autotune export` writes for that context: 'tuned' (it beat the "
        "baseline beyond noise when re-measured) or 'baseline'; its tok/s are the re-measured medians "
        "where there are any.\n'search max' is the highest score of the search, a maximum of noisy "
        "measurements that only confirmation can vouch for.\nscore = w_decode*decode/baseline + "
        "w_prefill*prefill/baseline + w_recall*recall (README, \"Tuning\")."
    )
    return 0
