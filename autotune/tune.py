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

import time
from contextlib import nullcontext
from dataclasses import dataclass, replace

import optuna

from autotune.errors import UserError
from autotune.context_tuner import ContextTuner, TuneOptions
from autotune.spec import StudySpec
from autotune.stop_control import StopControl
from autotune.store.locks import NamedLocks, WriterLock
from autotune.store.fingerprint import machine_fingerprint
from autotune.store.storage import open_storage, parse_storage_url
from autotune.tune_output import ContextResult, say
from autotune.verdict import publish
from autotune.store.views import redact_url
from autotune.workers import gpu_slots

# kernels is imported where the device is resolved: it loads torch, which
# `autotune tune --help` and a spec error never need.

__all__ = ["ContextTuner", "StopControl", "TuneOptions", "TuneRun", "tune"]


@dataclass
class TuneRun:
    """What one `tune` call did: a result per context length it started, the store it
    wrote (password hidden), and whether Ctrl-C stopped it before `not_started`."""

    results: list[ContextResult]
    store: str
    interrupted: bool
    not_started: list[int]


def _resolve_device(spec: StudySpec):
    from kernels import DeviceUnavailableError, resolve_device

    try:
        return resolve_device(spec.model.device)
    except DeviceUnavailableError as exc:
        raise UserError(f"{spec.path}: [model] device = {spec.model.device!r}: {exc}") from None


def tune(spec: StudySpec, options: TuneOptions) -> TuneRun:
    """Run the search (and confirmation) for every context length of `spec`."""
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
    started = {r.context for r in results}
    not_started = [c for c in spec.workload.contexts if c not in started] if interrupted else []
    return TuneRun(results, store, interrupted, not_started)
