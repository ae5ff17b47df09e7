"""`autotune tune`: the arguments of a tuning run, and what it prints at the end."""

from __future__ import annotations

import argparse

from autotune.spec import PROCESSES, StudySpec, load_spec
from autotune.store.recovery import STALE_AFTER_S
from autotune.tune import TuneOptions, TuneRun, tune
from autotune.tune_output import ContextResult, fmt_config
from autotune.defaults import DEFAULT_PATH as DEFAULTS_FILE
from autotune.report import DEFAULT_OUT as REPORT_FILE
from autotune.verdict import plain_verdict, plural
from autotune.workers import parse_gpus


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _gpu_list(text: str) -> tuple[int, ...]:
    try:
        return parse_gpus(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, metavar="FILE", help="study spec (TOML), e.g. studies/cpu-quick.toml")
    parser.add_argument("--storage", metavar="URL", help="Optuna storage URL; overrides the spec's `storage`")
    parser.add_argument("--n-trials", type=_positive_int, metavar="N",
                        help="trials per context length, baseline included, counted over resumes "
                             "(overrides [search] n_trials)")
    parser.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                        help="wall time of this run's search over all context lengths "
                             "(overrides [search] timeout_s); confirmation runs after it")
    parser.add_argument("--seed", type=int, metavar="S", help="seed of the search strategy (overrides [search] seed)")
    parser.add_argument("--new-study", action="store_true",
                        help="start new studies beside existing ones (name~2, ...) instead of resuming, "
                             "e.g. after a change of machine, torch or project version")
    parser.add_argument("--skip-confirmation", action="store_true",
                        help="search only; a later run without this flag confirms (split a long run into parts)")
    parser.add_argument("--gpus", type=_gpu_list, default=(), metavar="0,1",
                        help="measure on these GPUs, one benchmark per GPU at a time (CUDA_VISIBLE_DEVICES); "
                             "the trials are spread over them")
    parser.add_argument("--process", choices=PROCESSES, metavar="warm|fresh",
                        help="what measures the trials: one warm worker per GPU slot that keeps the model and "
                             "kernels loaded, or a fresh benchmark process per trial (overrides [trials] process)")
    parser.add_argument("--warm-start", metavar="EXPORT_OR_URL",
                        help="seed each study with another study's ranking: an `autotune export` file, or a store "
                             "URL (its study of the same name, else the same shape and backends at the nearest "
                             "context); its best configs are measured first and its ranking is the strategies' prior")
    parser.add_argument("--lease", type=_positive_float, default=STALE_AFTER_S, metavar="SECONDS",
                        help="on a shared store (PostgreSQL), a running trial whose worker sent no heartbeat "
                             f"for this long is taken as cut off, failed and queued again (default {STALE_AFTER_S:.0f}); "
                             "a worker that died on this host is noticed at once")


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.study)
    options = TuneOptions(
        storage=args.storage or spec.storage,
        n_trials=args.n_trials if args.n_trials is not None else spec.search.n_trials,
        timeout_s=args.timeout if args.timeout is not None else spec.search.timeout_s,
        seed=args.seed if args.seed is not None else spec.search.seed,
        new_study=args.new_study,
        gpus=args.gpus,
        lease_s=args.lease,
        confirm=not args.skip_confirmation,
        process=args.process,
        warm_start=args.warm_start,
    )
    return tune_and_report(spec, options)


def tune_and_report(spec: StudySpec, options: TuneOptions) -> int:
    """Tune every context length of `spec`, print the summary and what to run next;
    returns the exit code."""
    outcome = tune(spec, options)
    for result in outcome.results:
        for line in summary_lines(result):
            print(line)
    selector = f"--study {spec.path}" + (f" --storage '{outcome.store}'" if options.storage != spec.storage else "")
    for line in next_steps(outcome.results, store=outcome.store, selector=selector):
        print(line)
    if outcome.interrupted:
        if outcome.not_started:
            print(f"stopped by Ctrl-C; not started: L{', L'.join(map(str, outcome.not_started))}. "
                  "Run the same command to resume.")
        else:
            print("stopped by Ctrl-C. Run the same command to resume.")
    return exit_code(outcome)


def exit_code(outcome: TuneRun) -> int:
    if outcome.interrupted:
        return 130
    return 1 if any(r.error for r in outcome.results) else 0


def summary_lines(result: ContextResult) -> list[str]:
    head = f"L{result.context} {result.study or ''}".rstrip()
    if result.error:
        return [f"{head}: ERROR {result.error}"]
    lines = [f"{head}: {plural(result.finished, 'trial')} ({result.failed} failed)"
             + (f"; {'; '.join(result.notes)}" if result.notes else "")]
    if result.best is not None:
        base = f"{result.baseline_value:.3f}" if result.baseline_value is not None else "n/a"
        lines.append(f"  search max (unconfirmed) {result.best.value:.3f} (baseline {base}): trial {result.best.number} "
                     f"[{result.best.user_attrs.get('strategy')}] {fmt_config(result.best.params)}")
    if result.verdict:
        lines.append(f"  verdict: {plain_verdict(result.verdict)}")
    return lines


def next_steps(results: list[ContextResult], *, store: str, selector: str) -> list[str]:
    """The closing lines of a run: what was found, where it is, what to run next.
    selector: the arguments that name this run's studies to the other commands."""
    confirmed = [r for r in results if r.verdict and r.verdict.get("verdict") == "improved"]
    decided = [r for r in results if r.verdict]
    if confirmed:
        found = (f"Found: a config that beats the baseline beyond noise at "
                 f"{', '.join(f'L{r.context}' for r in confirmed)}"
                 f" ({len(confirmed)} of {plural(len(results), 'context length')}); see the verdicts above.")
    elif any(r.verdict.get("candidates") for r in decided):
        found = ("Found: nothing that beats the baseline beyond noise; the baseline stays the default "
                 "(the verdicts above say how close the best candidates came).")
    elif decided:
        found = ("Found: no config scored above the baseline in the search; the baseline stays the "
                 "default (on this machine, today's default is already the fastest config tried).")
    else:
        found = "No verdict yet: confirmation has not run, so the baseline stays the default."
    commands = [
        (f"autotune best {selector}", "the table per context length and the verdicts"),
        (f"autotune export {selector}", f"write {DEFAULTS_FILE}, which the runner and `autotune generate` read"),
        (f"autotune report {selector}", f"one HTML page with the figures ({REPORT_FILE})"),
        (f"autotune dashboard {selector}", "optuna-dashboard on the store, http://127.0.0.1:8080/"),
    ]
    width = max(len(c) for c, _ in commands)
    return ["", found, f"Every trial is in the store {store}", "Next:",
            *(f"  {command.ljust(width)}  # {what}" for command, what in commands)]
