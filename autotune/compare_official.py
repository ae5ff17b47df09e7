"""`autotune compare-official`: our runtime against the official xLSTM kernels, one process.

Both sides build the same architecture (an xLSTM-7B-shaped model by default) with random
bf16 weights and fp32 state, on one CUDA GPU, one after the other:

- ours: kernels.fastpath.FastModel with the mLSTM cells through a scheduler configured
  with the exported defaults for each context length (or --config); decode through a
  CUDA graph of the whole step (schedulers.graphs) with that config's bands and workers;
- official: xlstm 2.0.6's xLSTMLarge in 'inference' mode, measured at its best: every
  combination of weight layout, prefill kernel and chunk size, and decode step kernel,
  eager and compiled (autotune.compare_official_variants); each figure is divided by the
  fastest official variant, and the variants that crash are reported with their error.

Prefill tok/s = L / time of one forward over L random tokens (all logits, as the
official model computes them); decode tok/s = batch x new tokens / time of greedy
decoding them after a short prompt. Every timed region is synchronized; warm-up (Triton
compilation, graph capture, torch.compile) happens before it. `compare` returns {gpu,
decode_tok_s: {ours, official, official_variant}, prefill_tok_s: {"<L>": {ours, official,
official_variant}}, ratios, decode_batches, official: {variants}, ...}, also written to
`json_out` (--json) after each stage; the command prints the ratios as a table.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import torch

from autotune.compare_official_model import (free, measure_copy_bandwidth, measure_official,
                                             measure_official_batches, sync, timed, tokens)
from autotune.defaults import pick_choice, why_invalid_kernel, why_invalid_knobs
from autotune.errors import UserError
from autotune.compare_official_variants import (DecodeVariant, OfficialPlan, VariantResults, decode_bound_tok_s,
                                                state_bytes_per_sequence, weight_bytes_read_per_step)
from autotune.names import KNOBS
from kernels import XLSTM, get_config
from kernels.fastpath import FastModel
from kernels.registry import KernelRun, use_run, what_ran
from schedulers import Knobs, make_scheduler
from schedulers.graphs import make_decoder


# ----------------------------------------------------------------------------- helpers


def _parse_config(text: str, what: str, num_heads: int) -> tuple[dict[str, int], dict[str, int]]:
    """(knobs, kernel parameters) of a JSON config; kernel parameters under "kernel"."""
    try:
        knobs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} is not JSON ({exc}); give e.g. "
                        '\'{"workers": 1, "heads_per_band": 8, "chunk_size": 2048, "T_inner": 2048, '
                        '"kernel": {"sub_chunk": 128}}\'') from None
    problem = why_invalid_knobs(knobs, num_heads) or why_invalid_kernel(knobs.get("kernel"))
    if problem:
        raise UserError(f"{what}: {problem}")
    return {k: knobs[k] for k in KNOBS}, dict(knobs.get("kernel") or {})


def _parse_knobs(text: str, what: str, num_heads: int) -> dict[str, int]:
    return _parse_config(text, what, num_heads)[0]


# ----------------------------------------------------------------------------- ours


def measure_ours_prefill(fast, knobs: dict, backend: str, length: int, repeats: int, seed: int) -> dict:
    """Prefill tok/s of FastModel with the cells through a `backend` scheduler."""
    model = fast.model
    toks = tokens(model.config.vocab_size, 1, length, seed, model.device)
    with make_scheduler(backend, Knobs(**knobs), device=model.device, dtype=model.dtype) as sched, torch.no_grad():
        fast.forward(toks, None, sched)  # warm-up
        sched.reset_counters()
        samples = timed(lambda: fast.forward(toks, None, sched), repeats)
        counters = sched.counters.as_dict()
    free()
    return {"samples_s": samples, "tok_s": length / statistics.median(samples), "counters_total": counters}


def measure_ours_decode(fast, knobs: dict, *, batch: int = 1, prompt_len: int, new_tokens: int, repeats: int,
                        seed: int, graphs: bool = True) -> dict:
    """Greedy decode tok/s (all sequences counted) through make_decoder (a CUDA graph of
    the whole step), with the peak device memory of the timed repeats."""
    model = fast.model
    prompt = tokens(model.config.vocab_size, batch, prompt_len, seed, model.device)
    with make_scheduler("sequential", Knobs(**knobs), device=model.device, dtype=model.dtype) as sched, \
            torch.no_grad():
        logits, state = fast.forward(prompt, None, sched)
        first = logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        decoder = make_decoder(model, sched, batch=batch, graphs=graphs, fast=fast)
        sync()
        setup_s = time.perf_counter() - start
        torch.cuda.reset_peak_memory_stats(model.device)
        samples = []
        for _ in range(repeats):
            decoder.load_state(state, sched.materialize)
            decoder.reset_counters()
            samples += timed(lambda: decoder.generate(first, new_tokens), 1)
        peak = torch.cuda.max_memory_allocated(model.device)
        counters = decoder.counters.as_dict()
        expected = decoder.expected_counters(new_tokens).as_dict() if hasattr(decoder, "expected_counters") else None
        path = {"kind": decoder.kind, "reason": decoder.reason}
    del decoder
    free()
    return {"samples_s": samples, "tok_s": batch * new_tokens / statistics.median(samples), "path": path,
            "decoder_setup_s": setup_s, "peak_bytes": peak, "counters_per_repeat": counters,
            "expected_counters": expected}


# ----------------------------------------------------------------------------- the comparison


@dataclasses.dataclass(frozen=True)
class CompareOptions:
    """What one comparison measures (the `autotune compare-official` flags, parsed)."""

    shape: str = "7b"
    contexts: tuple[int, ...] = (2048, 8192, 32768)
    new_tokens: int = 256
    official_new_tokens: int | None = None  # None: new_tokens
    decode_prompt: int = 64
    decode_batches: tuple[int, ...] = (1,)
    repeats: int = 3
    config: str | None = None  # knobs as JSON for every context and decode
    decode_config: str | None = None  # knobs as JSON for decode only
    defaults: str | None = None  # exported defaults file (None: the runner's default path)
    backend: str = "sequential"
    graphs: bool = True
    plan: OfficialPlan = OfficialPlan()
    skip_official: bool = False
    skip_official_batches: bool = False
    seed: int = 0
    json_out: str | None = None  # rewritten after each stage
    command: str = ""  # the command line, kept in the result


def _versions() -> dict:
    out = {"torch": torch.__version__}
    for name in ("triton", "xlstm", "mlstm_kernels"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _knobs_for(options: CompareOptions, num_heads: int, context: int, defaults_device: str,
               batch: int = 1) -> tuple[dict, dict, str]:
    """(knobs, kernel parameters, where from) for a prompt of `context` tokens at `batch`."""
    if options.config:
        return (*_parse_config(options.config, "--config", num_heads), "--config")
    choice = pick_choice(options.shape, defaults_device, options.backend, context, options.defaults,
                         dtype="bfloat16", num_heads=num_heads, batch=batch)
    return dict(choice.config), dict(choice.kernel), choice.describe()


def _ratio(ours: float | None, official: float | None) -> float | None:
    if ours is None or not official:
        return None
    return ours / official


def comparable_config(shape: str):
    """The model config of `shape`, once this machine and shape can be compared: a CUDA
    GPU, and mLSTM blocks only (the official xLSTMLarge has no sLSTM)."""
    if not torch.cuda.is_available():
        raise UserError("compare-official measures on a CUDA GPU and none is available here; "
                        "run it on a machine with an NVIDIA GPU")
    try:
        config = get_config(shape)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if config.slstm_at:
        raise UserError(f"shape {shape!r} has sLSTM blocks, which the official xLSTMLarge does not have; "
                        "use an mLSTM-only shape (125m, 350m, 1.3b, 7b)")
    return config


def compare(options: CompareOptions, config, progress: Callable[[str], None]) -> dict:
    """Measure ours, then the official variants, on the current CUDA device; returns the
    result (see the module docstring), also written to options.json_out after each stage."""
    contexts = list(options.contexts)
    plan = options.plan
    device = torch.device("cuda", torch.cuda.current_device())
    result: dict = {
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "versions": _versions(),
        "shape": options.shape,
        "dtype": "bfloat16",
        "state_dtype": "float32",
        "batch": 1,
        "weights": f"random (seed {options.seed})",
        "command": options.command,
        "decode_tok_s": {},
        "prefill_tok_s": {},
        "ours": {"prefill": {}, "configs": {}, "decode_batches": {}},
        "official": {"plan": dataclasses.asdict(plan)},
    }
    results = VariantResults()

    def checkpoint():
        result["official"]["variants"] = results.as_dict()
        if options.json_out:
            path = Path(options.json_out)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    result["copy_bytes_per_s"] = measure_copy_bandwidth(device)
    progress(f"device copy: {result['copy_bytes_per_s'] / 1e12:.2f} TB/s (read + write)")

    # -- ours
    progress(f"ours: building {options.shape} (bf16, random weights) on {result['gpu']}")
    model = XLSTM(config, device=device, dtype=torch.bfloat16, seed=options.seed)
    fast = FastModel(model)
    result["ours"]["ops"] = fast.ops.name
    result["decode_weight_bytes"] = weight_bytes_read_per_step(model)
    result["state_bytes_per_sequence"] = state_bytes_per_sequence(config)
    for L in contexts:
        knobs, kernel, source = _knobs_for(options, config.num_heads, L, device.type)
        entry = result["ours"]["configs"][str(L)] = {"knobs": knobs, "kernel": kernel, "source": source}
        progress(f"ours: prefill L={L} with {knobs} {kernel} ({options.backend})")
        with use_run(KernelRun(params=kernel)) as run:  # the config's kernel parameters, on record
            result["ours"]["prefill"][str(L)] = measure_ours_prefill(fast, knobs, options.backend, L,
                                                                     options.repeats, options.seed)
        entry["kernels"] = run.what_ran()
        checkpoint()
    if options.decode_config:
        dknobs, dkernel = _parse_config(options.decode_config, "--decode-config", config.num_heads)
        dsource = "--decode-config"
    else:
        dknobs, dkernel, dsource = _knobs_for(options, config.num_heads, options.decode_prompt, device.type)
    result["ours"]["configs"]["decode"] = {"knobs": dknobs, "kernel": dkernel, "source": dsource}
    for batch in options.decode_batches:
        progress(f"ours: decode {options.new_tokens} tokens, batch {batch}, with {dknobs} {dkernel}")
        with use_run(KernelRun(params=dkernel)) as run:
            result["ours"]["decode_batches"][str(batch)] = measure_ours_decode(
                fast, dknobs, batch=batch, prompt_len=options.decode_prompt, new_tokens=options.new_tokens,
                repeats=options.repeats, seed=options.seed, graphs=options.graphs)
        result["ours"]["decode_batches"][str(batch)]["kernels"] = run.what_ran()
        checkpoint()
    if "1" in result["ours"]["decode_batches"]:
        result["ours"]["decode"] = result["ours"]["decode_batches"]["1"]
    # what ran outside the measurements (the op set chosen when the fused model was built)
    result["ours"]["kernels"] = what_ran()
    del fast, model
    free()

    # -- official
    if not options.skip_official:
        new_tokens = options.official_new_tokens or options.new_tokens
        measure_official(config, plan, contexts=contexts, repeats=options.repeats,
                         decode_prompt=options.decode_prompt, new_tokens=new_tokens, seed=options.seed,
                         device=device, results=results, progress=progress, checkpoint=checkpoint)
        best = results.best("decode:b1")
        batches = [] if options.skip_official_batches else [b for b in options.decode_batches if b != 1]
        prefill_best = results.best(f"prefill:{contexts[0]}")
        if best and batches and prefill_best:
            settings = prefill_best["settings"]
            measure_official_batches(
                config, DecodeVariant(**best["settings"]),
                {"chunkwise_kernel": settings["chunkwise_kernel"], "chunk_size": settings["chunk_size"]},
                batches=batches, repeats=options.repeats, decode_prompt=options.decode_prompt,
                new_tokens=new_tokens, seed=options.seed, device=device, sequence_kernel=plan.sequence_kernel,
                results=results, progress=progress, checkpoint=checkpoint)

    summarize(result, results, contexts, options.decode_batches)
    checkpoint()
    return result


def _best(results: VariantResults, workload: str) -> tuple[float | None, str | None]:
    entry = results.best(workload)
    return (entry["tok_s"], entry["variant"]) if entry else (None, None)


def summarize(result: dict, results: VariantResults, contexts, batches) -> None:
    """decode_tok_s / prefill_tok_s with `official` the best official variant, the ratios,
    and the batch table with each side's bound."""
    ours = result["ours"]
    official, variant = _best(results, "decode:b1")
    result["decode_tok_s"] = {"ours": ours.get("decode", {}).get("tok_s"), "official": official,
                              "official_variant": variant}
    for L in contexts:
        official, variant = _best(results, f"prefill:{L}")
        result["prefill_tok_s"][str(L)] = {"ours": ours["prefill"][str(L)]["tok_s"], "official": official,
                                           "official_variant": variant}
    result["ratios"] = {
        "decode": _ratio(result["decode_tok_s"]["ours"], result["decode_tok_s"]["official"]),
        "prefill": {L: _ratio(v["ours"], v["official"]) for L, v in result["prefill_tok_s"].items()},
    }
    table = {}
    for batch in batches:
        mine = ours["decode_batches"].get(str(batch), {})
        theirs = results.best(f"decode:b{batch}") or {}
        table[str(batch)] = {
            "ours": mine.get("tok_s"), "ours_peak_bytes": mine.get("peak_bytes"),
            "official": theirs.get("tok_s"), "official_peak_bytes": theirs.get("peak_bytes"),
            "official_variant": theirs.get("variant"),
            "bound": decode_bound_tok_s(result["decode_weight_bytes"], result["state_bytes_per_sequence"], batch,
                                        result["copy_bytes_per_s"]),
        }
    result["decode_batches"] = table
