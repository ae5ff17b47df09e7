"""The xLSTM model: named shapes, the cell-runner hook, prefill-then-decode parity."""

from __future__ import annotations

import pytest
import torch

from kernels import SHAPES, XLSTM, DirectCellRunner, ModelConfig, get_config, mlstm_block

# Logits are soft-capped at 30; block and step forms differ by fp32 rounding only.
LOGIT_ATOL, LOGIT_RTOL = 2e-5, 1e-5


@pytest.fixture(scope="module")
def tiny():
    return XLSTM(get_config("tiny"), device="cpu", dtype=torch.float32, seed=0)


def tokens(seed, B, S, vocab=256):
    return torch.randint(0, vocab, (B, S), generator=torch.Generator().manual_seed(seed))


def test_named_shapes():
    assert {"tiny", "mqar-tiny", "125m", "350m", "1.3b", "7b"} <= set(SHAPES)
    c = get_config("7b")
    assert (c.embedding_dim, c.num_heads, c.num_blocks, c.vocab_size) == (4096, 8, 32, 50304)
    assert (c.qk_head_dim, c.v_head_dim) == (256, 512)  # qk factor 0.5, v factor 1.0
    assert c.ffn_dim == 10944  # 4096 * 2.667 rounded up to a multiple of 64
    assert c.slstm_at == ()
    tiny = get_config("tiny")
    assert (tiny.vocab_size, tiny.embedding_dim, tiny.num_heads, tiny.num_blocks, tiny.slstm_at) == (256, 64, 4, 3, (1,))
    for name in ("125m", "350m", "1.3b"):
        assert get_config(name).vocab_size == 50304
        assert get_config(name).ffn_dim % 64 == 0


def test_unknown_shape_lists_valid_names():
    with pytest.raises(ValueError, match="valid shapes: .*tiny.*7b"):
        get_config("13b")


def test_invalid_config_is_a_clear_error():
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        ModelConfig("bad", vocab_size=10, embedding_dim=64, num_heads=3, num_blocks=1)
    with pytest.raises(ValueError, match="sLSTM position 4"):
        ModelConfig("bad", vocab_size=10, embedding_dim=64, num_heads=4, num_blocks=2, slstm_at=(4,))


def test_forward_shapes_dtypes_and_state(tiny):
    logits, state = tiny(tokens(0, 2, 11))
    assert logits.shape == (2, 11, 256) and logits.dtype == torch.float32
    assert logits.abs().max() <= 30.0  # logit soft cap
    assert logits.std() > 1e-3  # a random model, but not a constant one
    assert len(state) == 3
    C, n, m = state[0]
    assert C.shape == (2, 4, 8, 16) and n.shape == (2, 4, 8) and m.shape == (2, 4, 1)
    assert C.dtype == torch.float32
    y, c, n_s, m_s = state[1]  # the sLSTM block
    assert y.shape == (2, 4, 16) and c.dtype == torch.float32


def test_bf16_weights_keep_fp32_state_and_logits():
    model = XLSTM(get_config("tiny"), dtype=torch.bfloat16, seed=0)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    logits, state = model(tokens(1, 1, 5))
    assert logits.dtype == torch.float32
    assert state[0][0].dtype == torch.float32 and state[1][1].dtype == torch.float32


def test_same_seed_same_weights_and_gate_biases():
    a = XLSTM(get_config("tiny"), seed=3)
    b = XLSTM(get_config("tiny"), seed=3)
    c = XLSTM(get_config("tiny"), seed=4)
    pa, pb, pc = dict(a.named_parameters()), dict(b.named_parameters()), dict(c.named_parameters())
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not torch.equal(pa["blocks.0.mlstm_layer.q.weight"], pc["blocks.0.mlstm_layer.q.weight"])
    assert torch.all(pa["blocks.0.mlstm_layer.igate_preact.bias"] == -10.0)
    fbias = pa["blocks.0.mlstm_layer.fgate_preact.bias"]
    assert fbias[0] == 3.0 and fbias[-1] == 6.0
    assert all(torch.isfinite(p).all() for p in pa.values())  # nothing left uninitialised


@pytest.mark.parametrize("prompt_len, chunk_size", [(23, 64), (37, 16)])
def test_prefill_then_decode_equals_one_forward(tiny, prompt_len, chunk_size):
    """Tiny has an sLSTM block at position 1; chunk_size 16 splits the prompt into
    3 blocks, the last one partial."""
    tiny.cell_runner = DirectCellRunner(chunk_size=chunk_size)
    try:
        seq = tokens(2, 2, prompt_len + 9)
        whole, whole_state = tiny(seq)
        logits, state = tiny(seq[:, :prompt_len])
        pieces = [logits]
        for t in range(prompt_len, seq.shape[1]):
            step_logits, state = tiny(seq[:, t : t + 1], state)
            pieces.append(step_logits)
        stepped = torch.cat(pieces, dim=1)
    finally:
        tiny.cell_runner = DirectCellRunner()
    assert torch.allclose(stepped, whole, rtol=LOGIT_RTOL, atol=LOGIT_ATOL), (stepped - whole).abs().max()
    for a, b in zip(state[0], whole_state[0]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_state_carries_the_past(tiny):
    """Changing only the first token changes later logits: the decode path is not stateless."""
    seq = tokens(3, 1, 12)
    other = seq.clone()
    other[0, 0] = (seq[0, 0] + 1) % 256
    assert (tiny(seq)[0][0, -1] - tiny(other)[0][0, -1]).abs().max() > 1e-6


class HandleRunner:
    """Keeps states to itself and hands the model opaque handles, as the Ray backend does."""

    class Handle:
        pass

    def __init__(self):
        self.states = {}
        self.calls = []

    def __call__(self, layer_index, q, k, v, i, f, state):
        self.calls.append((layer_index, tuple(q.shape), tuple(v.shape), i.dtype, f.dtype, q.dtype))
        real = None if state is None else self.states.pop(id(state))[1]
        h, real = mlstm_block(q, k, v, i, f, real)
        handle = self.Handle()
        self.states[id(handle)] = (handle, real)
        return h, handle


def test_cell_runner_hook_gets_whole_sequences_and_opaque_state():
    model = XLSTM(get_config("tiny"), seed=0)
    seq = tokens(4, 2, 10)
    reference_logits, _ = model(seq)

    runner = HandleRunner()
    model.cell_runner = runner
    logits, state = model(seq[:, :7])
    cfg = model.config
    qk = (2, cfg.num_heads, 7, cfg.qk_head_dim)
    v = (2, cfg.num_heads, 7, cfg.v_head_dim)
    # one call per mLSTM block (0 and 2; block 1 is sLSTM), whole prompt at once
    assert runner.calls == [(b, qk, v, torch.float32, torch.float32, torch.float32) for b in (0, 2)]
    assert isinstance(state[0], HandleRunner.Handle) and isinstance(state[2], HandleRunner.Handle)

    runner.calls.clear()
    for t in range(7, 10):
        step_logits, state = model(seq[:, t : t + 1], state)
    assert [c[0] for c in runner.calls] == [0, 2] * 3
    assert all(c[1][2] == 1 for c in runner.calls)  # S = 1 per decoded token
    assert torch.allclose(step_logits[:, 0], reference_logits[:, -1], rtol=LOGIT_RTOL, atol=LOGIT_ATOL)


def test_meta_built_model_lives_on_the_target_device(tiny):
    assert tiny.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in tiny.parameters())
    assert not any(p.is_meta for p in tiny.parameters())


def test_state_bytes_per_sequence_matches_real_state(tiny):
    _, state = tiny(tokens(5, 1, 3))
    real = sum(t.numel() * t.element_size() for s in state for t in s)
    assert tiny.config.state_bytes_per_sequence() == real
