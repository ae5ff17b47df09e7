"""MQAR data follows the Zoology definition."""

import pytest
import torch

from kernels.mqar import IGNORE, VOCAB_SIZE, mqar_batch, pairs_for_length, query_hits


@pytest.mark.parametrize("seq_len,pairs", [(64, 8), (256, 16), (256, 64), (1000, 3)])
def test_layout_pairs_then_queries(seq_len, pairs):
    inputs, labels = mqar_batch(8, seq_len, pairs, seed=3)
    assert inputs.shape == labels.shape == (8, seq_len)
    assert inputs.dtype == labels.dtype == torch.int64
    half = VOCAB_SIZE // 2
    for x, y in zip(inputs, labels):
        keys, values = x[0 : 2 * pairs : 2], x[1 : 2 * pairs : 2]
        assert ((keys >= 1) & (keys < half)).all()
        assert ((values >= half) & (values < VOCAB_SIZE)).all()
        assert len(set(keys.tolist())) == pairs and len(set(values.tolist())) == pairs
        query_pos = (y != IGNORE).nonzero().flatten()
        assert len(query_pos) == pairs
        # Queries sit in the query region at even offsets from its start.
        assert (query_pos >= 2 * pairs).all() and ((query_pos - 2 * pairs) % 2 == 0).all()
        value_of = dict(zip(keys.tolist(), values.tolist()))
        # Each key is queried once, and the label is its value.
        assert sorted(x[query_pos].tolist()) == sorted(keys.tolist())
        for pos in query_pos.tolist():
            assert y[pos].item() == value_of[x[pos].item()]
        assert ((x >= 0) & (x < VOCAB_SIZE)).all()


def test_power_law_gaps_favour_early_queries():
    seq_len, pairs = 1024, 16
    _, labels = mqar_batch(64, seq_len, pairs, seed=0)
    gaps = ((labels != IGNORE).nonzero()[:, 1] - 2 * pairs) // 2
    slots = (seq_len - 2 * pairs) // 2
    first_quarter = (gaps < slots // 4).float().mean().item()
    # Uniform gaps would put 25% in the first quarter; p(g) ~ g^-0.99 puts far more.
    assert first_quarter > 0.5
    assert gaps.max().item() > slots // 4  # but the tail is reached


def test_seeded_and_reproducible():
    a = mqar_batch(4, 128, 8, seed=7)
    b = mqar_batch(4, 128, 8, seed=7)
    c = mqar_batch(4, 128, 8, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_invalid_pairs_rejected():
    with pytest.raises(ValueError, match="num_pairs"):
        mqar_batch(1, 64, 17)
    with pytest.raises(ValueError, match="num_pairs"):
        mqar_batch(1, 64, 0)


def test_pairs_scale_with_length():
    assert pairs_for_length(256) == 16
    assert pairs_for_length(2048) == 128
    assert pairs_for_length(64) == 4
    assert pairs_for_length(8) == 1
    assert pairs_for_length(10 ** 6) == VOCAB_SIZE // 2 - 1  # capped by the number of keys


def test_query_hits_counts_argmax_at_query_positions():
    labels = torch.full((1, 4), IGNORE)
    labels[0, 1], labels[0, 3] = 5, 6
    logits = torch.zeros(1, 4, 8)
    logits[0, 1, 5] = 1.0  # right
    logits[0, 3, 2] = 1.0  # wrong
    logits[0, 0, 7] = 9.0  # not a query position: ignored
    assert query_hits(logits, labels) == (1, 2)


def test_training_script_writes_a_loadable_checkpoint(tmp_path, capsys):
    from kernels.model import get_config
    from kernels.mqar_train import main
    from kernels.weights import load_checkpoint

    out = tmp_path / "mqar.safetensors"
    threads = torch.get_num_threads()
    try:
        assert main(["--out", str(out), "--steps", "3", "--eval-examples", "4", "--log-every", "1"]) == 0
    finally:
        torch.set_num_threads(threads)  # the script sets its own thread count
    model = load_checkpoint(out)
    assert model.config == get_config("mqar-tiny")
    # Untied on save: two matrices with equal values.
    assert torch.equal(model.lm_head.weight, model.embedding.weight)
    assert model.lm_head.weight.data_ptr() != model.embedding.weight.data_ptr()
    captured = capsys.readouterr()
    assert "trained 3 steps" in captured.out and "held-out accuracy at L=256" in captured.out
    assert "step 3 stage L=16 P=4" in captured.err
