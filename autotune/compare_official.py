"""`autotune compare-official`: our runtime against the official xLSTM kernels, one process.

Both sides build the same architecture (an xLSTM-7B-shaped model by default) with random
bf16 weights and fp32 state, batch 1, on one CUDA GPU, one after the other:

- ours: kernels.fastpath.FastModel with the mLSTM cells through a scheduler configured
  with the exported defaults for each context length (or --config); decode through a
  CUDA graph of the whole step (schedulers.graphs) with that config's bands and workers;
- official: xlstm 2.0.6's xLSTMLarge in 'inference' mode, prefill with the
  chunkwise--triton_limit_chunk kernel, decode with the native step kernel.

Prefill tok/s = L / time of one forward over L random tokens (all logits, as the
official model computes them); decode tok/s = new tokens / time of greedy decoding them
after a short prompt. Every timed region is synchronized; warm-up (Triton compilation,
graph capture) happens before it. Prints the ratios; --json writes
{gpu, torch, decode_tok_s: {ours, official}, prefill_tok_s: {"<L>": {ours, official}}, ...}.

The official packages are imported only here; without them the command says how to
install them.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from autotune.cli import UserError
from autotune.names import KNOBS

OFFICIAL_PACKAGES = "xlstm==2.0.6 mlstm_kernels==2.0.6"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="OUT", help="write the result as JSON to OUT")
    parser.add_argument("--shape", default="7b", help="model shape (mLSTM-only shapes: 125m, 350m, 1.3b, 7b)")
    parser.add_argument("--contexts", default="2048,8192,32768", help="prefill lengths, comma-separated")
    parser.add_argument("--new-tokens", type=int, default=256, help="decoded tokens timed per repeat")
    parser.add_argument("--decode-prompt", type=int, default=64, help="prompt length before decoding")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument("--config", help="knobs as JSON for every context and decode, e.g. "
                        '\'{"workers": 1, "heads_per_band": 8, "chunk_size": 8192, "T_inner": 8192}\'')
    parser.add_argument("--decode-config", help="knobs as JSON for decode only (default: --config or the defaults)")
    parser.add_argument("--defaults", help="exported defaults file (default studies/defaults.json)")
    parser.add_argument("--backend", default="sequential", choices=("sequential", "queued"),
                        help="scheduler backend for our prefill")
    parser.add_argument("--no-graphs", action="store_true", help="decode ours eagerly (no CUDA graph)")
    parser.add_argument("--official-chunkwise-kernel", default="chunkwise--triton_limit_chunk")
    parser.add_argument("--official-step-kernel", default="native")
    parser.add_argument("--official-sequence-kernel", default="native_sequence__native")
    parser.add_argument("--official-chunk-size", type=int, default=64)
    parser.add_argument("--official-compiled-decode", action="store_true",
                        help="also time the official decode under torch.compile(mode='reduce-overhead')")
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


def _parse_knobs(text: str, what: str, num_heads: int) -> dict[str, int]:
    from autotune.defaults import why_invalid_knobs

    try:
        knobs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} is not JSON ({exc}); give e.g. "
                        '\'{"workers": 1, "heads_per_band": 8, "chunk_size": 2048, "T_inner": 2048}\'') from None
    problem = why_invalid_knobs(knobs, num_heads)
    if problem:
        raise UserError(f"{what}: {problem}")
    return {k: knobs[k] for k in KNOBS}


def _sync() -> None:
    torch.cuda.synchronize()


def _timed(fn, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        samples.append(time.perf_counter() - start)
    return samples


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def _progress(text: str) -> None:
    print(f"[compare-official] {text}", file=sys.stderr, flush=True)


def _tokens(vocab: int, length: int, seed: int, device) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(0, vocab, (1, length), generator=gen).to(device)


# ----------------------------------------------------------------------------- ours


def measure_ours_prefill(fast, knobs: dict, backend: str, length: int, repeats: int, seed: int) -> dict:
    """Prefill tok/s of FastModel with the cells through a `backend` scheduler."""
    from schedulers import Knobs, make_scheduler

    model = fast.model
    tokens = _tokens(model.config.vocab_size, length, seed, model.device)
    with make_scheduler(backend, Knobs(**knobs), device=model.device, dtype=model.dtype) as sched, torch.no_grad():
        fast.forward(tokens, None, sched)  # warm-up
        sched.reset_counters()
        samples = _timed(lambda: fast.forward(tokens, None, sched), repeats)
        counters = sched.counters.as_dict()
    _free()
    return {"samples_s": samples, "tok_s": length / statistics.median(samples), "counters_total": counters}


def measure_ours_decode(fast, knobs: dict, *, prompt_len: int, new_tokens: int, repeats: int, seed: int,
                        graphs: bool = True) -> dict:
    """Greedy decode tok/s through make_decoder (a CUDA graph of the whole step)."""
    from schedulers import Knobs, make_scheduler
    from schedulers.graphs import make_decoder

    model = fast.model
    prompt = _tokens(model.config.vocab_size, prompt_len, seed, model.device)
    with make_scheduler("sequential", Knobs(**knobs), device=model.device, dtype=model.dtype) as sched, \
            torch.no_grad():
        logits, state = fast.forward(prompt, None, sched)
        first = logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        decoder = make_decoder(model, sched, graphs=graphs, fast=fast)
        _sync()
        setup_s = time.perf_counter() - start
        samples = []
        for _ in range(repeats):
            decoder.load_state(state, sched.materialize)
            decoder.reset_counters()
            samples += _timed(lambda: decoder.generate(first, new_tokens), 1)
        counters = decoder.counters.as_dict()
        expected = decoder.expected_counters(new_tokens).as_dict() if hasattr(decoder, "expected_counters") else None
        path = {"kind": decoder.kind, "reason": decoder.reason}
    del decoder
    _free()
    return {"samples_s": samples, "tok_s": new_tokens / statistics.median(samples), "path": path,
            "decoder_setup_s": setup_s, "counters_per_repeat": counters, "expected_counters": expected}


# ----------------------------------------------------------------------------- official


def official_modules():
    """The official xLSTMLarge classes, or a UserError saying how to install them."""
    try:
        from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig
    except ImportError as exc:
        raise UserError(f"the official xLSTM packages are not importable ({exc}); "
                        f"install them for this comparison: pip install {OFFICIAL_PACKAGES}") from None
    return xLSTMLarge, xLSTMLargeConfig


def build_official(config, args, device):
    """xLSTMLarge with our ModelConfig's architecture, random bf16 weights on `device`."""
    xLSTMLarge, xLSTMLargeConfig = official_modules()
    cfg = xLSTMLargeConfig(
        embedding_dim=config.embedding_dim, num_heads=config.num_heads, num_blocks=config.num_blocks,
        vocab_size=config.vocab_size, use_bias=False, norm_eps=config.norm_eps,
        qk_dim_factor=config.qk_dim_factor, v_dim_factor=config.v_dim_factor,
        gate_soft_cap=config.gate_soft_cap, output_logit_soft_cap=config.logit_soft_cap,
        ffn_proj_factor=config.ffn_proj_factor, ffn_round_up_to_multiple_of=config.ffn_round_up_to,
        mode="inference", chunkwise_kernel=args.official_chunkwise_kernel,
        sequence_kernel=args.official_sequence_kernel, step_kernel=args.official_step_kernel,
        chunk_size=args.official_chunk_size, return_last_states=True, autocast_kernel_dtype="bfloat16",
        inference_state_dtype="float32", weight_mode="single",
    )
    previous = torch.get_default_dtype()
    torch.manual_seed(args.seed)
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16 directly on the GPU
    try:
        with torch.device(device):
            model = xLSTMLarge(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.eval().requires_grad_(False)
    return model, cfg


def measure_official_prefill(model, vocab: int, length: int, repeats: int, seed: int, device) -> dict:
    tokens = _tokens(vocab, length, seed, device)
    with torch.no_grad():
        model(tokens)  # warm-up: Triton compiles here
        samples = _timed(lambda: model(tokens), repeats)
    _free()
    return {"samples_s": samples, "tok_s": length / statistics.median(samples)}


def measure_official_decode(model, vocab: int, *, prompt_len: int, new_tokens: int, repeats: int, seed: int,
                            device, compiled: bool = False) -> dict:
    prompt = _tokens(vocab, prompt_len, seed, device)
    forward = torch.compile(model, mode="reduce-overhead") if compiled else model
    samples = []
    with torch.no_grad():
        logits, state = model(prompt)
        first = logits[:, -1:].argmax(-1)

        def run(start_state):
            token, st = first, start_state
            for _ in range(new_tokens):
                logits, st = forward(token, st)
                token = logits[:, -1:].argmax(-1)

        def fresh():  # the official backbone updates states in place
            return {k: tuple(t.clone() for t in v) for k, v in state.items()}

        run(fresh())  # warm-up (compilation when compiled)
        for _ in range(repeats):
            st = fresh()
            samples += _timed(lambda: run(st), 1)
    _free()
    return {"samples_s": samples, "tok_s": new_tokens / statistics.median(samples)}


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


def _knobs_for(args, num_heads: int, context: int, defaults_device: str) -> tuple[dict, str]:
    if args.config:
        return _parse_knobs(args.config, "--config", num_heads), "--config"
    from autotune.defaults import pick_choice

    choice = pick_choice(args.shape, defaults_device, args.backend, context, args.defaults,
                         dtype="bfloat16", num_heads=num_heads)
    return dict(choice.config), choice.describe()


def _ratio(ours: float | None, official: float | None) -> float | None:
    if ours is None or not official:
        return None
    return ours / official


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
    contexts = _parse_contexts(args.contexts)
    for name in ("new_tokens", "decode_prompt", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if not args.skip_official:
        official_modules()  # fail before the long part, not after it

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
        "ours": {"prefill": {}, "configs": {}},
        "official": {"prefill": {}},
    }

    # -- ours
    from kernels.fastpath import FastModel

    _progress(f"ours: building {args.shape} (bf16, random weights) on {result['gpu']}")
    model = XLSTM(config, device=device, dtype=torch.bfloat16, seed=args.seed)
    fast = FastModel(model)
    result["ours"]["ops"] = fast.ops.name
    for L in contexts:
        knobs, source = _knobs_for(args, config.num_heads, L, device.type)
        result["ours"]["configs"][str(L)] = {"knobs": knobs, "source": source}
        _progress(f"ours: prefill L={L} with {knobs} ({args.backend})")
        result["ours"]["prefill"][str(L)] = measure_ours_prefill(fast, knobs, args.backend, L, args.repeats, args.seed)
    if args.decode_config:
        dknobs, dsource = _parse_knobs(args.decode_config, "--decode-config", config.num_heads), "--decode-config"
    else:
        dknobs, dsource = _knobs_for(args, config.num_heads, args.decode_prompt, device.type)
    result["ours"]["configs"]["decode"] = {"knobs": dknobs, "source": dsource}
    _progress(f"ours: decode {args.new_tokens} tokens with {dknobs}")
    result["ours"]["decode"] = measure_ours_decode(
        fast, dknobs, prompt_len=args.decode_prompt, new_tokens=args.new_tokens, repeats=args.repeats,
        seed=args.seed, graphs=not args.no_graphs)
    del fast, model
    _free()

    # -- official
    if not args.skip_official:
        _progress("official: building xLSTMLarge (bf16, random weights)")
        official, cfg = build_official(config, args, device)
        result["official"]["config"] = {k: getattr(cfg, k) for k in (
            "chunkwise_kernel", "sequence_kernel", "step_kernel", "chunk_size", "mode",
            "autocast_kernel_dtype", "inference_state_dtype", "weight_mode")}
        for L in contexts:
            _progress(f"official: prefill L={L}")
            result["official"]["prefill"][str(L)] = measure_official_prefill(
                official, config.vocab_size, L, args.repeats, args.seed, device)
        _progress(f"official: decode {args.new_tokens} tokens (eager)")
        result["official"]["decode"] = measure_official_decode(
            official, config.vocab_size, prompt_len=args.decode_prompt, new_tokens=args.new_tokens,
            repeats=args.repeats, seed=args.seed, device=device)
        if args.official_compiled_decode:
            _progress("official: decode under torch.compile(mode='reduce-overhead')")
            result["official"]["decode_compiled"] = measure_official_decode(
                official, config.vocab_size, prompt_len=args.decode_prompt, new_tokens=args.new_tokens,
                repeats=args.repeats, seed=args.seed, device=device, compiled=True)
        del official
        _free()

    # -- summary
    off = result["official"]
    result["decode_tok_s"] = {"ours": result["ours"]["decode"]["tok_s"],
                              "official": off.get("decode", {}).get("tok_s")}
    if "decode_compiled" in off:
        result["decode_tok_s"]["official_compiled"] = off["decode_compiled"]["tok_s"]
    for L in contexts:
        result["prefill_tok_s"][str(L)] = {"ours": result["ours"]["prefill"][str(L)]["tok_s"],
                                           "official": off["prefill"].get(str(L), {}).get("tok_s")}
    result["ratios"] = {
        "decode": _ratio(result["decode_tok_s"]["ours"], result["decode_tok_s"]["official"]),
        "prefill": {L: _ratio(v["ours"], v["official"]) for L, v in result["prefill_tok_s"].items()},
    }
    if "official_compiled" in result["decode_tok_s"]:
        result["ratios"]["decode_vs_compiled"] = _ratio(result["decode_tok_s"]["ours"],
                                                        result["decode_tok_s"]["official_compiled"])
    print(format_table(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        _progress(f"wrote {path}")
    return 0


def format_table(result: dict) -> str:
    def fmt(x):
        return "-" if x is None else f"{x:,.1f}"

    def rat(x):
        return "-" if x is None else f"{x:.2f}x"

    lines = [f"{result['shape']} on {result['gpu']} (torch {result['torch']}, bf16 weights, fp32 state, batch 1)",
             f"{'':18} {'ours':>12} {'official':>12} {'ratio':>8}"]
    d = result["decode_tok_s"]
    lines.append(f"{'decode tok/s':18} {fmt(d['ours']):>12} {fmt(d['official']):>12} {rat(result['ratios']['decode']):>8}")
    if "official_compiled" in d:
        lines.append(f"{'  vs compiled':18} {'':>12} {fmt(d['official_compiled']):>12} "
                     f"{rat(result['ratios']['decode_vs_compiled']):>8}")
    for L, v in result["prefill_tok_s"].items():
        lines.append(f"{'prefill L=' + L:18} {fmt(v['ours']):>12} {fmt(v['official']):>12} "
                     f"{rat(result['ratios']['prefill'][L]):>8}")
    return "\n".join(lines)
