"""The search space: exactly the valid configs, with reasons for the invalid ones."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.space import DiscreteSpace, SearchSpace, SpaceError

VALUES = {"workers": [1, 2, 4], "heads_per_band": [1, 2, 4], "chunk_size": [16, 32, 64], "T_inner": [4, 8, 16, 32]}


def brute_force_valid(values, num_heads, context):
    out = []
    for combo in itertools.product(*(sorted(values[k]) for k in ("workers", "heads_per_band", "chunk_size", "T_inner"))):
        w, h, c, t = combo
        if num_heads % h == 0 and c % t == 0 and c <= context and w <= num_heads // h:
            out.append({"workers": w, "heads_per_band": h, "chunk_size": c, "T_inner": t})
    return out


def test_enumerates_exactly_the_valid_configs_in_a_fixed_order():
    space = SearchSpace(VALUES, num_heads=4, context=32)
    assert space.configs == brute_force_valid(VALUES, 4, 32)
    assert space.knob_names == ("workers", "heads_per_band", "chunk_size", "T_inner")
    assert SearchSpace(dict(reversed(list(VALUES.items()))), num_heads=4, context=32).configs == space.configs


def test_why_invalid_names_each_constraint():
    space = SearchSpace(VALUES, num_heads=4, context=32)
    base = {"workers": 1, "heads_per_band": 2, "chunk_size": 16, "T_inner": 4}
    assert space.why_invalid(base) is None
    assert "divide num_heads" in SearchSpace({**VALUES, "heads_per_band": [3, 4]}, 4, 32).why_invalid({**base, "heads_per_band": 3})
    assert "T_inner=32 does not divide chunk_size=16" in space.why_invalid({**base, "T_inner": 32})
    assert "exceeds the context length 32" in space.why_invalid({**base, "chunk_size": 64})
    assert "exceeds the number of bands 2" in space.why_invalid({**base, "workers": 4})
    assert "not in its value list" in space.why_invalid({**base, "workers": 3})
    assert "missing knob" in space.why_invalid({"workers": 1})


def test_neighbours_are_valid_and_one_step_away():
    space = SearchSpace(VALUES, num_heads=4, context=64)
    for cfg in space.configs:
        for nb in space.neighbours(cfg):
            assert space.why_invalid(nb) is None
            moved = [k for k in space.knob_names if nb[k] != cfg[k]]
            assert len(moved) == 1
            k = moved[0]
            assert abs(space.values[k].index(nb[k]) - space.values[k].index(cfg[k])) == 1


def test_backend_is_a_categorical_knob():
    space = SearchSpace({**VALUES, "backend": ["queued", "ray"]}, num_heads=4, context=32)
    assert space.knob_names[0] == "backend"
    assert len(space) == 2 * len(brute_force_valid(VALUES, 4, 32))
    cfg = space.configs[0]
    assert {**cfg, "backend": "ray"} in space.neighbours(cfg)


def test_user_errors_name_the_fix():
    with pytest.raises(SpaceError, match="unknown knob"):
        SearchSpace({**VALUES, "threads": [1]}, 4, 32)
    with pytest.raises(SpaceError, match="missing value list"):
        SearchSpace({"workers": [1]}, 4, 32)
    with pytest.raises(SpaceError, match="no valid config"):
        SearchSpace(VALUES, num_heads=4, context=8)
    with pytest.raises(SpaceError, match="positive integers"):
        SearchSpace({**VALUES, "workers": [0, 1]}, 4, 32)
    with pytest.raises(SpaceError, match="backend value"):
        SearchSpace({**VALUES, "backend": ["cuda"]}, 4, 32)


def test_discrete_space_from_explicit_configs():
    space = DiscreteSpace({"a": [1, 2, 3], "b": ["x", "y"]}, [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}, {"a": 3, "b": "y"}])
    assert space.index({"a": 2, "b": "x"}) == 1
    assert space.index({"a": 2, "b": "y"}) is None
    assert space.why_invalid({"a": 2, "b": "y"}) == "not among the valid configs of this space"
    assert space.neighbours({"a": 1, "b": "x"}) == [{"a": 2, "b": "x"}]
    assert space.coords.tolist() == [[0, 0], [1, 0], [2, 1]]


@settings(max_examples=40, deadline=None)
@given(
    workers=st.sets(st.sampled_from([1, 2, 3, 4, 8]), min_size=1),
    hpb=st.sets(st.sampled_from([1, 2, 3, 4, 8]), min_size=1),
    chunk=st.sets(st.sampled_from([8, 16, 24, 32, 64, 128]), min_size=1),
    t_inner=st.sets(st.sampled_from([1, 2, 4, 8, 16, 32]), min_size=1),
    num_heads=st.sampled_from([1, 2, 4, 6, 8]),
    context=st.sampled_from([1, 16, 32, 100, 256]),
)
def test_configs_are_exactly_the_product_members_without_a_violation(workers, hpb, chunk, t_inner, num_heads, context):
    values = {"workers": sorted(workers), "heads_per_band": sorted(hpb), "chunk_size": sorted(chunk), "T_inner": sorted(t_inner)}
    expected = brute_force_valid(values, num_heads, context)
    if not expected:
        with pytest.raises(SpaceError):
            SearchSpace(values, num_heads, context)
        return
    space = SearchSpace(values, num_heads, context)
    assert space.configs == expected
    valid_keys = {space.key(c) for c in expected}
    for combo in itertools.product(*values.values()):
        cfg = dict(zip(values, combo))
        assert (space.why_invalid(cfg) is None) == (space.key(cfg) in valid_keys)


def test_values_no_config_can_use_are_found_with_the_rule_and_the_valid_values():
    from autotune.space import impossible_values

    values = {"workers": [1, 2, 4], "heads_per_band": [3, 4], "chunk_size": [16, 32, 1024], "T_inner": [5, 8, 16]}
    found = impossible_values(values, num_heads=4, contexts=(128, 512))
    assert set(found) == {"heads_per_band", "chunk_size", "T_inner"}
    assert found["heads_per_band"][0] == [3] and "valid values: 1, 2, 4" in found["heads_per_band"][1]
    assert found["chunk_size"][0] == [1024] and "at most the longest context (512)" in found["chunk_size"][1]
    # The baseline's chunk (64 at these contexts) joins the list, so T_inner 64 would fit; 5 fits nothing.
    assert found["T_inner"][0] == [5] and "valid values: 1, 2, 4, 8, 16, 32, 64" in found["T_inner"][1]
    # workers above the bands of every listed heads_per_band is a choice of lists, left alone.
    assert impossible_values({"workers": [8], "heads_per_band": [4], "chunk_size": [16], "T_inner": [16]},
                             num_heads=4, contexts=(128,)) == {}
