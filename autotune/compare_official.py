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
compilation, graph capture, torch.compile) happens before it. Prints the ratios; --json
writes {gpu, decode_tok_s: {ours, official, official_variant}, prefill_tok_s: {"<L>":
{ours, official, official_variant}}, decode_batches, official: {variants}, ...}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from autotune.errors import UserError
from autotune.compare_official_model import free, measure_copy_bandwidth, official_modules, sync, timed, tokens
from autotune.compare_official_variants import (DecodeVariant, OfficialPlan, VariantResults, decode_bound_tok_s,
                                                state_bytes_per_sequence, weight_bytes_read_per_step)
from autotune.names import KNOBS


def _csv(kind):
    def parse(text: str):
        try:
            return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}") from None
    return parse


def _grid_help(default) -> str:
    return f"official settings measured, comma-separated (default {','.join(map(str, default))})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    plan = OfficialPlan()
    parser.add_argument("--json", metavar="OUT", help="write the result as JSON to OUT (rewritten after each stage)")
    parser.add_argument("--shape", default="7b", help="model shape (mLSTM-only shapes: 125m, 350m, 1.3b, 7b)")
    parser.add_argument("--contexts", default="2048,8192,32768", help="prefill lengths, comma-separated")
    parser.add_argument("--new-tokens", type=int, default=256, help="decoded tokens timed per repeat (ours)")
    parser.add_argument("--official-new-tokens", type=int,
                        help="decoded tokens timed per repeat for the official model (default --new-tokens)")
    parser.add_argument("--decode-prompt", type=int, default=64, help="prompt length before decoding")
    parser.add_argument("--decode-batches", type=_csv(int), default=(1,),
                        help="decode batch sizes, comma-separated; batches above 1 run the official model's "
                             "best batch-1 decode variant")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument("--config", help="knobs as JSON for every context and decode, e.g. "
                        '\'{"workers": 1, "heads_per_band": 8, "chunk_size": 8192, "T_inner": 8192}\'')
    parser.add_argument("--decode-config", help="knobs as JSON for decode only (default: --config or the defaults)")
    parser.add_argument("--defaults", help="exported defaults file (default studies/defaults.json)")
    parser.add_argument("--backend", default="sequential", choices=("sequential", "queued"),
                        help="scheduler backend for our prefill")
    parser.add_argument("--no-graphs", action="store_true", help="decode ours eagerly (no CUDA graph)")
    parser.add_argument("--official-weight-modes", type=_csv(str), default=plan.weight_modes,
                        help=_grid_help(plan.weight_modes))
    parser.add_argument("--official-chunkwise-kernels", type=_csv(str), default=plan.chunkwise_kernels,
                        help=_grid_help(plan.chunkwise_kernels))
    parser.add_argument("--official-chunk-sizes", type=_csv(int), default=plan.chunk_sizes,
                        help=_grid_help(plan.chunk_sizes))
    parser.add_argument("--official-step-kernels", type=_csv(str), default=plan.step_kernels,
                        help=_grid_help(plan.step_kernels))
    parser.add_argument("--official-compiled-step-kernels", type=_csv(str), default=plan.compiled_step_kernels,
                        help="step kernels also timed under torch.compile(mode='reduce-overhead') "
                             "(empty: no compiled decode)")
    parser.add_argument("--official-compiled-weight-modes", type=_csv(str),
                        help="weight modes whose decode is also timed compiled (default: all)")
    parser.add_argument("--official-sequence-kernel", default=plan.sequence_kernel)
    parser.add_argument("--skip-official-batches", action="store_true",
                        help="decode batches above 1 for ours only")
    parser.add_argument("--skip-official", action="store_true", help="measure ours only")
    parser.add_argument("--seed", type=int, default=0)


# ----------------------------------------------------------------------------- helpers


def _parse_contexts(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--contexts must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"--contexts needs positive lengths, got {text!r}")
    return values


def _parse_config(text: str, what: str, num_heads: int) -> tuple[dict[str, int], dict[str, int]]:
    """(knobs, kernel parameters) of a JSON config; kernel parameters under "kernel"."""
    from autotune.defaults import why_invalid_kernel, why_invalid_knobs

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


def _progress(text: str) -> None:
    print(f"[compare-official] {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- ours


def measure_ours_prefill(fast, knobs: dict, backend: str, length: int, repeats: int, seed: int) -> dict:
    """Prefill tok/s of FastModel with the cells through a `backend` scheduler."""
    from schedulers import Knobs, make_scheduler

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
    from schedulers import Knobs, make_scheduler
    from schedulers.graphs import make_decoder

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


# ----------------------------------------------------------------------------- the command


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__}
    for name in ("triton", "xlstm", "mlstm_kernels"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _knobs_for(args, num_heads: int, context: int, defaults_device: str, batch: int = 1) -> tuple[dict, dict, str]:
    """(knobs, kernel parameters, where from) for a prompt of `context` tokens at `batch`."""
    if args.config:
        return (*_parse_config(args.config, "--config", num_heads), "--config")
    from autotune.defaults import pick_choice

    choice = pick_choice(args.shape, defaults_device, args.backend, context, args.defaults,
                         dtype="bfloat16", num_heads=num_heads, batch=batch)
    return dict(choice.config), dict(choice.kernel), choice.describe()


def _ratio(ours: float | None, official: float | None) -> float | None:
    if ours is None or not official:
        return None
    return ours / official


def _validate(args) -> list[int]:
    contexts = _parse_contexts(args.contexts)
    for name in ("new_tokens", "decode_prompt", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.official_new_tokens is not None and args.official_new_tokens < 1:
        raise UserError("--official-new-tokens must be >= 1")
    if not args.decode_batches or min(args.decode_batches) < 1:
        raise UserError("--decode-batches needs positive batch sizes, e.g. 1,16,64")
    if not args.skip_official:
        official_modules()  # fail before the long part, not after it
        for name in ("weight_modes", "chunkwise_kernels", "chunk_sizes", "step_kernels"):
            if not getattr(args, f"official_{name}"):
                raise UserError(f"--official-{name.replace('_', '-')} needs at least one value")
    return contexts


def run(args) -> int:
    from kernels import XLSTM, get_config

    if not torch.cuda.is_available():
        raise UserError("compare-official measures on a CUDA GPU and none is available here; "
                        "run it on a machine with an NVIDIA GPU")
    try:
        config = get_config(args.shape)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if config.slstm_at:
        raise UserError(f"shape {args.shape!r} has sLSTM blocks, which the official xLSTMLarge does not have; "
                        "use an mLSTM-only shape (125m, 350m, 1.3b, 7b)")
    contexts = _validate(args)
    plan = OfficialPlan(tuple(args.official_weight_modes), tuple(args.official_chunkwise_kernels),
                        tuple(args.official_chunk_sizes), tuple(args.official_step_kernels),
                        tuple(args.official_compiled_step_kernels), args.official_sequence_kernel,
                        tuple(args.official_compiled_weight_modes or args.official_weight_modes))
    device = torch.device("cuda", torch.cuda.current_device())
    result: dict = {
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "versions": _versions(),
        "shape": args.shape,
        "dtype": "bfloat16",
        "state_dtype": "float32",
        "batch": 1,
        "weights": f"random (seed {args.seed})",
        "command": "autotune compare-official " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["compare-official"] else sys.argv[1:]),
        "decode_tok_s": {},
        "prefill_tok_s": {},
        "ours": {"prefill": {}, "configs": {}, "decode_batches": {}},
        "official": {"plan": dataclasses.asdict(plan)},
    }
    results = VariantResults()

    def checkpoint():
        result["official"]["variants"] = results.as_dict()
        if args.json:
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    result["copy_bytes_per_s"] = measure_copy_bandwidth(device)
    _progress(f"device copy: {result['copy_bytes_per_s'] / 1e12:.2f} TB/s (read + write)")

    # -- ours
    from kernels.fastpath import FastModel
    from kernels.registry import KernelRun, use_run, what_ran

    _progress(f"ours: building {args.shape} (bf16, random weights) on {result['gpu']}")
    model = XLSTM(config, device=device, dtype=torch.bfloat16, seed=args.seed)
    fast = FastModel(model)
    result["ours"]["ops"] = fast.ops.name
    result["decode_weight_bytes"] = weight_bytes_read_per_step(model)
    result["state_bytes_per_sequence"] = state_bytes_per_sequence(config)
    for L in contexts:
        knobs, kernel, source = _knobs_for(args, config.num_heads, L, device.type)
        entry = result["ours"]["configs"][str(L)] = {"knobs": knobs, "kernel": kernel, "source": source}
        _progress(f"ours: prefill L={L} with {knobs} {kernel} ({args.backend})")
        with use_run(KernelRun(params=kernel)) as run:  # the config's kernel parameters, on record
            result["ours"]["prefill"][str(L)] = measure_ours_prefill(fast, knobs, args.backend, L, args.repeats,
                                                                     args.seed)
        entry["kernels"] = run.what_ran()
        checkpoint()
    if args.decode_config:
        dknobs, dkernel = _parse_config(args.decode_config, "--decode-config", config.num_heads)
        dsource = "--decode-config"
    else:
        dknobs, dkernel, dsource = _knobs_for(args, config.num_heads, args.decode_prompt, device.type)
    result["ours"]["configs"]["decode"] = {"knobs": dknobs, "kernel": dkernel, "source": dsource}
    for batch in args.decode_batches:
        _progress(f"ours: decode {args.new_tokens} tokens, batch {batch}, with {dknobs} {dkernel}")
        with use_run(KernelRun(params=dkernel)) as run:
            result["ours"]["decode_batches"][str(batch)] = measure_ours_decode(
                fast, dknobs, batch=batch, prompt_len=args.decode_prompt, new_tokens=args.new_tokens,
                repeats=args.repeats, seed=args.seed, graphs=not args.no_graphs)
        result["ours"]["decode_batches"][str(batch)]["kernels"] = run.what_ran()
        checkpoint()
    if "1" in result["ours"]["decode_batches"]:
        result["ours"]["decode"] = result["ours"]["decode_batches"]["1"]
    # what ran outside the measurements (the op set chosen when the fused model was built)
    result["ours"]["kernels"] = what_ran()
    del fast, model
    free()

    # -- official
    if not args.skip_official:
        from autotune.compare_official_model import measure_official, measure_official_batches

        new_tokens = args.official_new_tokens or args.new_tokens
        measure_official(config, plan, contexts=contexts, repeats=args.repeats, decode_prompt=args.decode_prompt,
                         new_tokens=new_tokens, seed=args.seed, device=device, results=results,
                         progress=_progress, checkpoint=checkpoint)
        best = results.best("decode:b1")
        batches = [] if args.skip_official_batches else [b for b in args.decode_batches if b != 1]
        prefill_best = results.best(f"prefill:{contexts[0]}")
        if best and batches and prefill_best:
            settings = prefill_best["settings"]
            measure_official_batches(
                config, DecodeVariant(**best["settings"]),
                {"chunkwise_kernel": settings["chunkwise_kernel"], "chunk_size": settings["chunk_size"]},
                batches=batches, repeats=args.repeats, decode_prompt=args.decode_prompt, new_tokens=new_tokens,
                seed=args.seed, device=device, sequence_kernel=plan.sequence_kernel, results=results,
                progress=_progress, checkpoint=checkpoint)

    summarize(result, results, contexts, args.decode_batches)
    checkpoint()
    print(format_table(result))
    if args.json:
        _progress(f"wrote {args.json}")
    return 0


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


def format_table(result: dict) -> str:
    def fmt(x):
        return "-" if x is None else f"{x:,.1f}"

    def rat(x):
        return "-" if x is None else f"{x:.2f}x"

    lines = [f"{result['shape']} on {result['gpu']} (torch {result['torch']}, bf16 weights, fp32 state, batch 1)",
             f"{'':18} {'ours':>12} {'official':>12} {'ratio':>8}  official variant (best measured)"]
    d = result["decode_tok_s"]
    lines.append(f"{'decode tok/s':18} {fmt(d['ours']):>12} {fmt(d['official']):>12} "
                 f"{rat(result['ratios']['decode']):>8}  {d.get('official_variant') or '-'}")
    for L, v in result["prefill_tok_s"].items():
        lines.append(f"{'prefill L=' + L:18} {fmt(v['ours']):>12} {fmt(v['official']):>12} "
                     f"{rat(result['ratios']['prefill'][L]):>8}  {v.get('official_variant') or '-'}")
    batches = result.get("decode_batches") or {}
    if len(batches) > 1:
        lines.append(f"{'decode batch':18} {'ours':>12} {'official':>12} {'bound':>8}")
        for b, row in batches.items():
            lines.append(f"{'  B=' + b:18} {fmt(row['ours']):>12} {fmt(row['official']):>12} {fmt(row['bound']):>8}")
    crashed = (result.get("official", {}).get("variants") or {}).get("crashed") or []
    for item in crashed:
        lines.append(f"crashed: {item['variant']}: {item['error']}")
    return "\n".join(lines)
