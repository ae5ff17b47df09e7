"""Train the mqar-tiny checkpoint that the benchmark measures recall with.

    python -m kernels.mqar_train --out kernels/assets/mqar-tiny.safetensors

A curriculum over (sequence length, key-value pairs) ends at the training length
TRAIN_LEN with TRAIN_PAIRS pairs (kernels.mqar), moving on when the running accuracy of a
stage passes --advance-at. The loss is cross-entropy at the query positions only (every
other label is ignored, as in Zoology), and the LM head runs only on those positions,
which keeps a CPU run short. What makes a run of minutes enough:
- the LM head is tied to the embedding while training (a recalled value is read out by
  the vector that wrote it);
- gate biases start open (see init_gates_for_recall);
- an auxiliary previous-token loss (see previous_token_loss).
Every batch is fresh random data; the final accuracy is measured on held-out sequences
drawn from a seed never used for training. Weights are saved in bf16 (the checkpoint
stays a few MB); the accuracy printed at the end is that of the saved, bf16-rounded
weights. Training runs on the CPU with --threads torch threads.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F

from kernels.model import XLSTM, get_config, soft_cap
from kernels.mqar import IGNORE, TRAIN_LEN, TRAIN_PAIRS, mqar_batch, query_hits
from kernels.weights import load_checkpoint, save_checkpoint

# (sequence length, pairs) stages; the last one is the training length and density.
CURRICULUM = ((16, 4), (64, 8), (128, 8), (TRAIN_LEN, TRAIN_PAIRS))
EVAL_SEED = 10_000_019  # held-out data: training seeds count up from --seed


@torch.no_grad()
def init_gates_for_recall(model: XLSTM) -> None:
    """Gate biases for a short training run: input gates open (bias 0 instead of the
    pretraining -10, which keeps the memory shut for hundreds of steps) and forget gates
    from short to long memory across the heads (bias 0 .. 6), so some heads can look one
    token back while others hold the key-value pairs."""
    for block in model.blocks:
        layer = getattr(block, "mlstm_layer", None)
        if layer is not None:
            layer.igate_preact.bias.zero_()
            n = layer.fgate_preact.bias.numel()
            layer.fgate_preact.bias.copy_(torch.linspace(0.0, 6.0, n))


def forward_for_training(model: XLSTM, inputs: torch.Tensor, labels: torch.Tensor):
    """(query logits, targets, stream after the first block): the model's forward, with the
    LM head applied at the query positions only."""
    x = model.embedding(inputs)
    first = None
    for index, block in enumerate(model.blocks):
        x, _ = block(x, None, model.cell_runner, index)
        if index == 0:
            first = x
    x = model.out_norm(x)
    mask = labels != IGNORE
    logits = soft_cap(model.lm_head(x[mask]).float(), model.config.logit_soft_cap)
    return logits, labels[mask], first


def previous_token_loss(probe: torch.nn.Linear, stream: torch.Tensor, inputs: torch.Tensor,
                        embedding: torch.Tensor, samples: int, gen: torch.Generator) -> torch.Tensor:
    """Auxiliary loss: the token one step back, read from the first block's output by a
    linear probe through the (tied) embedding. Recall needs each value stored under the key
    that came just before it; without a short convolution the model has to learn that
    look-back first, and this loss teaches it in a few hundred steps instead of thousands.
    The probe is dropped after training."""
    B, S, D = stream.shape
    b = torch.randint(0, B, (samples,), generator=gen)
    t = torch.randint(1, S, (samples,), generator=gen)
    z = probe(F.rms_norm(stream[b, t], (D,)))
    return F.cross_entropy(z @ embedding.T, inputs[b, t - 1])


@torch.no_grad()
def evaluate(model: XLSTM, seq_len: int, pairs: int, examples: int, seed: int, batch: int = 32) -> float:
    correct = total = 0
    inputs, labels = mqar_batch(examples, seq_len, pairs, seed=seed)
    for start in range(0, examples, batch):
        logits, _ = model(inputs[start : start + batch])
        c, t = query_hits(logits, labels[start : start + batch])
        correct, total = correct + c, total + t
    return correct / total


def train(args) -> float:
    torch.manual_seed(args.seed)
    config = get_config("mqar-tiny")
    model = XLSTM(config, device="cpu", dtype=torch.float32, seed=args.seed)
    init_gates_for_recall(model)
    # Tie the LM head to the embedding while training: a recalled value is then read out
    # by the same vector that wrote it, which shortens training a lot. The saved
    # checkpoint holds two copies, as the model has two matrices.
    model.lm_head.weight = model.embedding.weight
    model.requires_grad_(True)
    model.train()
    probe = torch.nn.Linear(config.embedding_dim, config.embedding_dim, bias=False)
    params = dict(model.named_parameters())  # the tied head appears once, as embedding.weight
    decay = [p for n, p in params.items() if p.ndim >= 2 and "embedding" not in n] + [probe.weight]
    rest = [p for n, p in params.items() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98),
    )
    gen = torch.Generator().manual_seed(args.seed)
    stage, step, started = 0, 0, time.monotonic()
    running = None
    while step < args.steps and time.monotonic() - started < args.time_limit_s:
        seq_len, pairs = CURRICULUM[stage]
        # Linear warm-up, then cosine decay to a tenth over the budget (steps or time,
        # whichever runs out first): the low-rate end sharpens recall.
        progress = min(1.0, max(step / args.steps, (time.monotonic() - started) / args.time_limit_s))
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = max(args.min_batch, args.batch_tokens // seq_len)
        inputs, labels = mqar_batch(batch, seq_len, pairs, seed=args.seed * 1_000_003 + step)
        logits, targets, stream = forward_for_training(model, inputs, labels)
        loss = F.cross_entropy(logits, targets)
        if args.aux_weight > 0:
            aux = previous_token_loss(probe, stream, inputs, model.embedding.weight, args.aux_samples, gen)
            loss = loss + args.aux_weight * aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        accuracy = (logits.argmax(-1) == targets).float().mean().item()
        running = accuracy if running is None else 0.9 * running + 0.1 * accuracy
        step += 1
        if step % args.log_every == 0:
            print(
                f"step {step} stage L={seq_len} P={pairs} loss {loss.item():.3f} acc~{running:.3f} "
                f"lr {lr:.2e} {time.monotonic() - started:.0f}s",
                file=sys.stderr, flush=True,
            )
        if stage + 1 == len(CURRICULUM) and running > args.stop_at and step >= args.warmup:
            print(f"step {step}: running accuracy {running:.3f} at the training length; done", file=sys.stderr)
            break
        if stage + 1 < len(CURRICULUM) and running > args.advance_at:
            stage, running = stage + 1, None
            print(f"step {step}: curriculum -> L={CURRICULUM[stage][0]} P={CURRICULUM[stage][1]}", file=sys.stderr)

    model.requires_grad_(False)
    model.eval()
    model.lm_head.weight = torch.nn.Parameter(model.embedding.weight.detach().clone(), requires_grad=False)
    save_checkpoint(model.to(torch.bfloat16), args.out)
    elapsed = time.monotonic() - started
    shipped = load_checkpoint(args.out, device="cpu", dtype=torch.float32)
    acc = evaluate(shipped, TRAIN_LEN, TRAIN_PAIRS, args.eval_examples, EVAL_SEED)
    print(
        f"trained {step} steps in {elapsed:.0f}s (final stage L={CURRICULUM[stage][0]}); "
        f"held-out accuracy at L={TRAIN_LEN}, {TRAIN_PAIRS} pairs ({args.eval_examples} sequences): {acc:.4f}",
        flush=True,
    )
    return acc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.mqar_train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="kernels/assets/mqar-tiny.safetensors")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--time-limit-s", type=float, default=600.0, help="stop training after this long")
    parser.add_argument("--batch-tokens", type=int, default=2048, help="tokens per batch (batch = this / length)")
    parser.add_argument("--min-batch", type=int, default=16)
    parser.add_argument("--aux-weight", type=float, default=1.0, help="weight of the previous-token loss")
    parser.add_argument("--aux-samples", type=int, default=512, help="positions per batch for that loss")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--advance-at", type=float, default=0.9, help="running accuracy that moves the curriculum on")
    parser.add_argument("--stop-at", type=float, default=0.99, help="running accuracy at the training length that ends training")
    parser.add_argument("--eval-examples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=25)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
