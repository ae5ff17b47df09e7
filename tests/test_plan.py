"""The plan: bands x chunks x kernel calls from NH, S and the knobs."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedulers import Counters, Knobs, PlanError, make_plan


@pytest.mark.parametrize(
    "num_heads, seq_len, knobs, bands, chunk_lengths, calls_per_chunk",
    [
        # S a multiple of chunk_size
        (8, 64, Knobs(2, 2, 16, 4), 4, [16, 16, 16, 16], [4, 4, 4, 4]),
        # last chunk shorter, and its last kernel call shorter too
        (8, 37, Knobs(3, 4, 16, 8), 2, [16, 16, 5], [2, 2, 1]),
        # chunk longer than the sequence: one chunk
        (4, 10, Knobs(1, 1, 64, 16), 4, [10], [1]),
        # T_inner == chunk_size: one call per chunk
        (4, 20, Knobs(4, 4, 8, 8), 1, [8, 8, 4], [1, 1, 1]),
        # decode: one chunk of one step per band, one kernel call per band
        (8, 1, Knobs(2, 2, 64, 16), 4, [1], [1]),
    ],
)
def test_plan_arithmetic(num_heads, seq_len, knobs, bands, chunk_lengths, calls_per_chunk):
    plan = make_plan(num_heads, seq_len, knobs)
    assert plan.bands == bands
    assert [c.length for c in plan.chunks] == chunk_lengths
    assert [c.kernel_calls for c in plan.chunks] == calls_per_chunk
    assert plan.chunks_per_band == len(chunk_lengths)
    assert plan.tasks == bands * len(chunk_lengths)
    assert plan.kernel_calls == bands * sum(calls_per_chunk)
    assert plan.useful_concurrency == min(knobs.workers, bands)
    assert plan.is_decode == (seq_len == 1)


def test_band_heads_partition_the_heads():
    plan = make_plan(12, 5, Knobs(2, 3, 4, 2))
    heads = [h for b in range(plan.bands) for h in range(12)[plan.band_heads(b)]]
    assert heads == list(range(12))
    with pytest.raises(IndexError):
        plan.band_heads(plan.bands)


def test_expected_counters_follow_the_plan():
    plan = make_plan(8, 37, Knobs(3, 4, 16, 8))
    assert plan.expected_counters() == Counters(kernel_calls=10, bands=2, chunks=3, tasks=6,
                                                peak_concurrency=2, ordering_violations=0)
    # three cell calls (three layers): counts add up, the peak does not
    three = plan.expected_counters(calls=3)
    assert (three.kernel_calls, three.bands, three.chunks, three.tasks) == (30, 6, 9, 18)
    assert three.peak_concurrency == 2
    assert plan.expected_counters(concurrency=1).peak_concurrency == 1


@pytest.mark.parametrize(
    "num_heads, seq_len, knobs, constraint",
    [
        (8, 16, Knobs(1, 3, 8, 4), "heads_per_band=3 must divide num_heads=8"),
        (8, 16, Knobs(1, 16, 8, 4), "heads_per_band=16 must divide num_heads=8"),
        (8, 16, Knobs(1, 2, 12, 8), "T_inner=8 must divide chunk_size=12"),
        (8, 16, Knobs(1, 2, 4, 8), "T_inner=8 must divide chunk_size=4"),
        (8, 16, Knobs(0, 2, 8, 4), "workers must be a positive integer"),
        (8, 16, Knobs(1, 0, 8, 4), "heads_per_band must be a positive integer"),
        (8, 16, Knobs(1, 2, 0, 4), "chunk_size must be a positive integer"),
        (8, 16, Knobs(1, 2, 8, -1), "T_inner must be a positive integer"),
        (8, 16, Knobs(1.5, 2, 8, 4), "workers must be a positive integer"),
        (8, 16, Knobs(True, 2, 8, 4), "workers must be a positive integer"),
        (8, 0, Knobs(1, 2, 8, 4), "seq_len must be a positive integer"),
        (0, 16, Knobs(1, 2, 8, 4), "num_heads must be a positive integer"),
    ],
)
def test_invalid_knobs_name_the_constraint(num_heads, seq_len, knobs, constraint):
    with pytest.raises(PlanError, match=constraint.replace("(", r"\(")):
        make_plan(num_heads, seq_len, knobs)


def test_plan_error_lists_valid_values_and_is_a_value_error():
    with pytest.raises(ValueError, match=r"valid heads_per_band: 1, 2, 3, 6"):
        make_plan(6, 8, Knobs(1, 4, 8, 4))
    with pytest.raises(PlanError, match=r"valid T_inner: 1, 2, 3, 6"):
        make_plan(6, 8, Knobs(1, 1, 6, 4))


def test_knobs_from_dict():
    assert Knobs.from_dict({"workers": 2, "heads_per_band": 1, "chunk_size": 8, "T_inner": 4,
                            "backend": "queued"}) == Knobs(2, 1, 8, 4)
    assert Knobs(2, 1, 8, 4).as_dict() == {"workers": 2, "heads_per_band": 1, "chunk_size": 8, "T_inner": 4}
    with pytest.raises(PlanError, match="missing knob.*T_inner"):
        Knobs.from_dict({"workers": 2, "heads_per_band": 1, "chunk_size": 8})


@st.composite
def plan_inputs(draw):
    num_heads = draw(st.integers(1, 16))
    heads_per_band = draw(st.sampled_from([d for d in range(1, num_heads + 1) if num_heads % d == 0]))
    chunk_size = draw(st.integers(1, 64))
    T_inner = draw(st.sampled_from([d for d in range(1, chunk_size + 1) if chunk_size % d == 0]))
    workers = draw(st.integers(1, 8))
    seq_len = draw(st.integers(1, 300))
    return num_heads, seq_len, Knobs(workers, heads_per_band, chunk_size, T_inner)


@settings(max_examples=200, deadline=None)
@given(plan_inputs())
def test_chunks_tile_the_sequence(args):
    num_heads, seq_len, knobs = args
    plan = make_plan(num_heads, seq_len, knobs)
    assert plan.bands * knobs.heads_per_band == num_heads
    assert plan.chunks_per_band == math.ceil(seq_len / knobs.chunk_size)
    position = 0
    for index, chunk in enumerate(plan.chunks):
        assert (chunk.index, chunk.start) == (index, position)
        assert 1 <= chunk.length <= knobs.chunk_size
        assert chunk.kernel_calls == math.ceil(chunk.length / knobs.T_inner)
        position = chunk.stop
    assert position == seq_len
    # only the last chunk may be short
    assert all(c.length == knobs.chunk_size for c in plan.chunks[:-1])
