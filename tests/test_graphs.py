"""The CUDA-graph decode layer on the CPU: it reports itself unavailable, the normal path
runs instead, and the static-buffer step that graphs capture (band plan, in-place state,
greedy feedback, counters) is the model's decode step."""

from __future__ import annotations

import pytest
import torch

from kernels import XLSTM, get_config
from schedulers import Knobs, PlanError, make_scheduler
from schedulers.graphs import (
    EagerDecoder,
    GraphDecoder,
    GraphsUnavailable,
    StaticDecoder,
    band_stream_plan,
    graphs_unavailable,
    make_decoder,
)


def tiny():
    return XLSTM(get_config("tiny"), seed=0)  # 3 blocks, an sLSTM block at position 1


def prompt(batch=2, length=7):
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(5))


def greedy(model, token, state, n):
    out = []
    for _ in range(n):
        logits, state = model(token, state)
        token = logits[:, -1:].argmax(-1)
        out.append(token)
    return torch.cat(out, dim=1), state


# ----------------------------------------------------------------------------- band plan


def test_bands_are_dealt_round_robin_over_the_streams():
    plan = band_stream_plan(8, Knobs(workers=3, heads_per_band=2, chunk_size=4, T_inner=4))
    assert plan.bands == (slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8))
    assert plan.by_stream == ((0, 3), (1,), (2,))
    assert plan.streams == 3 and plan.forks


@pytest.mark.parametrize("workers, heads_per_band, streams", [(1, 8, 1), (8, 1, 8), (4, 8, 1), (2, 4, 2)])
def test_streams_are_the_useful_concurrency(workers, heads_per_band, streams):
    plan = band_stream_plan(8, Knobs(workers, heads_per_band, 4, 4))
    assert plan.streams == streams and plan.forks == (streams > 1)
    assert sorted(b for bands in plan.by_stream for b in bands) == list(range(8 // heads_per_band))
    expected = plan.expected_counters(cell_calls=5)
    assert expected.kernel_calls == expected.tasks == 5 * (8 // heads_per_band)
    assert expected.chunks == 5 and expected.peak_concurrency == streams


def test_band_plan_rejects_bands_that_do_not_divide_the_heads():
    with pytest.raises(PlanError, match="heads_per_band"):
        band_stream_plan(8, Knobs(workers=2, heads_per_band=3, chunk_size=4, T_inner=4))


# ----------------------------------------------------------------------------- fallback


def test_graphs_report_unavailable_on_cpu():
    reason = graphs_unavailable("cpu")
    assert reason is not None and "CUDA" in reason
    with pytest.raises(GraphsUnavailable, match="CUDA"):
        GraphDecoder(tiny(), Knobs(1, 4, 4, 4))


def test_make_decoder_falls_back_to_the_scheduler_path_on_cpu():
    model = tiny()
    knobs = Knobs(workers=2, heads_per_band=2, chunk_size=4, T_inner=2)
    with make_scheduler("sequential", knobs) as sched:
        model.cell_runner = sched
        logits, state = model(prompt())
        first = logits[:, -1:].argmax(-1)
        ref_tokens, _ = greedy(model, first, state, 4)
        decoder = make_decoder(model, sched)
        assert isinstance(decoder, EagerDecoder) and decoder.kind == "eager"
        assert "CUDA" in decoder.reason
        decoder.load_state(state)
        sched.reset_counters()
        out = decoder.generate(first, 4)
        assert torch.equal(out, ref_tokens)
        # the normal path still runs the cells through the scheduler, knobs and all
        assert decoder.counters == sched.expected_counters(4, 1, calls=4 * len(model.config.mlstm_blocks))


# ----------------------------------------------------------------------------- the static step


@pytest.mark.parametrize("workers, heads_per_band", [(1, 4), (2, 2), (4, 1)])
def test_static_step_is_the_models_decode_step(workers, heads_per_band):
    model = tiny()
    knobs = Knobs(workers=workers, heads_per_band=heads_per_band, chunk_size=4, T_inner=2)
    with make_scheduler("queued", knobs) as sched:
        model.cell_runner = sched
        logits, state = model(prompt())
        first = logits[:, -1:].argmax(-1)
        ref_logits, _ = model(first, state)
        ref_tokens, ref_state = greedy(model, first, state, 5)

        decoder = StaticDecoder(model, knobs, batch=2)
        decoder.load_state(state, sched.materialize)
        step_logits = decoder.step(first)
        assert (step_logits - ref_logits).abs().max().item() < 1e-5

        decoder.load_state(state, sched.materialize)
        decoder.reset_counters()
        out = decoder.generate(first, 5)
        assert torch.equal(out, ref_tokens)
        assert decoder.counters == decoder.expected_counters(5)
        assert decoder.counters.kernel_calls == 5 * len(model.config.mlstm_blocks) * (4 // heads_per_band)
        # the static buffers hold the model's state after the same tokens
        for b, (got, want) in enumerate(zip(decoder.state(), ref_state)):
            want = sched.materialize(want) if b in model.config.mlstm_blocks else want
            for g, w in zip(got, want):
                assert (g - w.reshape(g.shape)).abs().max().item() < 1e-4


def test_state_buffers_are_updated_in_place():
    model = tiny()
    knobs = Knobs(1, 4, 4, 4)
    decoder = StaticDecoder(model, knobs, batch=1)
    C, n, m = decoder.state()[0]
    pointers = (C.data_ptr(), n.data_ptr(), m.data_ptr())
    decoder.load_state(None)
    assert C.abs().sum().item() == 0
    decoder.generate(torch.tensor([[3]]), 3)
    C2, n2, m2 = decoder.state()[0]
    assert (C2.data_ptr(), n2.data_ptr(), m2.data_ptr()) == pointers
    assert C2.abs().sum().item() > 0  # the same buffers now hold the advanced state


def test_load_state_rejects_a_state_of_another_model():
    decoder = StaticDecoder(tiny(), Knobs(1, 4, 4, 4))
    with pytest.raises(ValueError, match="3 blocks"):
        decoder.load_state([None, None])
