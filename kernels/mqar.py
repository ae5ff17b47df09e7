"""Multi-query associative recall (MQAR), as defined in Zoology (Arora et al., 2023).

A sequence of length L over a vocabulary of V = 8192 tokens:
- first P key-value pairs `k1 v1 k2 v2 ...`, keys drawn without replacement from the
  lower half of the vocabulary (1 .. V/2 - 1) and values from the upper half (V/2 .. V-1);
- then the query region: every key appears once more, at position 2P + 2g, with the gap
  g drawn without replacement from a power law p(g) ~ g^(a - 1) (a = 0.01), so most
  queries come soon after the pairs and a few come late;
- every other position holds a uniformly random token.
At a query position the model must predict the key's value as the next token. Labels
are the value at query positions and IGNORE (-100) elsewhere; accuracy is the fraction
of query positions whose argmax over the whole vocabulary is the right value.

Data is drawn on the CPU from a seeded torch.Generator, so a seed gives the same
sequences on every machine.
"""

from __future__ import annotations

import torch

VOCAB_SIZE = 8192
IGNORE = -100
POWER_A = 0.01

# The length and pair count the shipped mqar-tiny checkpoint was trained at; longer
# contexts scale the pair count with L (pairs_for_length).
TRAIN_LEN = 256
TRAIN_PAIRS = 16


def max_pairs(seq_len: int, vocab_size: int = VOCAB_SIZE) -> int:
    """Most pairs a sequence can hold: 4P <= L (pairs plus room for spaced queries), P < V/2 keys."""
    return min(seq_len // 4, vocab_size // 2 - 1)


def pairs_for_length(seq_len: int, *, base_len: int = TRAIN_LEN, base_pairs: int = TRAIN_PAIRS,
                     vocab_size: int = VOCAB_SIZE) -> int:
    """Key-value pairs for a context of seq_len tokens: the training density, scaled with L."""
    if seq_len < 4:
        raise ValueError(f"MQAR needs a sequence of at least 4 tokens, got {seq_len}")
    scaled = round(base_pairs * seq_len / base_len)
    return max(1, min(scaled, max_pairs(seq_len, vocab_size)))


def mqar_batch(
    num_examples: int,
    seq_len: int,
    num_pairs: int,
    *,
    seed: int | torch.Generator = 0,
    vocab_size: int = VOCAB_SIZE,
    power_a: float = POWER_A,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels), both (num_examples, seq_len) int64 on the CPU."""
    if vocab_size % 2 or vocab_size < 4:
        raise ValueError(f"vocab_size must be even and >= 4, got {vocab_size}")
    if not 1 <= num_pairs <= max_pairs(seq_len, vocab_size):
        raise ValueError(
            f"num_pairs must be in 1..{max_pairs(seq_len, vocab_size)} for seq_len {seq_len} "
            f"and vocab {vocab_size}, got {num_pairs}"
        )
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    n, half, p = num_examples, vocab_size // 2, num_pairs

    # Distinct keys and distinct values per example.
    keys = torch.rand(n, half - 1, generator=gen).argsort(dim=1)[:, :p] + 1
    values = torch.rand(n, half, generator=gen).argsort(dim=1)[:, :p] + half

    inputs = torch.randint(0, vocab_size, (n, seq_len), generator=gen)
    inputs[:, 0 : 2 * p : 2] = keys
    inputs[:, 1 : 2 * p : 2] = values

    # Query slots are the even offsets of the query region; power-law gaps, no repeats.
    slots = (seq_len - 2 * p) // 2
    weights = torch.arange(1, slots + 1, dtype=torch.float64) ** (power_a - 1.0)
    gaps = torch.multinomial(weights.expand(n, slots), p, replacement=False, generator=gen)
    positions = 2 * p + 2 * gaps
    inputs.scatter_(1, positions, keys)

    labels = torch.full((n, seq_len), IGNORE, dtype=torch.int64)
    labels.scatter_(1, positions, values)
    return inputs, labels


def query_hits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, total) over query positions: argmax of logits (…, S, V) against labels (…, S)."""
    mask = labels != IGNORE
    predicted = logits.argmax(dim=-1)
    correct = (predicted[mask] == labels.to(predicted.device)[mask]).sum()
    return int(correct), int(mask.sum())
