"""Runner defaults: the built-in config, picking from an exported file, the runtime API
and `autotune generate` running with the picked knobs."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from autotune.cli import main
from autotune.defaults import DefaultsWarning, builtin_default, pick, pick_choice, why_invalid_knobs
from autotune.runtime import load_runner
from schedulers import Knobs, make_plan

TUNED_64 = {"workers": 2, "heads_per_band": 2, "chunk_size": 32, "T_inner": 16}
TUNED_512 = {"workers": 4, "heads_per_band": 1, "chunk_size": 128, "T_inner": 32}


def defaults_file(tmp_path, entries=None):
    if entries is None:
        entries = [{
            "shape": "tiny", "device_kind": "cpu", "backend": "queued", "dtype": "float32",
            "table": [
                {"context": 512, "config": TUNED_512, "metrics": {"decode_tok_s": 90.0}, "trial": 9, "study": "tiny/cpu/queued/L512"},
                {"context": 64, "config": TUNED_64, "metrics": {"decode_tok_s": 120.0}, "trial": 4, "study": "tiny/cpu/queued/L64"},
            ],
        }]
    path = tmp_path / "defaults.json"
    path.write_text(json.dumps({"schema_version": 1, "entries": entries}))
    return path


# -- built-in default ------------------------------------------------------------------


def test_builtin_default_is_the_direct_runners_schedule():
    assert builtin_default(8, 4096) == {"workers": 1, "heads_per_band": 8, "chunk_size": 64, "T_inner": 64}
    assert builtin_default(4, 40) == {"workers": 1, "heads_per_band": 4, "chunk_size": 32, "T_inner": 32}
    assert builtin_default(4, 1)["chunk_size"] == 1
    with pytest.raises(ValueError, match="context"):
        builtin_default(4, 0)


@given(num_heads=st.sampled_from([1, 2, 4, 8, 16]), context=st.integers(1, 1 << 20))
def test_builtin_default_is_always_plannable(num_heads, context):
    knobs = builtin_default(num_heads, context)
    assert why_invalid_knobs(knobs, num_heads) is None
    assert knobs["chunk_size"] <= min(context, 64) and knobs["chunk_size"] * 2 > min(context, 64)
    plan = make_plan(num_heads, context, Knobs(**knobs))
    assert plan.bands == 1 and plan.kernel_calls == -(-context // knobs["chunk_size"])


# -- picking from the file ---------------------------------------------------------------


@pytest.mark.parametrize("prompt_len, expected, context", [
    (1, TUNED_64, 64), (64, TUNED_64, 64), (65, TUNED_512, 512), (512, TUNED_512, 512), (5000, TUNED_512, 512),
])
def test_pick_takes_the_nearest_context_at_or_above_else_the_largest(tmp_path, prompt_len, expected, context):
    path = defaults_file(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DefaultsWarning)
        choice = pick_choice("tiny", "cpu", "queued", prompt_len, path)
        assert pick("tiny", "cpu", "queued", prompt_len, path) == expected
    assert choice.config == expected and choice.context == context and choice.source == "file"
    assert f"context {context}" in choice.describe()


@pytest.mark.parametrize("content, reason", [
    (None, "does not exist"),
    ("{not json", "not readable JSON"),
    ('{"schema_version": 99, "entries": []}', "schema_version 99"),
    ('{"schema_version": 1, "entries": "x"}', "no list of entries"),
    ('[1, 2]', "schema_version None"),
])
def test_missing_or_corrupt_file_falls_back_with_a_warning(tmp_path, content, reason):
    path = tmp_path / "defaults.json"
    if content is not None:
        path.write_text(content)
    with pytest.warns(DefaultsWarning, match=reason):
        choice = pick_choice("tiny", "cpu", "queued", 100, path)
    assert choice.source == "builtin" and choice.config == builtin_default(4, 100)


def test_no_matching_entry_names_what_the_file_has(tmp_path):
    path = defaults_file(tmp_path)
    with pytest.warns(DefaultsWarning, match=r"no entry for tiny/cuda/queued .*has: tiny/cpu/queued"):
        assert pick("tiny", "cuda", "queued", 100, path) == builtin_default(4, 100)
    with pytest.warns(DefaultsWarning, match="no entry"):
        pick("tiny", "cpu", "ray", 100, path)
    with pytest.warns(DefaultsWarning, match="no entry"):
        pick("tiny", "cpu", "queued", 100, path, dtype="bfloat16")


def test_an_invalid_config_in_the_file_is_not_used(tmp_path):
    bad = dict(TUNED_64, heads_per_band=3)  # does not divide the tiny shape's 4 heads
    path = defaults_file(tmp_path, [{"shape": "tiny", "device_kind": "cpu", "backend": "queued", "dtype": "float32",
                                     "table": [{"context": 64, "config": bad}]}])
    with pytest.warns(DefaultsWarning, match="heads_per_band 3 does not divide num_heads 4"):
        assert pick("tiny", "cpu", "queued", 10, path) == builtin_default(4, 10)
    path.write_text(json.dumps({"schema_version": 1, "entries": [{"shape": "tiny", "device_kind": "cpu",
                                "backend": "queued", "dtype": "float32",
                                "table": [{"context": 64, "config": dict(TUNED_64, T_inner="16")}]}]}))
    with pytest.warns(DefaultsWarning, match="T_inner"):
        pick("tiny", "cpu", "queued", 10, path)


# -- runtime API and `autotune generate` ------------------------------------------------------


def test_load_runner_drives_the_model_through_a_scheduler_with_the_picked_knobs(tmp_path):
    path = defaults_file(tmp_path)
    prompt = list(range(40))
    with load_runner("tiny", "cpu", "queued", path, prompt_len=len(prompt)) as tuned:
        assert tuned.knobs == TUNED_64 and tuned.model.cell_runner is tuned.scheduler
        assert tuned.scheduler.knobs == Knobs(**TUNED_64)
        result = tuned.generate(prompt, new_tokens=3)
        counters = tuned.scheduler.counters
        tuned_logits, _ = tuned.model(torch.tensor([prompt]))
    # 2 mLSTM layers; a prefill of 40 steps, then 2 decode steps of one.
    prefill, decode = make_plan(4, 40, Knobs(**TUNED_64)), make_plan(4, 1, Knobs(**TUNED_64))
    assert counters.kernel_calls == 2 * (prefill.kernel_calls + 2 * decode.kernel_calls)
    assert counters.bands == 2 * 3 * 2
    assert len(result.tokens) == 3 and result.prompt_len == 40
    assert result.prefill_tok_s > 0 and result.decode_tok_s > 0 and result.ttft_s >= result.prefill_s
    # The knobs change the schedule, never the result.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DefaultsWarning)
        with load_runner("tiny", "cpu", "sequential", tmp_path / "none.json", prompt_len=40) as plain:
            assert plain.choice.source == "builtin"
            plain_logits, _ = plain.model(torch.tensor([prompt]))
            assert plain.generate(prompt, new_tokens=3).tokens == result.tokens
    torch.testing.assert_close(tuned_logits, plain_logits, rtol=1e-4, atol=1e-4)


def test_load_runner_rejects_bad_prompts_and_closes(tmp_path):
    with load_runner("tiny", "cpu", "queued", defaults_file(tmp_path), prompt_len=4) as runner:
        with pytest.raises(ValueError, match=r"0\.\.255"):
            runner.generate([1, 256], new_tokens=1)
        with pytest.raises(ValueError, match="empty"):
            runner.generate([], new_tokens=1)
    assert runner.scheduler.closed


def test_generate_prints_the_tuned_config_and_speeds(tmp_path, capsys):
    path = defaults_file(tmp_path)
    code = main(["generate", "--shape", "tiny", "--prompt", "hi there", "--new-tokens", "4",
                 "--device", "cpu", "--defaults", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "config: workers=2 heads_per_band=2 chunk_size=32 T_inner=16 (tuned for context 64" in out
    assert "prompt: 8 tokens -> 4 new tokens" in out and "tok/s" in out
    assert len(out.split("tokens: ")[1].splitlines()[0].split()) == 4
    assert "warning" not in err


@pytest.mark.parametrize("source, said", [
    ("baseline", "(the baseline for context 64: no tuned config beat it beyond noise; study"),
    ("unconfirmed", "(best search result for context 64, unconfirmed: study"),
    ("tuned", "(tuned for context 64: study"),
])
def test_the_chosen_config_is_called_tuned_only_when_it_was(tmp_path, source, said):
    path = defaults_file(tmp_path)
    document = json.loads(path.read_text())
    for entry in document["entries"]:
        for row in entry["table"]:
            row["source"] = source
    path.write_text(json.dumps(document))
    choice = pick_choice("tiny", "cpu", "queued", 40, path, num_heads=4)
    assert said in choice.describe()


def test_generate_without_defaults_warns_and_uses_the_builtin(tmp_path, capsys):
    code = main(["generate", "--shape", "tiny", "--prompt-tokens", "100", "--new-tokens", "1", "--device", "cpu",
                 "--backend", "sequential", "--defaults", str(tmp_path / "missing.json")])
    out, err = capsys.readouterr()
    assert code == 0
    assert "warning:" in err and "does not exist" in err
    assert "config: workers=1 heads_per_band=4 chunk_size=64 T_inner=64 (built-in default)" in out


@pytest.mark.parametrize("argv, message", [
    (["--prompt-ids", "1,x"], "not a comma-separated list"),
    (["--prompt-ids", "1,300"], "outside this shape's vocabulary 0..255"),
    (["--prompt", "hi", "--device", "cuda:7"], "cuda"),
    (["--prompt", "hi", "--shape", "huge"], "unknown model shape"),
])
def test_generate_user_errors_are_one_line(argv, message, capsys):
    args = ["generate", "--new-tokens", "1", "--device", "cpu", *argv]
    if "--shape" not in argv:
        args += ["--shape", "tiny"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
