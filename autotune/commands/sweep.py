"""`autotune sweep`: the arguments of a sweep (autotune.sweep) and the surface file it wrote."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from autotune.errors import UserError
from autotune.names import BACKENDS
from autotune.spec import load_spec
from autotune.sweep import DEFAULT_REPEATS, sweep

EXIT_STOPPED = 3  # the sweep stopped at --stop-after; the same command continues it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, metavar="FILE", help="study spec (TOML) whose space is swept")
    parser.add_argument("--context", type=int, metavar="L",
                        help="the context length to sweep (required when the spec lists several)")
    parser.add_argument("--backend", action="append", metavar="NAME",
                        help="sweep only this backend (repeatable; default: the spec's backends)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, metavar="R",
                        help=f"benchmark runs per config (default {DEFAULT_REPEATS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled run order (default 0)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="hard limit per run (default: the spec's [trials] limits, adapted to the runs so far)")
    parser.add_argument("--stop-after", type=float, metavar="SECONDS",
                        help="start no run that could end later than this (exit code 3, journal kept; "
                             "the same command continues)")
    parser.add_argument("--process", choices=("fresh", "warm"), default="fresh",
                        help="fresh (default): every run in its own benchmark process, so the surface holds the "
                             "spread between processes; warm: one worker measures run after run (faster)")
    parser.add_argument("--out", metavar="FILE",
                        help="surface file (default studies/surfaces/<device>-<shape>-<backends>-L<context>.json)")


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.study)
    context = _pick_context(spec, args.context)
    backends = _pick_backends(spec, args.backend)
    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {args.repeats}")
    if args.stop_after is not None and args.stop_after <= 0:
        raise UserError(f"--stop-after must be a positive number of seconds, got {args.stop_after:g}")
    path = sweep(spec, context, backends, repeats=args.repeats, seed=args.seed,
                 out=Path(args.out) if args.out else None, timeout_s=args.timeout, stop_after_s=args.stop_after,
                 process=args.process)
    if path is None:
        return EXIT_STOPPED
    print(path)
    return 0


def _pick_context(spec, context: int | None) -> int:
    contexts = spec.workload.contexts
    if context is None:
        if len(contexts) != 1:
            raise UserError(f"{spec.path} lists contexts {list(contexts)}; pick one with --context L")
        return contexts[0]
    if context < 1:
        raise UserError(f"--context must be a positive number of tokens, got {context}")
    return context


def _pick_backends(spec, chosen: Sequence[str] | None) -> tuple[str, ...]:
    if not chosen:
        return tuple(spec.model.backends)
    bad = [b for b in chosen if b not in BACKENDS]
    if bad:
        raise UserError(f"--backend {bad[0]!r} is unknown; backends are {', '.join(BACKENDS)}")
    return tuple(dict.fromkeys(chosen))
