"""Measure one config: prefill and decode through the configured scheduler.

Phases (each timed apart; only the repeats are timed regions):
  setup    device, model (random weights, on the device), scheduler, prompt
  warmup   prefill at L and decode until every kernel shape has run (and, with compile,
           until a pass is no faster than the one before); this pass also yields the
           counters and the NaN/inf check
  measure  R repeats of: prefill L prompt tokens -> first token (greedy) -> N decoded
           tokens at batch B; the device is synchronised around every timed region
  drift    the same prompt through the sequential reference; largest |logits difference|
           at the last prompt position and at the first decoded token
  recall   MQAR with the mqar-tiny checkpoint through the configured backend and knobs

The time limit (time_limit_s) ends a run early as a timeout, before each warm-up pass
after the first, after the warm-up and after each timed repeat, once the prefills still
to come could not end within it even if each were 10% faster than the fastest seen;
otherwise the watchdog ends it at the limit.

A prefill computes logits for the last prompt position only, as an inference runtime
does (it needs the next token, not L x vocab logits); every position still runs through
every layer and the recurrent state. For the 125m shape at L = 2048 the other logits
would be a third of the prefill's work.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch

from autotune.bench import env
from autotune.bench.config import BenchRequest
from autotune.bench.errors import BenchTimeout, InvalidConfig, check_finite
from autotune.bench.recall import MIN_CONTEXT, measure_recall, recall_data, recall_model
from autotune.bench.memory import PeakMemory
from autotune.bench.stats import summary
from autotune.names import torch_dtype
from kernels import XLSTM, resolve_device, synchronize
from kernels.fastpath import FastModel
from kernels.model import get_config
from schedulers import Knobs, PlanError, make_plan, make_scheduler
from schedulers.graphs import make_decoder

log = logging.getLogger("autotune.bench")

# The drift reference: sequential, one band, the model's default chunking.
REFERENCE_CHUNK = 64
WARMUP_DECODE_STEPS = 2
MAX_COMPILE_WARMUP_PASSES = 5
WARM_WHEN_WITHIN = 0.10  # a compiled pass is warm when no more than 10% faster than the last
# A timed prefill is taken to be at least this share of the fastest one before it, so a
# run ends early only when even prefills 10% faster than any seen could not fit.
PREFILL_FLOOR = 0.9


class _Clock:
    """Wall time of device work: synchronises before reading the clock."""

    def __init__(self, device: torch.device):
        self._sync = synchronize
        self.device = device

    def now(self) -> float:
        self._sync(self.device)
        return time.perf_counter()


def settles_over_passes(config: BenchRequest, device: torch.device) -> bool:
    """Compiled kernels and GPU libraries settle over a few warm-up passes; eager CPU does not."""
    return config.compile or device.type != "cpu"


def ensure_time_for(progress, config: BenchRequest, prefills: int, fastest_s: float) -> None:
    """End the run now, as a timeout, when `prefills` more timed prefills cannot end
    within the time limit: the run is sure to reach it, and waiting for that costs the
    caller the rest of the limit."""
    elapsed = time.perf_counter() - progress.started
    needed = prefills * PREFILL_FLOOR * fastest_s
    if prefills and elapsed + needed > config.time_limit_s:
        raise BenchTimeout(
            f"the run would exceed time_limit_s={config.time_limit_s:g}: {elapsed:.1f} s spent and "
            f"{prefills} timed prefill(s) of at least {PREFILL_FLOOR * fastest_s:.2f} s to come; "
            "raise time_limit_s or lower context, new_tokens or repeats")


def _state_bytes(model, scheduler, state, batch: int) -> int:
    """Bytes of recurrent state per sequence, counted from the tensors themselves."""
    total = 0
    for block, entry in zip(model.blocks, state):
        tensors = scheduler.materialize(entry) if block.kind == "mlstm" else entry
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total // batch


@contextlib.contextmanager
def last_position_logits(model, fast=None):
    """Within the block, prefills compute logits for the last position only: (B, 1, V).

    The model's LM head gets a pre-hook that keeps the last position; a fused-weight
    forward (kernels.fastpath) gets its head() wrapped the same way. Decode steps (S = 1)
    are unchanged."""
    handle = model.lm_head.register_forward_pre_hook(lambda module, args: (args[0][:, -1:],))
    if fast is not None:
        full_head = fast.head
        fast.head = lambda x: full_head(x[:, -1:])
    try:
        yield
    finally:
        handle.remove()
        if fast is not None:
            del fast.head  # back to the class's method


def _decode(decoder, scheduler, token, state, steps: int):
    """Greedy decode of `steps` tokens after `token` (B,) from `state`; returns the last
    token, the state and the last step's logits."""
    decoder.load_state(state, scheduler.materialize)
    tokens = decoder.generate(token[:, None], steps)
    logits = decoder.step(tokens[:, -1:])  # untimed by callers that check finiteness only
    return tokens[:, -1], decoder.state(), logits


def _paths(model, scheduler, config: BenchRequest, device: torch.device, cache: NoCache):
    """The forward used for prefill and the decoder for generation.

    On CUDA: the fused-weight forward (kernels.fastpath) and a CUDA-graph decoder whose
    bands and side streams follow the knobs (schedulers.graphs); the Ray backend keeps
    the eager decoder, since its bands live in actors. Elsewhere the plain model and the
    eager decoder, both through the scheduler.
    """
    fast = None
    if device.type == "cuda":
        fast = cache.get(("fast", id(model)), lambda: FastModel(model))
        fast.declare()  # its op set on this request's record, also when a warm worker kept it
    decoder = make_decoder(model, scheduler, batch=config.batch, fast=fast,
                           graphs=device.type == "cuda" and config.backend != "ray")
    reason = getattr(decoder, "reason", None)
    log.info("decode path: %s%s", decoder.kind, f" ({reason})" if reason else "")
    return (fast if fast is not None else model), decoder


class NoCache:
    """Builds everything afresh: one benchmark process, one measurement."""

    def get(self, key, build):
        return build()


class WarmCache(NoCache):
    """What a warm worker keeps between measurements: what never depends on the knobs.
    The models (their weights follow from shape, device, dtype and seed), the sequential
    reference's outputs for the drift check and the MQAR data. Schedulers, decoders,
    CUDA graphs and prompts are built per measurement, exactly as in a fresh process."""

    def __init__(self) -> None:
        self._items: dict = {}

    def get(self, key, build):
        if key not in self._items:
            self._items[key] = build()
        return self._items[key]


@torch.no_grad()
def measure(config: BenchRequest, progress, cache: NoCache | None = None) -> dict:
    with contextlib.ExitStack() as stack:
        return _measure(config, progress, stack, cache or NoCache())


def _measure(config: BenchRequest, progress, stack: contextlib.ExitStack, cache: NoCache) -> dict:
    timings = progress.timings
    t_start = time.perf_counter()
    progress.phase = "setup"
    try:
        device = resolve_device(config.device)
    except ValueError as exc:
        raise InvalidConfig("device", str(exc)) from None
    progress.device = device
    dtype = torch_dtype(config.dtype)
    shape = get_config(config.shape)
    knobs = config.knobs()  # BenchRequest checked them against this shape's plan

    clock = _Clock(device)
    torch.manual_seed(config.seed)
    model = cache.get(("model", config.shape, str(device), config.dtype, config.seed),
                      lambda: XLSTM(shape, device=device, dtype=dtype, seed=config.seed))
    scheduler = make_scheduler(config.backend, knobs, device=device, dtype=dtype,
                               compile=config.compile, watchdog_s=config.time_limit_s)
    progress.on_cleanup(scheduler.close)
    model.cell_runner = scheduler
    forward, decoder = _paths(model, scheduler, config, device, cache)
    stack.enter_context(last_position_logits(model, forward if forward is not model else None))
    gen = torch.Generator().manual_seed(config.seed)
    prompt = torch.randint(0, shape.vocab_size, (config.batch, config.context), generator=gen).to(device)
    timings["setup_s"] = clock.now() - t_start
    log.info("setup %.2fs: %s %s on %s, backend %s %s", timings["setup_s"], config.shape,
             config.dtype, device, config.backend, knobs)

    # ---- warm-up: every kernel shape runs; counters of one prefill and one decode step
    progress.phase = "warmup"
    t0 = clock.now()
    scheduler.reset_counters()
    logits, state = forward(prompt)
    prefill_s = [clock.now() - t0]
    check_finite("prefill logits", logits)
    counters = scheduler.counters.as_dict()
    token = logits[:, -1].argmax(dim=-1)
    del logits
    decoder.reset_counters()
    decoder.load_state(state, scheduler.materialize)
    logits = decoder.step(token[:, None])
    check_finite("decode logits", logits)
    counters["decode"] = decoder.counters.as_dict()
    _decode(decoder, scheduler, logits[:, -1].argmax(dim=-1), decoder.state(), WARMUP_DECODE_STEPS - 1)
    passes, last = 1, clock.now() - t0
    while settles_over_passes(config, device):
        # Another pass is only worth it while it and the timed prefills still fit.
        ensure_time_for(progress, config, config.repeats + 1, min(prefill_s))
        t1 = clock.now()
        _, state = forward(prompt)
        prefill_s.append(clock.now() - t1)
        _decode(decoder, scheduler, token, state, WARMUP_DECODE_STEPS)
        this = clock.now() - t1
        passes += 1
        if this >= last * (1 - WARM_WHEN_WITHIN) or passes >= MAX_COMPILE_WARMUP_PASSES:
            break
        last = this
    del state
    timings["warmup_s"] = clock.now() - t0
    timings["warmup_passes"] = passes
    ensure_time_for(progress, config, config.repeats, min(prefill_s))

    # ---- timed repeats
    progress.phase = "measure"
    memory = PeakMemory(device)
    memory.reset()
    B, L, N = config.batch, config.context, config.new_tokens
    prefill_tok_s, decode_tok_s, ttft_ms = [], [], []
    t_measure = time.perf_counter()
    for done in range(config.repeats):
        t0 = clock.now()
        logits, state = forward(prompt)
        t1 = clock.now()
        prefill_s.append(t1 - t0)
        first = logits[:, -1].argmax(dim=-1)
        first.cpu()  # the first token is available to the caller
        t2 = time.perf_counter()
        memory.sample()
        decoder.load_state(state, scheduler.materialize)
        t3 = clock.now()
        decoded = decoder.generate(first[:, None], N)
        t4 = clock.now()
        decode_logits = decoder.step(decoded[:, -1:])
        end_state = decoder.state()
        memory.sample()
        prefill_tok_s.append(B * L / (t1 - t0))
        ttft_ms.append((t2 - t0) * 1000.0)
        decode_tok_s.append(B * N / (t4 - t3))
        ensure_time_for(progress, config, config.repeats - done - 1, min(prefill_s))
    timings["measured_s"] = time.perf_counter() - t_measure
    check_finite("prefill logits", logits)
    check_finite("decode logits", decode_logits)
    peak_mem = memory.peak()
    state_bytes = _state_bytes(model, scheduler, end_state, B)
    log.info("prefill %.1f tok/s, decode %.1f tok/s (medians of %d)",
             summary(prefill_tok_s)["median"], summary(decode_tok_s)["median"], config.repeats)

    # ---- drift against the sequential reference on the same input
    progress.phase = "drift"
    t0 = time.perf_counter()
    reference = Knobs(workers=1, heads_per_band=shape.num_heads,
                      chunk_size=REFERENCE_CHUNK, T_inner=REFERENCE_CHUNK)
    plain_paths = forward is model and decoder.kind == "eager"
    if config.backend == "sequential" and knobs == reference and not config.compile and plain_paths:
        max_drift = 0.0  # the configured run is the reference
    else:
        decoder.load_state(state, scheduler.materialize)
        configured_step = decoder.step(first[:, None])  # the configured decode path
        # The reference outputs depend on the model, the prompt and the first token only,
        # never on the knobs: a warm worker computes them once.
        key = ("drift", id(model), config.context, config.batch, config.seed, tuple(first.tolist()))
        ref_logits, ref_step = cache.get(key, lambda: _reference_outputs(model, reference, prompt, first, device, dtype))
        max_drift = max(float((ref_logits - logits).abs().max()),  # (B, 1, V) each
                        float((ref_step - configured_step).abs().max()))
        model.cell_runner = scheduler
    del logits, state, end_state
    timings["drift_s"] = time.perf_counter() - t0

    # ---- recall with the trained mqar-tiny model, same backend and knobs, float32
    progress.phase = "recall"
    t0 = time.perf_counter()
    recall = _recall(config, device, knobs, scheduler, dtype, cache)
    timings["recall_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    metrics = {
        "prefill_tok_s": summary(prefill_tok_s),
        "decode_tok_s": summary(decode_tok_s),
        "ttft_ms": summary(ttft_ms),
        "peak_mem_bytes": peak_mem,
        "peak_mem_source": memory.source,
        "state_bytes": state_bytes,
        **recall,
        "max_drift": max_drift,
        "decode_path": decoder.kind,  # cuda-graph | eager: which decoder produced decode_tok_s
    }
    return {"metrics": metrics, "counters": counters, "timings": dict(timings), "env": env.collect(device)}


def _reference_outputs(model, reference, prompt, first, device, dtype):
    """The sequential reference's logits at the prompt's last position and after the
    first token."""
    runner = model.cell_runner
    with make_scheduler("sequential", reference, device=device, dtype=dtype) as ref:
        model.cell_runner = ref
        try:
            ref_logits, ref_state = model(prompt)
            ref_step, _ = model(first[:, None], ref_state)
        finally:
            model.cell_runner = runner
    return ref_logits, ref_step


def _recall(config: BenchRequest, device, knobs, scheduler, dtype, cache: NoCache) -> dict:
    none = {"recall": None, "mqar_pairs": None, "mqar_queries": None}
    if config.context < MIN_CONTEXT:
        log.warning("recall not measured: context %d < %d tokens", config.context, MIN_CONTEXT)
        return none
    try:
        make_plan(get_config("mqar-tiny").num_heads, config.context, knobs)
    except PlanError as exc:
        log.warning("recall not measured: the knobs do not fit mqar-tiny (%s)", exc)
        return none
    if dtype == torch.float32:
        runner = scheduler
    else:
        # Scheduler kernels are built for one dtype; free this one first (a Ray pool
        # holds its CPUs), then run recall through a float32 twin.
        scheduler.close()
        runner = make_scheduler(config.backend, knobs, device=device, dtype=torch.float32,
                                compile=config.compile, watchdog_s=config.time_limit_s)
    try:
        model = cache.get(("recall", str(device)), lambda: recall_model(device, runner))
        model.cell_runner = runner
        data = cache.get(("mqar", config.context), lambda: recall_data(config.context))
        return measure_recall(model, config.context, check=check_finite, data=data)
    finally:
        if runner is not scheduler:
            runner.close()
