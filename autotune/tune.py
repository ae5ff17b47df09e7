"""`autotune tune`: search the scheduling knobs for each context length of a study spec.

Per context length one Optuna study (autotune.store.layout names it). Its first trial is the
baseline, the runner's current default config; then the spec's strategy proposes
configs until the budget (trials and/or wall time) ends; each is measured in a
benchmark process (a warm worker by default, autotune.evaluators), scored (autotune.objective) and told to Optuna with
its metrics as user attrs. Then the top configs are confirmed (autotune.confirm).

Ctrl-C stops after the running trial (then confirms); a second Ctrl-C kills that
trial's benchmark (its config is queued for the next run). A killed tuner resumes
when the same command runs again.

Several tuners may share a server store (PostgreSQL): proposals, recovery and
confirmation take named locks in the database (autotune.store.locks), running trials send
heartbeats, and a trial whose worker is gone is failed and queued again once. With
--gpus each GPU slot drives its own evaluator (autotune.loop, autotune.workers).
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from dataclasses import replace

import optuna

from autotune.errors import UserError
from autotune.context_tuner import ContextTuner, TuneOptions
from autotune.spec import PROCESSES, StudySpec, load_spec
from autotune.stop_control import StopControl
from autotune.store.recovery import STALE_AFTER_S
from autotune.store.locks import NamedLocks, WriterLock
from autotune.store.storage import machine_fingerprint, open_storage, parse_storage_url
from autotune.tune_output import ContextResult, next_steps, say, summary_lines
from autotune.verdict import publish
from autotune.store.views import redact_url
from autotune.workers import gpu_slots, parse_gpus

__all__ = ["ContextTuner", "StopControl", "TuneOptions", "add_arguments", "run", "tune"]


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
    return tune(spec, options)


def _resolve_device(spec: StudySpec):
    from kernels import DeviceUnavailableError, resolve_device

    try:
        return resolve_device(spec.model.device)
    except DeviceUnavailableError as exc:
        raise UserError(f"{spec.path}: [model] device = {spec.model.device!r}: {exc}") from None


def tune(spec: StudySpec, options: TuneOptions) -> int:
    """Run the search for every context length of `spec`; returns the exit code."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens
    device = _resolve_device(spec)
    device_str = spec.model.device if spec.model.device != "auto" else device.type
    slots, gpu_model = gpu_slots(options.gpus, device, spec.model.device)
    fingerprint = machine_fingerprint(device)
    if gpu_model is not None:
        fingerprint["device_name"] = gpu_model  # the model of the GPUs measured on, not of cuda:0
    if options.gpus and device.type == "cpu":
        say(f"--gpus with device cpu: {len(slots)} benchmarks run side by side on the CPU and slow each other down")
    location = parse_storage_url(options.storage)
    store = redact_url(location.url)
    lock = WriterLock(location.sqlite_path) if location.sqlite_path is not None else nullcontext()
    results: list[ContextResult] = []
    with lock, StopControl() as stop:
        storage = open_storage(location)
        say(f"store: {store}")
        locks = NamedLocks.for_storage(storage, shared=not location.is_sqlite)
        start = time.monotonic()
        # one study per (context, batch)
        studies = [(c, b) for c in spec.workload.contexts for b in spec.workload.batches]
        for i, (context, batch) in enumerate(studies):
            if stop.stop_requested:
                break
            deadline = None
            if options.timeout_s is not None:
                # Split what is left evenly over the studies still to come.
                left = options.timeout_s - (time.monotonic() - start)
                deadline = time.monotonic() + max(0.0, left) / (len(studies) - i)
            at_batch = replace(spec, workload=spec.workload.at_batch(batch))
            tuner = ContextTuner(at_batch, options, context, storage=storage, location=location,
                                 device_kind=device.type, device=device_str, fingerprint=fingerprint, stop=stop,
                                 slots=tuple(slots), locks=locks)
            results.append(tuner.run(deadline))
            if results[-1].verdict and results[-1].study:
                publish(optuna.load_study(study_name=results[-1].study, storage=storage), results[-1].verdict)
        interrupted = stop.stop_requested
    for result in results:
        for line in summary_lines(result):
            print(line)
    selector = f"--study {spec.path}" + (f" --storage '{store}'" if options.storage != spec.storage else "")
    for line in next_steps(results, store=store, selector=selector):
        print(line)
    if interrupted:
        skipped = [c for c in spec.workload.contexts if c not in {r.context for r in results}]
        if skipped:
            print(f"stopped by Ctrl-C; not started: L{', L'.join(map(str, skipped))}. Run the same command to resume.")
        else:
            print("stopped by Ctrl-C. Run the same command to resume.")
        return 130
    return 1 if any(r.error for r in results) else 0
