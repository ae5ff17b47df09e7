"""`autotune replay SURFACE`: compare search strategies on a recorded surface."""

from __future__ import annotations

import argparse
import json
import sys
import time

from autotune.errors import UserError
from autotune.replay.loading import load_surface
from autotune.replay.peers import KT_EXTRA_HINT
from autotune.replay.report import summarise, table, write_html, write_json
from autotune.replay.runner import ALL_STRATEGIES, DEFAULT_STRATEGIES, parse_strategies, run_comparison
from autotune.replay.surface import SurfaceError

DEFAULT_SEEDS = 25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("surface", help="a surface file (autotune sweep) or a Kernel Tuner cache file (.json or .json.gz)")
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                        help=f"comma-separated names of {','.join(ALL_STRATEGIES)} and kt:NAME, Kernel Tuner's "
                             f"strategy NAME (e.g. kt:genetic_algorithm; needs {KT_EXTRA_HINT}) "
                             f"(default: {','.join(DEFAULT_STRATEGIES)})")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                        help=f"runs per strategy, seeds 0..N-1 (default {DEFAULT_SEEDS})")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--horizon", type=int, default=None,
                        help="evaluations per run (default: max(budget, 100), at most the number of configs)")
    parser.add_argument("--options", default=None,
                        help='strategy hyperparameters as JSON, e.g. \'{"portfolio": {"exploration": 0.1}}\'')
    parser.add_argument("--warm-start", default=None, metavar="SURFACE",
                        help="seed every run of this project's strategies with another surface's ranking "
                             "(its best configs measured first, the ranking as the prior), as `autotune tune` "
                             "does with another study")
    parser.add_argument("--json", dest="json_out", default=None, help="write the JSON summary here")
    parser.add_argument("--html", dest="html_out", default=None, help="write the HTML report here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    strategies = parse_strategies(args.strategies)
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    if args.horizon is not None and args.horizon < 1:
        raise UserError(f"--horizon must be at least 1, got {args.horizon}")
    options = None
    if args.options:
        try:
            options = json.loads(args.options)
        except json.JSONDecodeError as exc:
            raise UserError(f"--options is not valid JSON ({exc}); e.g. '{{\"bandit\": {{\"method\": \"ucb\"}}}}'") from None
        if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
            raise UserError("--options must map strategy names to objects of hyperparameters")
    try:
        surface = load_surface(args.surface)
        ranking = load_surface(args.warm_start).ranking() if args.warm_start else None
    except SurfaceError as exc:
        raise UserError(str(exc)) from None
    if ranking is not None and not any(surface.space.index(c) is not None for c in ranking):
        raise UserError(f"--warm-start {args.warm_start} shares no config with {args.surface}; "
                        "warm-start from a surface of the same knobs")
    if not args.quiet:
        print(surface.describe(), file=sys.stderr)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    started = time.monotonic()

    def progress(name, seed, trace):
        if not args.quiet and seed == seeds[-1]:
            print(f"  {name}: {len(seeds)} runs done ({time.monotonic() - started:.0f} s)", file=sys.stderr)

    try:
        comp = run_comparison(surface, strategies, seeds, horizon=args.horizon, options=options, progress=progress,
                              warm_start=ranking)
    except TypeError as exc:  # an option a strategy does not take
        raise UserError(f"--options: {exc}") from None
    summary = summarise(comp)
    print(table(summary))
    if args.json_out:
        write_json(summary, args.json_out)
    if args.html_out:
        write_html(summary, args.html_out)
    return 0
