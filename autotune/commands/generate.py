"""`autotune generate`: run the model with the knobs exported for the prompt's length
(autotune.runtime picks them and runs the model).

There is no tokenizer. A prompt is given as text (its UTF-8 bytes are the token ids,
which is exact for the byte-level `tiny` shape), as explicit token ids, or as a number
of random ids (for timing). Weights are random (seeded) unless --checkpoint is given,
so the generated text is meaningless without one; the point is the config and speed.
"""

from __future__ import annotations

import argparse
import random
import sys
import warnings

from autotune.defaults import DEFAULT_PATH, DefaultsWarning
from autotune.errors import UserError
from autotune.runtime import load_runner
from kernels import get_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", required=True, help="model shape (tiny, mqar-tiny, 125m, 350m, 1.3b, 7b)")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", metavar="TEXT", help="prompt text; its UTF-8 bytes are the token ids")
    prompt.add_argument("--prompt-ids", metavar="IDS", help="comma-separated token ids, e.g. 1,17,42")
    prompt.add_argument("--prompt-tokens", metavar="N", type=int, help="a prompt of N random token ids (seeded)")
    parser.add_argument("--new-tokens", metavar="N", type=int, required=True, help="tokens to generate")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default: auto)")
    parser.add_argument("--backend", default="queued", choices=("sequential", "queued", "ray"),
                        help="scheduler backend (default: queued)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--defaults", metavar="FILE", default=None,
                        help=f"exported defaults (default: {DEFAULT_PATH}); missing -> built-in knobs")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="weights: an own checkpoint or official xLSTM safetensors (default: random)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the cell kernels")
    parser.add_argument("--warmup", action="store_true", help="run once untimed first (keeps compile time out of tok/s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights and random prompts")


def prompt_ids(args: argparse.Namespace, vocab: int) -> list[int]:
    if args.prompt is not None:
        ids = list(args.prompt.encode("utf-8"))
        if not ids:
            raise UserError("--prompt is empty; give some text")
    elif args.prompt_ids is not None:
        try:
            ids = [int(part) for part in args.prompt_ids.replace(" ", "").split(",") if part]
        except ValueError:
            raise UserError(f"--prompt-ids {args.prompt_ids!r} is not a comma-separated list of integers") from None
        if not ids:
            raise UserError("--prompt-ids is empty; give e.g. 1,17,42")
    else:
        if args.prompt_tokens < 1:
            raise UserError(f"--prompt-tokens must be >= 1, got {args.prompt_tokens}")
        rng = random.Random(args.seed)
        ids = [rng.randrange(vocab) for _ in range(args.prompt_tokens)]
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        hint = " (text is UTF-8 bytes: this shape's vocabulary is smaller than 256)" if args.prompt is not None else ""
        raise UserError(f"token id {bad[0]} is outside this shape's vocabulary 0..{vocab - 1}{hint}")
    return ids


def run(args: argparse.Namespace) -> int:
    try:
        vocab = get_config(args.shape).vocab_size
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.new_tokens < 1:
        raise UserError(f"--new-tokens must be >= 1, got {args.new_tokens}")
    ids = prompt_ids(args, vocab)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DefaultsWarning)
        try:
            runner = load_runner(args.shape, args.device, args.backend, args.defaults, prompt_len=len(ids),
                                 dtype=args.dtype, checkpoint=args.checkpoint, compile=args.compile, seed=args.seed)
        except ValueError as exc:  # unknown device, bad checkpoint, invalid knobs
            raise UserError(str(exc)) from None
    for warning in caught:
        if issubclass(warning.category, DefaultsWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
    with runner:
        print(f"model: {args.shape}, {runner.weights} weights, {runner.device}, {args.dtype}, backend {args.backend}")
        print(f"config: {runner.choice.describe()}")
        result = runner.generate(ids, args.new_tokens, warmup=args.warmup)
    decode = result.decode_tok_s
    print(f"prompt: {result.prompt_len} tokens -> {len(result.tokens)} new tokens")
    print(f"prefill: {result.prefill_tok_s:,.1f} tok/s (time to first token {result.ttft_s * 1e3:,.1f} ms); "
          f"decode: {'-' if decode is None else f'{decode:,.1f}'} tok/s")
    print("tokens: " + " ".join(str(t) for t in result.tokens))
    if args.prompt is not None:  # text in, so show bytes out (invalid UTF-8 shows as U+FFFD)
        text = bytes(t for t in result.tokens if t < 256).decode("utf-8", errors="replace")
        print(f"text: {text!r}")
    return 0
