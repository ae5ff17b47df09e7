"""Kernel knobs in a study: declared by the registry, read from [space.kernel], checked
before search, enumerated jointly with the scheduling knobs, carried to the benchmark."""

import textwrap

import pytest

from autotune.names import KERNEL_KNOBS
from autotune.space import SearchSpace
from autotune.spec import SpecError, parse_spec
from autotune.trials import bench_request
from kernels.registry import DEFAULT_SUB_CHUNK, kernel_params

import tomllib


def spec_of(kernel: str, contexts=(2048,), shape="7b", space="T_inner = [64, 512]\nchunk_size = [512]"):
    text = textwrap.dedent(f"""
        [model]
        shape = "{shape}"
        [workload]
        contexts = {list(contexts)}
        [space]
        workers = [1]
        heads_per_band = [4]
        """) + space + "\n[space.kernel]\n" + kernel
    return parse_spec(tomllib.loads(text), "k.toml")


def test_the_kernel_knob_names_are_the_registry_parameters():
    assert KERNEL_KNOBS == tuple(kernel_params())


def test_a_spec_lists_kernel_knobs_and_they_join_the_study_identity():
    spec = spec_of("sub_chunk = [64, 128, 256]\noutput_warps = [4, 8]")
    assert spec.kernel_space == {"sub_chunk": (64, 128, 256), "output_warps": (4, 8)}
    assert spec.identity()["kernel_space"] == {"sub_chunk": [64, 128, 256], "output_warps": [4, 8]}
    plain = parse_spec(tomllib.loads('[model]\nshape = "tiny"\n[workload]\ncontexts = [64]'), "p.toml")
    assert plain.kernel_space == {} and "kernel_space" not in plain.identity()  # older studies still open


@pytest.mark.parametrize("kernel,message", [
    ("sub_chunk = [96]", "k.toml: [space.kernel] sub_chunk: 96 can never run for shape '7b' at contexts 2048: "
                         "kernel parameter sub_chunk must be one of [32, 64, 128, 256], got 96; "
                         "valid values: 32, 64, 128, 256"),
    ("step_tile = [2048, 8192]", "k.toml: [space.kernel] step_tile: 2048 can never run for shape '7b' at contexts "
                                 "2048: step_tile 2048 is under 16 columns of a 256-row head"),
    ("sub_chunks = [64]", "k.toml: unknown key [space.kernel] sub_chunks; valid keys in [space.kernel]: "
                          "sub_chunk, output_warps, rows_max_k, step_tile"),
])
def test_impossible_kernel_values_are_refused_before_search(kernel, message):
    with pytest.raises(SpecError) as info:
        spec_of(kernel)
    assert str(info.value).startswith(message)


def test_sub_chunk_knobs_no_window_can_reach_are_refused():
    with pytest.raises(SpecError, match=r"\[space.kernel\] sub_chunk: 256 can never run .* longest window is "
                                        r"256 steps; list a T_inner of at least 512"):
        spec_of("sub_chunk = [64, 256]", space="T_inner = [64, 256]\nchunk_size = [256]")
    with pytest.raises(SpecError, match=r"\[space.kernel\] output_warps: 4 can never run"):
        spec_of("output_warps = [4, 8]", space="T_inner = [64]\nchunk_size = [64]")


def test_the_space_enumerates_joint_configs_and_skips_knobs_that_cannot_move_the_work():
    values = {"workers": [1], "heads_per_band": [4], "chunk_size": [512], "T_inner": [64, 512],
              "sub_chunk": [64, 128, 256], "output_warps": [4, 8]}
    space = SearchSpace(values, num_heads=4, context=2048, dhqk=256)
    long_windows = {(c["sub_chunk"], c["output_warps"]) for c in space.configs if c["T_inner"] == 512}
    short_windows = [c for c in space.configs if c["T_inner"] == 64]
    assert long_windows == {(s, w) for s in (64, 128, 256) for w in (4, 8)}
    # 64-step windows take the block kernel: one config, at the sub-chunk knobs' defaults
    assert short_windows == [{"workers": 1, "heads_per_band": 4, "chunk_size": 512, "T_inner": 64,
                              "sub_chunk": DEFAULT_SUB_CHUNK, "output_warps": 8}]
    assert "block kernel" in space.why_invalid({**short_windows[0], "sub_chunk": 64})
    assert len(space) == 7
    assert "output_warps" in space.distributions()  # trials suggest them like any knob


def test_the_kernel_knobs_of_a_trial_travel_in_its_benchmark_request():
    spec = spec_of("sub_chunk = [64, 128]\nrows_max_k = [4096, 8192]")
    params = {"workers": 1, "heads_per_band": 4, "chunk_size": 512, "T_inner": 512, "sub_chunk": 64,
              "rows_max_k": 8192}
    request = bench_request(spec, device="cpu", context=2048, params=params, repeats=1, timeout_s=60)
    assert request.kernel == {"sub_chunk": 64, "rows_max_k": 8192}
    assert type(request).from_json(request.to_json()) == request


def test_batches_are_a_workload_list_and_stay_out_of_the_study_identity():
    base = '[model]\nshape = "tiny"\n[workload]\ncontexts = [64]\n'
    spec = parse_spec(tomllib.loads(base + "batches = [1, 16]"), "b.toml")
    assert spec.workload.batches == (1, 16) and spec.workload.batch == 1
    assert spec.workload.at_batch(16).batch == 16
    one = parse_spec(tomllib.loads(base), "b.toml")
    assert one.workload.batches == (1,) and spec.identity() == one.identity()  # batch-1 studies still open
    with pytest.raises(SpecError, match=r"\[workload\] batch: give either batch \(one\) or batches"):
        parse_spec(tomllib.loads(base + "batch = 2\nbatches = [1, 16]"), "b.toml")


@pytest.mark.parametrize("name,shape", [("cuda.toml", "350m"), ("cuda-7b.toml", "7b")])
def test_the_cuda_specs_search_kernel_knobs_at_two_lengths_and_two_batches(name, shape):
    """Parsed and enumerated on the CPU as a tuner does it: the spec's lists plus the
    baseline (the built-in knobs, the kernels' defaults) for every (context, batch)."""
    from pathlib import Path

    from autotune.defaults import builtin_default
    from autotune.spec import load_spec
    from kernels.model import get_config

    spec = load_spec(Path(__file__).resolve().parents[1] / "studies" / name)
    assert spec.model.shape == shape and spec.workload.contexts == (2048, 8192) and spec.workload.batches == (1, 16)
    assert set(spec.kernel_space) == set(KERNEL_KNOBS)
    config = get_config(shape)
    defaults = {k: p.default for k, p in kernel_params().items()}
    for context in spec.workload.contexts:
        baseline = {**builtin_default(config.num_heads, context), **defaults}
        values = {k: sorted(set(v) | {baseline[k]}) for k, v in {**spec.space, **spec.kernel_space}.items()}
        space = SearchSpace(values, config.num_heads, context, dhqk=config.qk_dim // config.num_heads)
        assert baseline in space
        window = max(c["T_inner"] for c in space.configs)
        longest = [c for c in space.configs if c["T_inner"] == window]
        for knob in KERNEL_KNOBS:  # every listed value of every kernel knob is searched
            assert {c[knob] for c in longest} == set(values[knob]), knob
        assert len(space) >= 96


def test_kernel_knobs_with_the_ray_backend_are_refused_rather_than_ignored(monkeypatch):
    import schedulers.factory

    from autotune.bench.config import BenchRequest
    from autotune.bench.errors import InvalidConfig

    monkeypatch.setattr(schedulers.factory, "ray_missing", lambda: None)  # as where Ray is installed

    text = '[model]\nshape = "tiny"\nbackends = ["queued", "ray"]\n[workload]\ncontexts = [64]\n'
    with pytest.raises(SpecError, match=r"\[space.kernel\] rows_max_k: kernel knobs do not reach the Ray actors"):
        parse_spec(tomllib.loads(text + "[space.kernel]\nrows_max_k = [4096]"), "r.toml")
    with pytest.raises(InvalidConfig, match="kernel: kernel parameters do not reach the Ray actors"):
        BenchRequest.from_dict({"shape": "tiny", "backend": "ray", "kernel": {"rows_max_k": 4096}})
