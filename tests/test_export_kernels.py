"""Kernel parameters and batches from the store to the runner: `autotune export` writes
them, the defaults pick them, `autotune generate`, the library runner and
`compare-official` apply them."""

from __future__ import annotations

import json
import warnings

import optuna
import pytest

from autotune.cli import main
from autotune.defaults import DefaultsWarning, pick_choice
from autotune.store.layout import parse_study_name, study_name
from outputs_fixtures import add_study, confirmation_attr, make_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE = {"workers": 1, "heads_per_band": 4, "chunk_size": 32, "T_inner": 32}


def store_with_kernel_knobs(tmp_path, dtype: str = "float32") -> str:
    """L64 at batch 1 (a winner with sub_chunk 32 in 64-step windows) and L64 at batch 16."""
    url = f"sqlite:///{tmp_path / 'autotune.db'}"
    storage = optuna.storages.RDBStorage(url)
    base = {"workers": 1, "heads_per_band": 4, "chunk_size": 64, "T_inner": 64, "sub_chunk": 128}
    for batch, winner in ((1, {**base, "sub_chunk": 32}), (16, {**base, "workers": 2, "heads_per_band": 2})):
        trials = [make_trial(base, 3.0, strategy="baseline", baseline=True), make_trial(winner, 3.8, strategy="random")]
        add_study(storage, study_name("tiny", "cpu", ("queued",), 64, batch), trials,
                  confirmation=confirmation_attr(True, 1, winner, trials[0]), dtype=dtype)
    return url


def test_batch_names_keep_batch_one_names_and_parse_back():
    assert study_name("tiny", "cpu", ("queued",), 64) == "tiny/cpu/queued/L64"  # as before batches
    assert study_name("tiny", "cpu", ("queued",), 64, 16) == "tiny/cpu/queued/L64/B16"
    key = parse_study_name("7b/cuda/queued/L8192/B16~2")
    assert (key.context, key.batch, key.generation) == (8192, 16, 2)
    assert parse_study_name("7b/cuda/queued/L8192").batch == 1


def test_export_writes_kernel_parameters_and_batches_and_the_runner_picks_its_batch(tmp_path, capsys):
    url = store_with_kernel_knobs(tmp_path)
    out = tmp_path / "defaults.json"
    assert main(["export", "--storage", url, "--out", str(out)]) == 0
    assert "L64: workers=1 heads_per_band=4 chunk_size=64 T_inner=64 sub_chunk=32 (tuned" in capsys.readouterr().out
    (entry,) = json.loads(out.read_text())["entries"]
    one, sixteen = entry["table"]
    assert "batch" not in one and one["kernel"] == {"sub_chunk": 32}
    assert sixteen["batch"] == 16 and sixteen["config"]["workers"] == 2 and sixteen["kernel"] == {"sub_chunk": 128}
    with warnings.catch_warnings():
        warnings.simplefilter("error", DefaultsWarning)
        at_one = pick_choice("tiny", "cpu", "queued", 64, out, num_heads=4)
        at_sixteen = pick_choice("tiny", "cpu", "queued", 64, out, num_heads=4, batch=16)
        at_eight = pick_choice("tiny", "cpu", "queued", 64, out, num_heads=4, batch=8)  # nearest batch >= 8
    assert at_one.kernel == {"sub_chunk": 32} and at_one.config["workers"] == 1 and at_one.batch == 1
    assert at_sixteen.config["workers"] == 2 and at_sixteen.batch == 16
    assert at_eight.batch == 16


def test_an_unknown_kernel_parameter_in_the_defaults_falls_back_with_a_warning(tmp_path):
    out = tmp_path / "defaults.json"
    row = {"context": 64, "config": BASE, "kernel": {"sub_chunk": 96}}
    out.write_text(json.dumps({"schema_version": 1, "entries": [
        {"shape": "tiny", "device_kind": "cpu", "backend": "queued", "dtype": "float32", "table": [row]}]}))
    with pytest.warns(DefaultsWarning, match="sub_chunk must be one of"):
        choice = pick_choice("tiny", "cpu", "queued", 64, out, num_heads=4)
    assert choice.source == "builtin" and choice.kernel == {}


def test_the_runner_and_generate_apply_the_exported_kernel_parameters(tmp_path, capsys):
    from autotune.runtime import load_runner

    url = store_with_kernel_knobs(tmp_path)
    out = tmp_path / "defaults.json"
    assert main(["export", "--storage", url, "--out", str(out)]) == 0
    with load_runner("tiny", "cpu", "queued", out, prompt_len=64) as runner:
        runner.generate(list(range(64)), 2)
        ran = runner.kernels.what_ran()
    # 64-step windows in sub-chunks of 32: the sub-chunked form, with the exported sub-chunk
    assert ran["prefill_cell"]["kernels"]["chunkwise--fp32"] == {"sub_chunk": 32} and ran["fallback"] is None
    capsys.readouterr()
    assert main(["generate", "--shape", "tiny", "--device", "cpu", "--prompt-tokens", "64", "--new-tokens", "2",
                 "--defaults", str(out)]) == 0
    assert "config: workers=1 heads_per_band=4 chunk_size=64 T_inner=64 sub_chunk=32 (tuned" in capsys.readouterr().out


def test_compare_official_reads_kernel_parameters_from_config_and_defaults(tmp_path):
    import autotune.compare_official as co

    url = store_with_kernel_knobs(tmp_path, dtype="bfloat16")  # compare-official runs bf16
    out = tmp_path / "defaults.json"
    assert main(["export", "--storage", url, "--out", str(out)]) == 0
    config = '{"workers": 1, "heads_per_band": 4, "chunk_size": 64, "T_inner": 64, "kernel": {"sub_chunk": 64}}'
    args = co.CompareOptions(config=config, shape="tiny", backend="queued")
    assert co._knobs_for(args, 4, 64, "cpu")[:2] == ({**BASE, "chunk_size": 64, "T_inner": 64}, {"sub_chunk": 64})
    args = co.CompareOptions(shape="tiny", backend="queued", defaults=str(out))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DefaultsWarning)
        knobs, kernel, source = co._knobs_for(args, 4, 64, "cpu")
    assert kernel == {"sub_chunk": 32} and "sub_chunk=32 (tuned for context 64" in source
    assert co._knobs_for(args, 4, 64, "cpu", batch=16)[0]["workers"] == 2
    from autotune.errors import UserError

    with pytest.raises(UserError, match="--config: kernel parameter sub_chunk must be one of"):
        co._parse_config(config.replace("64}}", "96}}"), "--config", 4)
