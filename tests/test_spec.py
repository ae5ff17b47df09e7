"""Study specs: TOML into typed dataclasses; every invalid spec is one error naming the key."""

from __future__ import annotations

import glob
import textwrap
from pathlib import Path

import pytest

from autotune.cli import main
from autotune.errors import UserError
from autotune.spec import DEFAULT_SPACE, DEFAULT_STORAGE, SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = """
[model]
shape = "tiny"
[workload]
contexts = [128]
"""


def _load(tmp_path, text: str):
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(text))
    return load_spec(path)


def _error(tmp_path, text: str) -> str:
    with pytest.raises(SpecError) as info:
        _load(tmp_path, text)
    assert isinstance(info.value, UserError)  # the CLI prints it as one line
    assert str(tmp_path / "study.toml") in str(info.value)
    return str(info.value)


def test_minimal_spec_gets_the_documented_defaults(tmp_path):
    spec = _load(tmp_path, MINIMAL)
    assert spec.model.shape == "tiny" and spec.model.device == "auto" and spec.model.dtype == "float32"
    assert spec.model.backends == ("queued",) and spec.model.compile is False
    assert spec.workload.contexts == (128,)
    assert spec.space == {k: tuple(v) for k, v in DEFAULT_SPACE.items()}
    assert (spec.objective.w_decode, spec.objective.w_prefill, spec.objective.w_recall) == (1.0, 1.0, 1.0)
    assert spec.objective.recall_floor == 0.0
    assert spec.search.strategy == "portfolio" and spec.search.n_trials == 40 and spec.search.timeout_s is None
    assert spec.confirmation.top_k == 3 and spec.confirmation.alpha == 0.05 and spec.confirmation.processes == 2
    assert spec.storage == DEFAULT_STORAGE == "sqlite:///studies/autotune.db"


def test_full_spec_is_read_into_typed_fields(tmp_path):
    spec = _load(tmp_path, """
        storage = "sqlite:///x.db"
        [model]
        shape = "350m"
        dtype = "bfloat16"
        device = "cuda:1"
        backends = ["queued", "ray"]
        compile = true
        [workload]
        contexts = [2048, 8192]
        new_tokens = 64
        batch = 2
        repeats = 5
        seed = 7
        [space]
        workers = [1, 2]
        heads_per_band = [4, 8]
        chunk_size = [64, 128]
        T_inner = 16
        [objective]
        w_decode = 2
        w_prefill = 0.5
        w_recall = 0
        recall_floor = 0.9
        [search]
        strategy = "genetic"
        n_trials = 50
        timeout_s = 3600
        seed = 3
        [trials]
        timeout_factor = 4
        timeout_min_s = 10
        timeout_cap_s = 100
        [confirmation]
        top_k = 2
        repeats = 6
        alpha = 0.01
        processes = 3
    """)
    assert spec.storage == "sqlite:///x.db"
    assert spec.model.backends == ("queued", "ray") and spec.model.device == "cuda:1" and spec.model.compile
    assert spec.workload.contexts == (2048, 8192) and spec.workload.batch == 2 and spec.workload.seed == 7
    assert spec.space["T_inner"] == (16,)  # a single value is a one-element list
    assert spec.objective.w_decode == 2.0 and isinstance(spec.objective.w_decode, float)
    assert spec.search.strategy == "genetic" and spec.search.timeout_s == 3600.0 and spec.search.seed == 3
    assert spec.trials.timeout_cap_s == 100.0
    assert spec.confirmation.repeats == 6 and spec.confirmation.alpha == 0.01 and spec.confirmation.processes == 3


def test_a_wall_time_budget_alone_lifts_the_trial_limit(tmp_path):
    spec = _load(tmp_path, MINIMAL + "[search]\ntimeout_s = 600\n")
    assert spec.search.n_trials is None and spec.search.timeout_s == 600.0


def test_identity_covers_what_changes_a_measurement_but_not_the_budget(tmp_path):
    a = _load(tmp_path, MINIMAL + "[search]\nn_trials = 5\nstrategy = 'random'\n")
    b = _load(tmp_path, MINIMAL + "[search]\nn_trials = 50\n")
    c = _load(tmp_path, MINIMAL.replace("[workload]", "[workload]\nrepeats = 9"))
    d = _load(tmp_path, MINIMAL + "[space]\nworkers = [1]\n")
    assert a.identity() == b.identity()
    assert a.identity() != c.identity()
    assert a.identity() != d.identity()
    assert a.to_dict()["search"]["n_trials"] == 5  # the whole spec is JSON-ready


@pytest.mark.parametrize(
    "text, needle",
    [
        (MINIMAL + "[serach]\nn_trials = 3\n", "unknown key serach"),
        (MINIMAL + "[search]\nntrials = 3\n", "unknown key [search] ntrials"),
        (MINIMAL.replace('shape = "tiny"', 'shape = "tiny"\nbackend = "ray"'), "unknown key [model] backend"),
        ("[workload]\ncontexts = [1]\n", "missing section [model]"),
        ('[model]\nshape = "tiny"\n', "missing section [workload]"),
        ('[model]\ndtype = "float32"\n[workload]\ncontexts=[1]\n', "[model] shape: missing"),
        (MINIMAL.replace('"tiny"', '"huge"'), "[model] shape: unknown shape 'huge'; valid shapes: tiny"),
        (MINIMAL.replace('shape = "tiny"', 'shape = "tiny"\ndevice = "gpu"'), "[model] device: expected cpu, cuda, cuda:N, mps or auto"),
        (MINIMAL.replace('shape = "tiny"', 'shape = "tiny"\ndtype = "float16"'), "[model] dtype: expected one of 'float32', 'bfloat16'"),
        (MINIMAL.replace('shape = "tiny"', 'shape = "tiny"\nbackends = ["threads"]'), "[model] backends: unknown value 'threads'"),
        (MINIMAL.replace('shape = "tiny"', 'shape = "tiny"\nbackends = []'), "[model] backends: expected a non-empty list"),
        (MINIMAL.replace('shape = "tiny"', 'shape = "tiny"\ncompile = "yes"'), "[model] compile: expected true or false"),
        (MINIMAL.replace("[128]", "[]"), "[workload] contexts: expected a non-empty list of integers"),
        (MINIMAL.replace("[128]", "[128, 0]"), "[workload] contexts: values must be >= 1, got 0"),
        (MINIMAL.replace("[128]", "[128, 128]"), "[workload] contexts: values must be unique"),
        (MINIMAL.replace("[128]", '["128"]'), "[workload] contexts: expected a non-empty list of integers"),
        ('[model]\nshape = "tiny"\n[workload]\nrepeats = 3\n', "[workload] contexts: missing"),
        (MINIMAL + "repeats = 0\n", "[workload] repeats: must be >= 1, got 0"),
        (MINIMAL + "new_tokens = 1.5\n", "[workload] new_tokens: expected an integer, got 1.5"),
        (MINIMAL + "[space]\nworkers = [1, -2]\n", "[space] workers: values must be >= 1, got -2"),
        (MINIMAL + "[space]\nthreads = [1]\n", "unknown key [space] threads"),
        (MINIMAL + "[objective]\nw_decode = 0\nw_prefill = 0\n", "[objective] w_decode: w_decode and w_prefill are both 0"),
        (MINIMAL + "[objective]\nrecall_floor = 1.5\n", "[objective] recall_floor: must be <= 1"),
        (MINIMAL + "[objective]\nw_recall = -1\n", "[objective] w_recall: must be >= 0"),
        (MINIMAL + "[objective]\nw_recall = true\n", "[objective] w_recall: expected a number"),
        (MINIMAL + "[search]\nstrategy = 'annealing'\n", "[search] strategy: expected one of 'portfolio'"),
        (MINIMAL + "[search]\nn_trials = 0\n", "[search] n_trials: must be >= 1"),
        (MINIMAL + "[search]\ntimeout_s = 0\n", "[search] timeout_s: must be > 0"),
        (MINIMAL + "[trials]\ntimeout_min_s = 500\ntimeout_cap_s = 100\n", "[trials] timeout_min_s: 500 is above timeout_cap_s 100"),
        (MINIMAL + "[confirmation]\nrepeats = 3\n", "[confirmation] repeats: must be >= 4"),
        (MINIMAL + "[confirmation]\nalpha = 0\n", "[confirmation] alpha: must be > 0"),
        (MINIMAL + "[confirmation]\nprocesses = 0\n", "[confirmation] processes: must be >= 1"),
        (MINIMAL + "[confirmation]\nrepeats = 4\nprocesses = 5\n", "[confirmation] processes: 5 processes cannot share 4"),
        ("storage = 3\n" + MINIMAL, "storage: expected a non-empty string"),
        (MINIMAL + "[model.extra]\nx = 1\n", "unknown key [model] extra"),
        ('model = "tiny"\n[workload]\ncontexts = [1]\n', "[model] must be a table"),
    ],
)
def test_invalid_spec_is_one_error_naming_the_key(tmp_path, text, needle):
    message = _error(tmp_path, text)
    assert needle in message
    assert "\n" not in message


def test_invalid_toml_and_missing_file_are_clear_errors(tmp_path):
    assert "is not valid TOML" in _error(tmp_path, "[model\nshape = 1")
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.toml")


def test_parse_spec_accepts_a_parsed_document():
    spec = parse_spec({"model": {"shape": "tiny"}, "workload": {"contexts": [64, 32]}}, "inline")
    assert spec.workload.contexts == (64, 32) and spec.path == "inline"


def test_cli_prints_a_spec_error_as_one_line_without_traceback(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(MINIMAL + "[search]\nstrategy = 'annealing'\n")
    code = main(["tune", "--study", str(path), "--storage", f"sqlite:///{tmp_path}/x.db"])
    err = capsys.readouterr().err
    assert code == 2
    assert "[search] strategy" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.db").exists()  # nothing is created for a bad spec


def test_shipped_specs_are_valid_and_fit_their_purpose():
    paths = sorted(glob.glob(str(ROOT / "studies" / "*.toml")))
    names = {Path(p).name for p in paths}
    assert {"cpu-quick.toml", "cuda.toml", "mps.toml"} <= names
    for path in paths:
        load_spec(path)
    quick = load_spec(ROOT / "studies" / "cpu-quick.toml")
    assert quick.model.device == "cpu" and quick.model.shape == "tiny"
    assert len(quick.workload.contexts) >= 2 and quick.search.n_trials <= 16
    cuda = load_spec(ROOT / "studies" / "cuda.toml")
    assert cuda.model.shape == "350m" and cuda.model.device == "cuda"
    assert len(cuda.workload.contexts) == 2 and cuda.search.n_trials >= 40
    assert cuda.model.backends == ("queued",)
    mps = load_spec(ROOT / "studies" / "mps.toml")
    assert mps.model.device == "mps" and mps.search.n_trials >= 40


def test_every_strategy_can_be_named_in_a_spec():
    from autotune.spec import STRATEGIES
    from autotune.strategies import STRATEGY_NAMES

    assert set(STRATEGIES) == set(STRATEGY_NAMES)
