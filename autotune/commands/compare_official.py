"""`autotune compare-official`: the arguments of the comparison against the official xLSTM
kernels (autotune.compare_official) and its table of ratios."""

from __future__ import annotations

import argparse
import sys

from autotune.compare_official import CompareOptions, comparable_config, compare
from autotune.compare_official_model import official_modules
from autotune.compare_official_variants import OfficialPlan
from autotune.errors import UserError


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


def _parse_contexts(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--contexts must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"--contexts needs positive lengths, got {text!r}")
    return values


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


def run(args: argparse.Namespace) -> int:
    config = comparable_config(args.shape)
    contexts = _validate(args)
    plan = OfficialPlan(tuple(args.official_weight_modes), tuple(args.official_chunkwise_kernels),
                        tuple(args.official_chunk_sizes), tuple(args.official_step_kernels),
                        tuple(args.official_compiled_step_kernels), args.official_sequence_kernel,
                        tuple(args.official_compiled_weight_modes or args.official_weight_modes))
    options = CompareOptions(
        shape=args.shape, contexts=tuple(contexts), new_tokens=args.new_tokens,
        official_new_tokens=args.official_new_tokens, decode_prompt=args.decode_prompt,
        decode_batches=tuple(args.decode_batches), repeats=args.repeats, config=args.config,
        decode_config=args.decode_config, defaults=args.defaults, backend=args.backend, graphs=not args.no_graphs,
        plan=plan, skip_official=args.skip_official, skip_official_batches=args.skip_official_batches,
        seed=args.seed, json_out=args.json,
        command="autotune compare-official " + " ".join(
            sys.argv[2:] if sys.argv[1:2] == ["compare-official"] else sys.argv[1:]),
    )
    result = compare(options, config, _progress)
    print(format_table(result))
    if args.json:
        _progress(f"wrote {args.json}")
    return 0


def _progress(text: str) -> None:
    print(f"[compare-official] {text}", file=sys.stderr, flush=True)


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
