"""MQAR recall of the shipped mqar-tiny checkpoint, through the configured scheduler.

The benchmark shape's own weights are random and cannot recall anything, so recall is
measured with `kernels/assets/mqar-tiny.safetensors` (trained by
`python -m kernels.mqar_train`) at the study's context length, its mLSTM layers run by a
scheduler with the configured backend and knobs. The model runs in float32 whatever the
benchmark dtype, and the data come from a fixed seed, so recall is a function of context
length and scheduling alone: equal for every backend and knob setting, which is what
makes it a check that scheduling never changes the logical result.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

import kernels
from kernels.mqar import IGNORE, mqar_batch, pairs_for_length, query_hits

CHECKPOINT = Path(kernels.__file__).resolve().parent / "assets" / "mqar-tiny.safetensors"
DATA_SEED = 20231208  # fixed: recall never depends on the benchmark's seed
RECALL_TOKENS = 16384  # tokens evaluated per context length (at least MIN_SEQUENCES sequences)
MIN_SEQUENCES = 4
BATCH_TOKENS = 16384  # tokens per forward pass (only query positions get logits)
MIN_CONTEXT = 8


def recall_model(device: torch.device, runner, checkpoint: Path = CHECKPOINT) -> kernels.XLSTM:
    return kernels.load_checkpoint(checkpoint, device=device, dtype=torch.float32, cell_runner=runner)


@contextlib.contextmanager
def head_at(model: kernels.XLSTM, mask: torch.Tensor):
    """Within the block, the model's forward returns logits (Q, V) for the Q positions of
    `mask` only: the LM head's input is gathered first. Recall needs no other logits, and
    skipping them removes most of the work and all of the (B, S, V) memory."""

    def gather(module, args):
        (x,) = args
        return (x[mask],)

    handle = model.lm_head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def recall_data(context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The MQAR inputs and labels at `context` tokens (fixed seed: the same every time)."""
    sequences = max(MIN_SEQUENCES, math.ceil(RECALL_TOKENS / context))
    return mqar_batch(sequences, context, pairs_for_length(context), seed=DATA_SEED)


@torch.no_grad()
def measure_recall(model: kernels.XLSTM, context: int, *, check=None, data=None) -> dict:
    """{recall, mqar_pairs, mqar_queries} at `context` tokens; `check(name, logits)` is
    called on every logits tensor (the benchmark's NaN/inf check). data: recall_data(context),
    when the caller keeps it."""
    pairs = pairs_for_length(context)
    inputs, labels = data if data is not None else recall_data(context)
    sequences = inputs.shape[0]
    per_pass = max(1, BATCH_TOKENS // context)
    correct = total = 0
    for start in range(0, sequences, per_pass):
        x = inputs[start : start + per_pass].to(model.device)
        y = labels[start : start + per_pass].to(model.device)
        mask = y != IGNORE
        with head_at(model, mask):
            logits, _ = model(x)  # (queries, vocab)
        if check is not None:
            check("mqar-tiny logits", logits)
        c, t = query_hits(logits, y[mask])
        correct, total = correct + c, total + t
    return {"recall": correct / total, "mqar_pairs": pairs, "mqar_queries": total}
