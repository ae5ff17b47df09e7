"""BenchRequest: defaults, and every bad input named by its field."""

import pytest

from autotune.bench import BenchRequest, InvalidConfig


def test_defaults_resolve_for_the_shape():
    cfg = BenchRequest.from_dict({"shape": "tiny"})
    assert cfg.heads_per_band == 4  # all heads of the tiny shape in one band
    assert cfg.T_inner == cfg.chunk_size == 64
    assert (cfg.dtype, cfg.device, cfg.backend, cfg.workers) == ("float32", "auto", "queued", 1)
    assert BenchRequest.from_dict(cfg.to_dict()) == cfg
    assert set(cfg.to_dict()) == set(BenchRequest.field_names())


def test_given_values_are_kept_and_null_means_default():
    cfg = BenchRequest.from_dict({
        "shape": "tiny", "dtype": "bfloat16", "device": "cuda:1", "backend": "queued", "workers": 2,
        "heads_per_band": 2, "chunk_size": 32, "context": 100, "new_tokens": 3,
        "batch": 2, "repeats": 5, "seed": 9, "time_limit_s": 12, "compile": True, "T_inner": None,
    })  # fmt: skip
    assert cfg.T_inner == 32 and cfg.chunk_size == 32 and cfg.workers == 2 and cfg.device == "cuda:1"
    assert cfg.time_limit_s == 12.0 and cfg.compile is True
    assert BenchRequest.from_dict({"shape": "tiny", "chunk_size": 64.0}).chunk_size == 64


@pytest.mark.parametrize(
    "patch,field,words",
    [
        ({"colour": "red"}, "colour", "unknown field"),
        ({"shape": "huge"}, "shape", "tiny"),
        ({"shape": 3}, "shape", "not valid"),
        ({"dtype": "float16"}, "dtype", "bfloat16"),
        ({"backend": "mpi"}, "backend", "queued"),
        ({"device": "gpu"}, "device", "cuda"),
        ({"device": 0}, "device", "string"),
        ({"workers": 0}, "workers", ">= 1"),
        ({"workers": "2"}, "workers", "integer"),
        ({"workers": True}, "workers", "integer"),
        ({"chunk_size": 1.5}, "chunk_size", "integer"),
        ({"heads_per_band": 3}, "heads_per_band", "must divide"),
        ({"chunk_size": 64, "T_inner": 24}, "T_inner", "must divide"),
        ({"context": 0}, "context", ">= 1"),
        ({"new_tokens": -1}, "new_tokens", ">= 1"),
        ({"batch": 0}, "batch", ">= 1"),
        ({"repeats": 0}, "repeats", ">= 1"),
        ({"seed": -3}, "seed", ">= 0"),
        ({"time_limit_s": 0}, "time_limit_s", "> 0"),
        ({"time_limit_s": "1m"}, "time_limit_s", "number"),
        ({"compile": "yes"}, "compile", "true or false"),
    ],
)
def test_bad_field_is_named(patch, field, words):
    with pytest.raises(InvalidConfig) as info:
        BenchRequest.from_dict({"shape": "tiny", **patch})
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")
    assert words in str(info.value)


def test_missing_shape_and_non_objects():
    with pytest.raises(InvalidConfig, match="shape: missing"):
        BenchRequest.from_dict({"context": 8})
    with pytest.raises(InvalidConfig, match="JSON object"):
        BenchRequest.from_dict(["tiny"])
    with pytest.raises(InvalidConfig, match="malformed JSON"):
        BenchRequest.from_json('{"shape": "tiny",')
