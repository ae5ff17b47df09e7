"""Leave-one-family-out evaluation of portfolio configurations on real surfaces.

    python -m autotune.replay.heldout run --family convolution=A.json.gz,B.json.gz \
        --variants VARIANTS.json --references random,bandit,tpe,kt:pso --seeds 50 --out conv.json
    python -m autotune.replay.heldout run --family gemm=C.json.gz,D.json.gz ... --out gemm.json
    python -m autotune.replay.heldout report conv.json gemm.json xlstm.json

VARIANTS.json maps a name to a portfolio's options ({"members": [...], "warmup": 4, ...}).
Parts may run in parallel and may split a surface's labels; a variant competes only
where every surface has it, and a reference strategy is shown where it ran. Every variant and reference strategy of a part
is replayed on its surfaces for the seeds 0..N-1 (paired: a seed fixes the start config
and the noise), each run up to the surface's budget, and scored by its P-score.

Held out: for each family F, the variant with the best mean P-score over the OTHER
families (each family weighing the same) is chosen, and its scores on F's surfaces are
reported beside the references: a number is never from a surface it was chosen on.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from autotune.errors import UserError
from autotune.replay.baseline import budget_for, random_curve
from autotune.replay.loading import load_surface
from autotune.replay.peers import is_peer
from autotune.replay.report import attach_paired, comparison_markdown, summarise
from autotune.replay.runner import Comparison, _quiet_optuna, parse_strategies, replay_run
from autotune.replay.stats import versus_best
from autotune.replay.surface import Surface


def replay_surface(surface: Surface, runs: Mapping[str, tuple[str, dict | None]], seeds: Sequence[int],
                   log=lambda line: None, done=lambda summary: None, jobs: int = 1) -> dict[str, Any]:
    """The summary (autotune.replay.report) of each labelled (strategy, options) on the
    surface, every run stopping at the budget; `done` gets the summary so far after each label.
    With jobs > 1 the seeds run in that many processes; a run depends only on its seed, so
    the traces are the same."""
    values = surface.filled_values()
    budget, cutoff = budget_for(values, surface.maximize)
    comp = Comparison(surface, budget, cutoff, budget, random_curve(values, budget, surface.maximize), {},
                      list(seeds))
    with _seed_pool(surface, jobs) as pool:
        for label, (strategy, options) in runs.items():
            started = time.monotonic()
            run = partial(_replay_seed, strategy, budget, options)
            comp.traces[label] = list(pool.map(run, seeds)) if pool else [run(seed, surface) for seed in seeds]
            log(f"{surface.name}: {label} {time.monotonic() - started:.0f} s")
            done(summarise(comp))
    return summarise(comp)


_FORKED_SURFACE: Surface | None = None  # the surface a forked seed worker replays on


def _seed_pool(surface: Surface, jobs: int):
    """Processes forked with the surface already in memory (None for one job: run in this process)."""
    global _FORKED_SURFACE
    if jobs <= 1:
        return nullcontext()
    _FORKED_SURFACE = surface
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"))


def _replay_seed(strategy: str, budget: int, options: dict | None, seed: int, surface: Surface | None = None):
    return replay_run(surface or _FORKED_SURFACE, strategy, seed, budget, options=options)


def family_means(summaries: Mapping[str, Mapping[str, Any]], families: Mapping[str, Sequence[str]],
                 label: str, skip: str | None = None) -> float:
    """Mean P-score of `label` over the families other than `skip`, each family the mean of its surfaces."""
    per_family = [np.mean([summaries[s]["strategies"][label]["p_score"]["mean"] for s in surfaces])
                  for family, surfaces in families.items() if family != skip]
    return float(np.mean(per_family))


def held_out_choice(summaries, families, variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per family: the variant chosen on the other families, the means it was chosen by and
    each variant's paired difference to the best on those families (autotune.replay.stats)."""
    out = {}
    for family in families:
        train = {v: family_means(summaries, families, v, skip=family) for v in variants}
        chosen = max(train, key=train.get)
        paired = versus_best(training_per_seed(summaries, families, variants, skip=family))
        out[family] = {"chosen": chosen, "training_means": train, "paired": paired}
    return out


def training_per_seed(summaries, families, variants: Sequence[str], skip: str) -> dict[str, list[float]]:
    """Per variant, seed by seed, the mean P-score over the families other than `skip` (each
    the mean of its surfaces), over the seeds that every surface ran for every variant."""
    train = {family: surfaces for family, surfaces in families.items() if family != skip}
    per_seed = lambda s, v: summaries[s]["strategies"][v]["p_score"]["per_seed"]  # noqa: E731
    seeds = min(len(per_seed(s, v)) for surfaces in train.values() for s in surfaces for v in variants)
    out = {}
    for v in variants:
        by_family = [np.mean([per_seed(s, v)[:seeds] for s in surfaces], axis=0) for surfaces in train.values()]
        out[v] = np.mean(by_family, axis=0).tolist()
    return out


def variant_options(variant: dict[str, Any]) -> dict[str, Any]:
    """A variant's strategy options: the portfolio's own options, or, when it names
    "portfolio", options per strategy (members' hyperparameters included)."""
    return variant if "portfolio" in variant else {"portfolio": variant}


def replay_families(args: argparse.Namespace) -> int:
    """`run`: replay the variants and references on each family's surfaces; write the summaries."""
    families: dict[str, list[str]] = {}
    for item in args.family:
        name, _, paths = item.partition("=")
        families[name] = [p for p in paths.split(",") if p]
    variants = json.loads(Path(args.variants).read_text(encoding="utf-8"))
    runs = {f"portfolio[{v}]": ("portfolio", variant_options(opts)) for v, opts in variants.items()}
    references = parse_strategies(args.references, "--references") if args.references.strip() else []
    runs.update({r: (r, None) for r in references})
    started = time.monotonic()
    log = lambda line: print(f"[{time.monotonic() - started:6.0f} s] {line}", file=sys.stderr, flush=True)  # noqa: E731
    summaries: dict[str, Any] = {}
    names: dict[str, list[str]] = {}

    def write(surface_name: str, summary: dict[str, Any]) -> None:  # after every label: a partial record
        summaries[surface_name] = _lean(summary)
        record = {"seeds": args.seeds, "families": names, "variants": variants, "runs": list(runs),
                  "summaries": summaries, "wall_s": round(time.monotonic() - started)}
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")

    for family, paths in families.items():
        for path in paths:
            surface = load_surface(path)
            names.setdefault(family, []).append(surface.name)
            replay_surface(surface, runs, range(args.seeds), log, done=lambda s, n=surface.name: write(n, s),
                           jobs=args.jobs)
    return 0


def report(args: argparse.Namespace) -> int:
    """`report`: merge the parts, choose a variant per held-out family, print the tables."""
    parts = [json.loads(Path(p).read_text(encoding="utf-8")) for p in args.parts]
    excluded = {label for label in args.exclude.split(",") if label}
    for part in parts if excluded else ():  # nothing excluded: the parts' verdicts stand
        part["runs"] = [r for r in part["runs"] if r not in excluded]
        for summary in part["summaries"].values():
            summary["strategies"] = {k: v for k, v in summary["strategies"].items() if k not in excluded}
            attach_paired(summary)  # the best and the ties among what is left
    names: dict[str, list[str]] = {}
    summaries: dict[str, Any] = {}
    for part in parts:  # parts may split a surface's labels: their strategies merge
        for family, surfaces in part["families"].items():
            names.setdefault(family, [])
            names[family].extend(s for s in surfaces if s not in names[family])
        for surface, summary in part["summaries"].items():
            if surface in summaries:
                summaries[surface]["strategies"].update(summary["strategies"])
                attach_paired(summaries[surface])
            else:
                summaries[surface] = summary
    if len(names) < 2:
        raise SystemExit("leave-one-family-out needs at least two families")
    # a variant competes where every surface has it; references are shown where they ran
    labels = list(dict.fromkeys(r for part in parts for r in part["runs"]))
    variants = [v for v in labels if v.startswith("portfolio[") and all(v in s["strategies"] for s in summaries.values())]
    references = [r for r in labels if not r.startswith("portfolio[")]
    choice = held_out_choice(summaries, names, variants)
    for family, c in choice.items():
        print(f"\n### Held out: {family} (the variant chosen on the other families: {c['chosen']})\n")
        print(_choice_line(c) + "\n")
        order = [c["chosen"], *references]
        print(comparison_markdown([_only(summaries[s], order) for s in names[family]], order))
    print("\n### Against the targets\n")
    print(targets_markdown(summaries, names, choice, references))
    everywhere = {v: family_means(summaries, names, v) for v in variants}
    print("\n### Every variant on every surface (training means over all families: "
          + ", ".join(f"{v} {m:.3f}" for v, m in everywhere.items()) + ")\n")
    portfolios = [label for label in labels if label.startswith("portfolio[")]
    print(comparison_markdown([summaries[s] for f in names for s in names[f]], [*portfolios, *references]))
    if args.out:
        Path(args.out).write_text(json.dumps({"held_out": choice, "all_families": everywhere}, indent=1) + "\n",
                                  encoding="utf-8")
    return 0


TARGET_GAP = 0.1  # the held-out portfolio's mean within this of the best strategy's
FLOOR, FLOOR_WHERE = 0.3, 0.4  # never below FLOOR where any strategy reaches FLOOR_WHERE


def targets_markdown(summaries, families, choice, references: Sequence[str]) -> str:
    """Per surface: the held-out portfolio's mean against the best of replay's own strategies
    and of Kernel Tuner's, and whether it is within TARGET_GAP of each (or above) and above
    FLOOR where any strategy reaches FLOOR_WHERE."""
    lines = ["| surface | family | held-out portfolio | best of replay's set | best Kernel Tuner strategy "
             f"| within {TARGET_GAP} of replay's best | within {TARGET_GAP} of (or above) KT's best "
             f"| >= {FLOOR} where any >= {FLOOR_WHERE} |", "|" + " --- |" * 8]
    for family, surfaces in families.items():
        chosen = choice[family]["chosen"]
        for name in surfaces:
            strategies = summaries[name]["strategies"]
            mean = {label: strategies[label]["p_score"]["mean"] for label in (chosen, *references) if label in strategies}
            ours = mean[chosen]
            cells = [f"{chosen} {_pm(strategies[chosen])}"]
            verdicts = []
            for peers in ([r for r in mean if r in references and not is_peer(r)], [r for r in mean if is_peer(r)]):
                best = max(peers, key=mean.get, default=None)
                cells.append(f"{best} {_pm(strategies[best])}" if best else "")
                gap = ours - mean[best] if best else None
                verdicts.append("" if gap is None else f"{'yes' if gap >= -TARGET_GAP else 'no'} ({gap:+.3f})")
            top = max(mean.values())
            floor = f"n/a (none reaches {FLOOR_WHERE})" if top < FLOOR_WHERE else ("yes" if ours >= FLOOR else "no")
            lines.append(f"| {name} | {family} | " + " | ".join([*cells, *verdicts, floor]) + " |")
    return "\n".join(lines)


def _choice_line(choice: dict[str, Any]) -> str:
    """How the choice was made: each variant's training mean and, paired by seed, its
    difference to the best."""
    means, paired = choice["training_means"], choice["paired"]
    cells = [f"{v} {means[v]:.3f}" + ("" if p["best"] == v else
                                      f" ({p['diff']:+.4f} ± {p['se']:.4f}{', a tie' if p['tie'] else ''})")
             for v, p in paired.items()]
    return "Training means (paired difference to the best; under 2 standard errors: a tie): " + "; ".join(cells) + "."


def _pm(strategy: dict[str, Any]) -> str:
    p = strategy["p_score"]
    return f"{p['mean']:.2f} ± {p['se']:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autotune.replay.heldout", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="replay variants and references on families of surfaces")
    run.add_argument("--family", action="append", required=True, metavar="NAME=SURFACE,SURFACE",
                     help="a kernel family and its surfaces (repeatable)")
    run.add_argument("--variants", required=True, help="JSON file: name -> portfolio options, or options per strategy with a 'portfolio' key")
    run.add_argument("--references", default="random,bandit,boltzmann,regression,genetic,tpe",
                     help="strategies replayed beside the variants (kt:NAME for Kernel Tuner's)")
    run.add_argument("--seeds", type=int, default=50)
    run.add_argument("--jobs", type=int, default=1, help="processes replaying seeds side by side (same results)")
    run.add_argument("--out", required=True, help="JSON file of the summaries")
    rep = sub.add_parser("report", help="leave-one-family-out tables from the parts `run` wrote")
    rep.add_argument("parts", nargs="+")
    rep.add_argument("--out", default=None, help="JSON file of the choices")
    rep.add_argument("--exclude", default="",
                     help="labels to leave out of every part (e.g. a variant measured before a change)")
    args = parser.parse_args(argv)
    if args.command == "run" and args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    _quiet_optuna(torch_threads=False)
    try:
        return replay_families(args) if args.command == "run" else report(args)
    except UserError as exc:
        parser.error(str(exc))


def _only(summary: dict[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    """The summary with only `labels`, the paired verdicts recomputed among them."""
    lean = dict(summary)
    lean["strategies"] = {k: json.loads(json.dumps(v)) for k, v in summary["strategies"].items() if k in labels}
    attach_paired(lean)
    return lean


def _lean(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary without its curves (the record keeps scores, not plots)."""
    drop = ("mean_best", "ci95_low", "ci95_high", "share_curves")
    out = {k: v for k, v in summary.items() if k != "random_baseline"}
    out["strategies"] = {n: {k: v for k, v in s.items() if k not in drop} for n, s in summary["strategies"].items()}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
