"""The runner defaults file from the store: what `autotune export` writes.

For each study (one per shape, device kind, backends, context length) one table row:
the confirmed winner when the study's confirmation says it beat the baseline beyond
noise, else the baseline config (the runner's default stays). Rows are grouped into
entries per (shape, device_kind, backend, dtype); see autotune/defaults.py for the
schema. The file is written atomically: a reader sees the old file or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.names import KERNEL_KNOBS, KNOBS
from autotune.store.views import StudyView, metric_medians
from autotune.defaults import SCHEMA_VERSION, load_entries
from autotune.errors import UserError, file_mode, require_folder
from autotune.verdict import plain_verdict

@dataclass(frozen=True)
class Decision:
    """Which trial's config becomes the default for one study, and why."""

    trial: Any  # optuna FrozenTrial
    source: str  # 'tuned' (confirmed winner), 'baseline', or 'unconfirmed' (best, no confirmation)
    reason: str


def read_confirmation(confirmation: Any) -> tuple[bool | None, int | None]:
    """(did the winner beat the baseline?, the trial to use as default) from a study's
    'confirmation' attr (autotune/confirm.py writes it); (None, None) without a verdict."""
    if not isinstance(confirmation, dict):
        return None, None
    default = confirmation.get("default")
    trial = default.get("trial") if isinstance(default, dict) else None
    trial = trial if isinstance(trial, int) and not isinstance(trial, bool) else None
    verdict = confirmation.get("verdict")
    if verdict == "improved":
        return True, trial
    if verdict == "baseline":
        return False, trial
    return None, trial


def confirmed_metrics(confirmation: Any, trial_number: int) -> dict[str, float]:
    """The re-measured medians of a trial's config (more repeats than the search), if any."""
    if not isinstance(confirmation, dict):
        return {}
    measured = [confirmation.get("baseline")] + list(confirmation.get("candidates") or [])
    for entry in measured:
        if isinstance(entry, dict) and entry.get("trial") == trial_number and entry.get("ok"):
            return metric_medians(entry.get("metrics"))
    return {}


def decide(view: StudyView, *, allow_unconfirmed: bool) -> Decision | None:
    """The trial whose config is exported for this study, or None when there is none."""
    baseline, best = view.baseline, view.best
    confirmation = view.user_attrs.get("confirmation")
    beats, number = read_confirmation(confirmation)
    reason = confirmation.get("reason") if isinstance(confirmation, dict) else None
    if beats is True and number is not None:
        winner = view.trial(number)
        if winner is not None and winner.params:
            return Decision(winner, "tuned", reason or f"trial #{number} beat the baseline in confirmation")
    if beats is False and baseline is not None:
        return Decision(baseline, "baseline", reason or "the winner did not beat the baseline significantly")
    if beats is None and allow_unconfirmed and best is not None:
        return Decision(best, "unconfirmed", "no confirmation yet; best trial exported (--unconfirmed)")
    if baseline is not None:
        why = "no confirmation yet" if beats is None else "the confirmed winner is not in the study"
        return Decision(baseline, "baseline", why)
    return None


def export_choice(view: StudyView) -> tuple[Any, str]:
    """(the trial `autotune export` writes for this study or None, its source:
    'tuned', 'baseline' or '-')."""
    decision = decide(view, allow_unconfirmed=False)
    return (decision.trial, decision.source) if decision else (None, "-")


def build_defaults(views: list[StudyView], *, allow_unconfirmed: bool = False) -> tuple[dict[str, Any], list[str]]:
    """(the defaults document, notes for the user) from the studies."""
    # (shape, device_kind, backend, dtype) -> (batch, context) -> row
    entries: dict[tuple[str, str, str, str], dict[tuple[int, int], dict[str, Any]]] = {}
    notes = []
    for view in views:
        decision = decide(view, allow_unconfirmed=allow_unconfirmed)
        if decision is None:
            notes.append(f"{view.name}: no completed baseline or trial; no row (nearby contexts are used)")
            continue
        trial = decision.trial
        backend = view.backend_of(trial)
        row = {
            "context": view.key.context,
            "config": {k: trial.params[k] for k in KNOBS if k in trial.params},
            "metrics": confirmed_metrics(view.user_attrs.get("confirmation"), trial.number)
            or metric_medians(trial.user_attrs.get("metrics")),
            "trial": trial.number,
            "study": view.name,
            "score": trial.value,
            "strategy": trial.user_attrs.get("strategy"),
            "source": decision.source,
        }
        if view.key.batch != 1:  # rows without a batch are batch 1 (autotune/defaults.py)
            row["batch"] = view.key.batch
        kernel = {k: trial.params[k] for k in KERNEL_KNOBS if k in trial.params}
        if kernel:  # studies without kernel knobs ran the kernels' defaults: no "kernel" key
            row["kernel"] = kernel
        if len(row["config"]) != len(KNOBS):
            notes.append(f"{view.name}: trial #{trial.number} lacks knobs {sorted(set(KNOBS) - set(row['config']))}; no row")
            continue
        if decision.source == "unconfirmed":
            notes.append(f"{view.name}: {decision.reason}")
        elif decision.source != "tuned":
            notes.append(f"{view.name}: {plain_verdict(view.user_attrs.get('confirmation'))}")
        table = entries.setdefault((view.key.shape, view.key.device_kind, backend, view.dtype), {})
        previous = table.get((view.key.batch, view.key.context))
        # Two studies (e.g. 'queued' and 'queued+ray') can cover one context: keep the higher score.
        if previous is None or (row["score"] or 0.0) > (previous["score"] or 0.0):
            table[(view.key.batch, view.key.context)] = row
    document = {
        "schema_version": SCHEMA_VERSION,
        "entries": [
            {
                "shape": shape,
                "device_kind": device_kind,
                "backend": backend,
                "dtype": dtype,
                "table": [table[c] for c in sorted(table)],
            }
            for (shape, device_kind, backend, dtype), table in sorted(entries.items())
        ],
    }
    return document, notes


def merge_documents(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """New entries replace old ones of the same (shape, device_kind, backend, dtype)."""
    def key(e: dict[str, Any]) -> tuple:
        return (e.get("shape"), e.get("device_kind"), e.get("backend"), e.get("dtype"))

    fresh = {key(e) for e in new["entries"]}
    kept = [e for e in old.get("entries", []) if isinstance(e, dict) and key(e) not in fresh]
    return {"schema_version": SCHEMA_VERSION, "entries": kept + new["entries"]}


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename over `path`, with the
    mode a plain open() gives (mkstemp's own 0600 would hide the file from other users).
    A missing folder is an error: it is more often a typo than a wish."""
    require_folder(path, "output file", "--out")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Export:
    """What `write_defaults` wrote: the whole document, this store's part of it, and notes."""

    document: dict[str, Any]
    fresh: dict[str, Any]
    notes: list[str]


def write_defaults(views: list[StudyView], out: Path, *, allow_unconfirmed: bool = False,
                   merge: bool = False) -> Export:
    """Write the defaults file of `views` to `out`; with `merge`, keep the entries of an
    existing `out` for other shapes, devices and backends."""
    fresh, notes = build_defaults(views, allow_unconfirmed=allow_unconfirmed)
    document = fresh
    if merge and out.exists():
        try:
            old = {"entries": load_entries(out)}
        except ValueError as exc:
            raise UserError(f"cannot merge into {out}: {exc}") from None
        document = merge_documents(old, fresh)
    write_atomic(out, json.dumps(document, indent=2, sort_keys=False) + "\n")
    return Export(document, fresh, notes)
