"""Replay: exact random baseline, scoring, determinism, surface and Kernel Tuner files, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from autotune import cli
from autotune.replay import (
    budget_for,
    expected_best_of_draws,
    load_surface,
    p_score,
    reach_fractions,
    replay_run,
    run_comparison,
    summarise,
    surface_document,
    table,
)
from autotune.replay.surface import Surface, SurfaceError
from autotune.space import SearchSpace
from autotune.strategies import STRATEGY_NAMES

VALUES = {"workers": [1, 2, 4], "heads_per_band": [1, 2, 4], "chunk_size": [16, 32, 64], "T_inner": [4, 8, 16]}


def synthetic_surface(noise=0.05, seed=0, fail_every=0) -> Surface:
    space = SearchSpace(VALUES, num_heads=4, context=64)
    rng = np.random.default_rng(seed)
    samples = []
    for i, c in enumerate(space.configs):
        if fail_every and i % fail_every == 0:
            samples.append(np.zeros(0))
            continue
        true = 2.0 - abs(math.log2(c["chunk_size"]) - 5) * 0.3 - abs(math.log2(c["T_inner"]) - 3) * 0.2 + 0.1 * c["workers"]
        samples.append(true + rng.normal(0, noise, 4))
    return Surface("synthetic", space.values, "score", "maximize", space.configs, samples, "test")


# -- the exact random baseline ------------------------------------------------------------
@pytest.mark.parametrize("maximize", [False, True])
def test_exact_random_baseline_matches_monte_carlo(maximize):
    rng = np.random.default_rng(1)
    values = np.round(rng.gamma(2.0, 1.0, 40), 1)  # with ties
    draws = np.array([1, 2, 5, 13, 40])
    exact = expected_best_of_draws(values, draws, maximize)
    trials = 20000
    for m, e in zip(draws, exact):
        picks = np.argsort(rng.random((trials, len(values))), axis=1)[:, :m]
        best = values[picks].max(axis=1) if maximize else values[picks].min(axis=1)
        stderr = best.std() / math.sqrt(trials)
        assert abs(best.mean() - e) <= 4 * stderr + 1e-12, (m, best.mean(), e)
    # one draw is the mean; all draws are the optimum
    assert exact[0] == pytest.approx(values.mean())
    assert exact[-1] == pytest.approx(values.max() if maximize else values.min())


def test_budget_is_the_first_draw_count_reaching_the_cutoff():
    values = np.arange(1.0, 101.0)  # minimise; optimum 1, median 50.5
    budget, cutoff = budget_for(values, maximize=False)
    assert cutoff == pytest.approx(1 + 0.05 * 49.5)
    curve = expected_best_of_draws(values, np.arange(1, 101), False)
    assert curve[budget - 1] <= cutoff < curve[budget - 2]


def test_p_score_is_zero_for_the_random_curve_and_one_at_the_optimum():
    values = np.linspace(1, 10, 50)
    budget, _ = budget_for(values, maximize=False)
    s_rand = expected_best_of_draws(values, np.arange(1, budget + 1), False)
    assert p_score(s_rand, s_rand, 1.0, budget) == pytest.approx(0.0)
    assert p_score(np.ones(budget), s_rand, 1.0, budget) == pytest.approx(1.0)
    assert p_score(s_rand + 1.0, s_rand, 1.0, budget) < 0.0
    # a run that stopped early keeps its best
    assert p_score(np.ones(1), s_rand, 1.0, budget) == pytest.approx(1.0)


def test_a_run_that_evaluated_nothing_holds_the_worst_value():
    from autotune.replay.scoring import extend

    surface = synthetic_surface()
    comp = run_comparison(surface, ["random"], seeds=range(2), horizon=10)
    comp.traces["random"][0].best = np.zeros(0)  # as a run whose every ask was an invalid config
    summary = summarise(comp)["strategies"]["random"]
    nothing = np.full(comp.horizon, surface.worst)
    assert summary["p_score"]["per_seed"][0] == pytest.approx(p_score(nothing, comp.random_curve, surface.optimum,
                                                                      comp.budget))
    # worst at every t: below random search, and below any run that evaluated something
    assert summary["p_score"]["per_seed"][0] < min(0.0, summary["p_score"]["per_seed"][1])
    assert summary["reach"]["within_5pct"]["10"] <= 0.5
    with pytest.raises(ValueError, match="needs a value to hold"):
        extend(np.zeros(0), 5)


def test_reach_fractions_count_runs_within_tolerance():
    curves = [np.full(100, 100.0), np.full(100, 103.0), np.concatenate([np.full(30, 200.0), np.full(70, 100.5)])]
    reach = reach_fractions(curves, optimum=100.0)
    assert reach["within_5pct"]["10"] == pytest.approx(2 / 3)
    assert reach["within_5pct"]["50"] == pytest.approx(1.0)
    assert reach["within_1pct"]["100"] == pytest.approx(2 / 3)


# -- replay runs ----------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["portfolio", "tpe"])
def test_replay_is_deterministic_for_a_seed(strategy):
    surface = synthetic_surface(fail_every=9)
    a, b = (replay_run(surface, strategy, seed=4, max_evals=30) for _ in range(2))
    assert np.array_equal(a.best, b.best) and a.proposed_by == b.proposed_by
    assert (a.invalid, a.revisits, a.proposals) == (b.invalid, b.revisits, b.proposals)
    c = replay_run(surface, strategy, seed=5, max_evals=30)
    assert not np.array_equal(a.best, c.best) or a.proposals != c.proposals


def test_replay_costs_first_visits_only_and_ends_when_the_space_is_exhausted():
    surface = synthetic_surface(fail_every=5)
    trace = replay_run(surface, "random", seed=0, max_evals=10_000)
    assert trace.evaluations == len(surface) and trace.revisits == 0 and trace.invalid == 0
    assert trace.best[-1] == pytest.approx(surface.optimum)
    assert np.all(np.diff(trace.best) >= 0)  # maximise: best so far never falls
    # an Optuna sampler proposes invalid configs and revisits, which cost nothing
    tpe = replay_run(surface, "tpe", seed=0, max_evals=60)
    assert tpe.proposals == tpe.evaluations + tpe.invalid + tpe.revisits
    assert tpe.invalid > 0


def test_comparison_summary_has_the_documented_keys():
    surface = synthetic_surface()
    comp = run_comparison(surface, ["random", "portfolio"], seeds=range(3), horizon=20)
    summary = summarise(comp)
    assert summary["budget"] >= 1 and summary["optimum"] == pytest.approx(surface.optimum)
    for name in ("random", "portfolio"):
        s = summary["strategies"][name]
        assert set(s["p_score"]) >= {"mean", "std"}
        assert set(s["reach"]) == {"within_5pct", "within_1pct"}
        assert set(s["reach"]["within_5pct"]) == {"10", "25", "50", "100"}
        assert s["ms_per_proposal"] > 0
        assert len(s["mean_best"]) == comp.horizon
    assert set(summary["strategies"]["portfolio"]["shares"]) <= {"start", *STRATEGY_NAMES}


SHIPPED_SURFACES = sorted((Path(__file__).parent.parent / "studies" / "surfaces").glob("*.json"))


@pytest.mark.parametrize("path", SHIPPED_SURFACES, ids=lambda p: p.stem)
def test_every_shipped_surface_replays(path):
    surface = load_surface(str(path))
    medians = [float(np.median(s)) for s in surface.samples if len(s)]
    assert surface.optimum == pytest.approx(max(medians) if surface.maximize else min(medians))
    trace = replay_run(surface, "portfolio", seed=0, max_evals=len(surface))
    assert trace.evaluations == len(surface)  # every config visited once, failures included
    assert trace.best[-1] == pytest.approx(surface.optimum)


def test_the_h100_surface_is_shipped():
    assert any(p.stem.startswith("cuda-350m-queued-") for p in SHIPPED_SURFACES)


STUDIES = Path(__file__).parent.parent / "studies"
SWEEPS_IN_PROGRESS = sorted((STUDIES / "surfaces").glob("*.runs.jsonl"))


@pytest.mark.parametrize("path", SWEEPS_IN_PROGRESS, ids=lambda p: p.name)
def test_a_shipped_sweep_journal_still_resumes(path):
    """A device sweep that spans sessions resumes only while some spec under studies/
    still yields its header: editing that spec's values would discard the runs."""
    from autotune.spec import load_spec
    from autotune.sweep import header_differences, journal_header, sweep_space
    from kernels.model import get_config

    stored = json.loads(path.read_text(encoding="utf-8").splitlines()[0])["header"]
    matches = []
    for toml in sorted(STUDIES.glob("*.toml")):
        spec = load_spec(toml)
        if spec.model.shape != stored["spec"]["model"]["shape"]:
            continue
        space, _ = sweep_space(spec, stored["context"], stored["backends"], get_config(spec.model.shape).num_heads)
        header = journal_header(spec, stored["context"], stored["backends"], stored["repeats"], stored["seed"],
                                stored["device"], space, machine=stored["machine"])
        if not header_differences(stored, header):
            matches.append(toml.name)
    assert matches, f"no spec under studies/ yields the header of {path.name}"


@pytest.mark.parametrize("path", SWEEPS_IN_PROGRESS, ids=lambda p: p.name)
def test_a_shipped_sweep_journal_replays_once_its_baseline_has_run(path):
    from autotune.errors import UserError
    from autotune.sweep import read_journal

    from autotune.defaults import KNOBS, builtin_default
    from kernels.model import get_config

    header, runs = read_journal(path)
    measured = {index for index, _ in runs}
    baseline = builtin_default(get_config(header["spec"]["model"]["shape"]).num_heads, header["context"])
    if header["configs"].index([baseline[k] for k in KNOBS]) not in measured:  # the 4096-token H100 sweep
        with pytest.raises(UserError, match="has no finished run yet"):
            load_surface(path)
        return
    surface = load_surface(path)
    assert len(surface) == len(measured) < len(header["configs"])
    assert surface.meta["partial"]["configs"] == len(header["configs"])


# -- files -----------------------------------------------------------------------------------
def test_surface_file_round_trip(tmp_path):
    space = SearchSpace(VALUES, num_heads=4, context=32)
    entries = [{"config": c, "samples": [1.0 + i, 2.0 + i, 3.0 + i], "error": None} for i, c in enumerate(space.configs)]
    entries[0] = {"config": space.configs[0], "samples": [], "error": {"kind": "oom", "message": "out of memory"}}
    doc = surface_document(name="t", knobs=space.values, objective={"name": "score", "direction": "maximize"},
                           entries=entries, shape="tiny", context=32)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    surface = load_surface(path)
    assert len(surface) == len(space) and surface.failed.tolist() == [True] + [False] * (len(space) - 1)
    assert surface.true_values[1] == pytest.approx(3.0)  # the median of 2, 3, 4
    assert surface.optimum == pytest.approx(2.0 + len(space) - 1)
    assert surface.meta["shape"] == "tiny"


def kernel_tuner_cache(closed=True) -> str:
    params = {"block_size_x": [32, 64, 128], "tile": [1, 2]}
    cache = {}
    times = {(32, 1): 3.0, (32, 2): 2.0, (64, 1): 1.5, (64, 2): "CompilationFailedConfig", (128, 1): "InvalidConfig"}
    for (b, t), value in times.items():
        entry = {"block_size_x": b, "tile": t, "time": value, "compile_time": 400.0}
        if not isinstance(value, str):
            entry["times"] = [value * 1.1, value * 0.9, value]
        cache[f"{b},{t}"] = entry
    doc = {"device_name": "Test GPU", "kernel_name": "k", "tune_params_keys": ["block_size_x", "tile"],
           "tune_params": params, "objective": "time", "cache": cache}
    text = json.dumps(doc, indent=0)
    if not closed:  # Kernel Tuner leaves the cache open while it runs
        text = text.rstrip()[:-1].rstrip()[:-1].rstrip() + ","
    return text


@pytest.mark.parametrize("closed", [True, False])
def test_kernel_tuner_cache_parsing(tmp_path, closed):
    path = tmp_path / "cache.json"
    path.write_text(kernel_tuner_cache(closed))
    surface = load_surface(path)
    assert surface.source == "kernel_tuner" and surface.direction == "minimize"
    # InvalidConfig and the absent (128, 2) are outside the space; the compile failure is inside
    assert [tuple(c.values()) for c in surface.configs] == [(32, 1), (32, 2), (64, 1), (64, 2)]
    assert surface.failed.tolist() == [False, False, False, True]
    assert surface.true_values[:3].tolist() == [3.0, 2.0, 1.5]
    assert sorted(surface.samples[0].tolist()) == pytest.approx([2.7, 3.0, 3.3])
    assert surface.optimum == 1.5 and surface.worst == 3.0
    assert surface.meta["device_name"] == "Test GPU"
    trace = replay_run(surface, "portfolio", seed=0, max_evals=10)
    assert trace.evaluations == 4 and trace.best[-1] == 1.5


def test_a_gzipped_kernel_tuner_cache_reads_as_the_plain_one(tmp_path):
    import gzip

    plain, packed = tmp_path / "cache.json", tmp_path / "cache.json.gz"
    plain.write_text(kernel_tuner_cache(True))
    with gzip.open(packed, "wt", encoding="utf-8") as handle:
        handle.write(kernel_tuner_cache(True))
    a, b = load_surface(plain), load_surface(packed)
    assert b.name == "cache" and b.source == "kernel_tuner"
    assert a.configs == b.configs and np.array_equal(a.true_values, b.true_values, equal_nan=True)
    broken = tmp_path / "broken.json.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(SurfaceError, match="cannot read"):
        load_surface(broken)


def test_not_a_surface_is_one_clear_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(SurfaceError, match="neither an autotune surface"):
        load_surface(path)
    with pytest.raises(SurfaceError, match="does not exist"):
        load_surface(tmp_path / "missing.json")


def test_cli_writes_json_and_html(tmp_path, capsys):
    cache = tmp_path / "cache.json"
    cache.write_text(kernel_tuner_cache())
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    rc = cli.main(["replay", str(cache), "--strategies", "random,portfolio,nsga2", "--seeds", "3",
                   "--json", str(out_json), "--html", str(out_html), "--quiet"])
    assert rc == 0
    summary = json.loads(out_json.read_text())
    assert set(summary["strategies"]) == {"random", "portfolio", "nsga2"}
    assert summary["optimum"] == 1.5 and summary["budget"] >= 1
    assert "plotly" in out_html.read_text()[:200000].lower()
    assert "P-score" in capsys.readouterr().out


def test_cli_rejects_an_unknown_strategy(tmp_path, capsys):
    cache = tmp_path / "cache.json"
    cache.write_text(kernel_tuner_cache())
    assert cli.main(["replay", str(cache), "--strategies", "random,annealing"]) == 2
    assert "unknown strategy annealing" in capsys.readouterr().err


# -- sweep -----------------------------------------------------------------------------------
FAKE_BENCH = r'''
import json, sys
from pathlib import Path
cfg = json.loads(sys.argv[-1])
log = Path(__file__).with_suffix(".calls")
with log.open("a") as fh:
    fh.write(json.dumps(cfg) + "\n")
if cfg["workers"] == 2 and cfg["chunk_size"] == 16:
    print(json.dumps({"schema_version": 1, "status": "error", "error": {"kind": "oom", "message": "fake"}}))
    sys.exit(1)
n = sum(1 for _ in log.open())
speed = 100.0 * cfg["workers"] / (1 + abs(cfg["chunk_size"] - 32) / 16) * (1 + 0.01 * (n % 3))
m = lambda x: {"samples": [x, x * 1.02, x * 0.98], "median": x, "iqr": 0.04 * x}
print(json.dumps({"schema_version": 1, "status": "ok", "metrics": {"prefill_tok_s": m(speed), "decode_tok_s": m(speed / 2),
      "recall": 1.0}, "counters": {"kernel_calls": 1}, "timings": {}, "env": {"device": "cpu"}, "config": cfg}))
'''


def quick_spec(tmp_path):
    from autotune.spec import parse_spec

    doc = {"model": {"shape": "tiny", "device": "cpu", "backends": ["queued"]},
           "workload": {"contexts": [32], "repeats": 3},
           "space": {"workers": [1, 2, 4], "heads_per_band": [2, 4], "chunk_size": [16, 32], "T_inner": [16, 32]},
           "trials": {"timeout_min_s": 30, "timeout_cap_s": 60}}
    return parse_spec(doc, str(tmp_path / "spec.toml"))


def fake_sweep(tmp_path, pause_s: float = 0.0):
    """The quick spec, the surface path and the fake benchmark's command (each run takes
    at least `pause_s`: the deadline tests must not depend on how fast a process starts)."""
    import sys

    fake = tmp_path / "fake_bench.py"
    fake.write_text(f"import time\ntime.sleep({pause_s})\n" + FAKE_BENCH)
    return quick_spec(tmp_path), tmp_path / "surf.json", (sys.executable, str(fake))


def this_machine() -> dict[str, str]:
    import torch

    from autotune.store.fingerprint import machine_fingerprint

    return machine_fingerprint(torch.device("cpu"))


def bench_calls(tmp_path) -> list[str]:
    return (tmp_path / "fake_bench.calls").read_text().splitlines()


def test_sweep_measures_every_config_and_writes_a_surface(tmp_path):
    from autotune.sweep import sweep

    spec, out, cmd = fake_sweep(tmp_path)
    lines = []
    path = sweep(spec, 32, ("queued",), repeats=2, seed=1, out=out, bench_command=cmd, log=lines.append)
    surface = load_surface(path)
    # workers <= bands and T_inner | chunk: (w, h) in {(1,2),(2,2),(1,4)} x (c, t) in {(16,16),(32,16),(32,32)}
    assert len(surface) == 9 and surface.direction == "maximize"
    calls = bench_calls(tmp_path)
    assert len(calls) == 2 * 9 and json.loads(calls[0])["context"] == 32
    baseline = {"workers": 1, "heads_per_band": 4, "chunk_size": 32, "T_inner": 32}  # builtin default at L32
    assert {k: json.loads(calls[0])[k] for k in baseline} == baseline  # measured first
    base = surface.true_values[surface.space.index(baseline)]
    assert base == pytest.approx(3.0, rel=0.03)  # decode 1 + prefill 1 + recall 1
    failing = {"workers": 2, "heads_per_band": 2, "chunk_size": 16, "T_inner": 16}
    assert surface.failed.tolist() == [surface.configs[i] == failing for i in range(len(surface))]
    assert all(len(s) == (0 if f else 2) for s, f in zip(surface.samples, surface.failed))
    doc = json.loads(path.read_text())
    assert doc["configs"][surface.space.index(failing)]["error"]["kind"] == "oom"
    assert doc["objective"]["baseline"]["config"] == baseline and doc["repeats"] == 2
    assert not (tmp_path / "surf.json.runs.jsonl").exists()
    assert any("ETA" in line for line in lines)


def test_sweep_resumes_from_its_journal(tmp_path):
    from autotune.sweep import sweep

    spec, out, cmd = fake_sweep(tmp_path)
    sweep(spec, 32, ("queued",), repeats=1, seed=0, out=out, bench_command=cmd, log=lambda _: None)
    assert len(bench_calls(tmp_path)) == 9
    # a second sweep whose journal already holds 4 finished runs measures only the other 5
    from autotune.sweep import Journal, journal_header, run_order, sweep_space

    space, _ = sweep_space(spec, 32, ("queued",), 4)
    out2 = tmp_path / "surf2.json"
    header = journal_header(spec, 32, ("queued",), 1, 0, "cpu", space, machine=this_machine())
    journal = Journal(out2.with_name(out2.name + ".runs.jsonl"), header)
    ok = {"status": "ok", "metrics": {"prefill_tok_s": 100.0, "decode_tok_s": 50.0, "recall": 1.0}}
    for k, (i, r) in enumerate(run_order(9, 1, 0)[:4]):
        journal.add({"index": i, "repeat": r, "order": k, "result": ok, "wall_s": 0.1, "stderr_tail": ""})
    (tmp_path / "fake_bench.calls").unlink()
    sweep(spec, 32, ("queued",), repeats=1, seed=0, out=out2, bench_command=cmd, log=lambda _: None)
    assert len(bench_calls(tmp_path)) == 5
    assert len(load_surface(out2)) == 9


def test_a_sweep_resumes_after_search_settings_change_but_not_after_its_limits_do(tmp_path):
    import dataclasses

    from autotune.errors import UserError
    from autotune.spec import SearchSpec
    from autotune.sweep import Journal, journal_header, sweep_space

    spec = quick_spec(tmp_path)
    space, _ = sweep_space(spec, 32, ("queued",), 4)
    path = tmp_path / "surf.json.runs.jsonl"
    header = lambda s: journal_header(s, 32, ("queued",), 1, 0, "cpu", space, machine=this_machine())  # noqa: E731
    Journal(path, header(spec)).add({"index": 0, "repeat": 0, "order": 0, "result": {"status": "ok"},
                                     "wall_s": 0.1, "stderr_tail": ""})
    rebudgeted = dataclasses.replace(spec, search=SearchSpec(n_trials=7), storage="sqlite:///elsewhere.db")
    assert list(Journal(path, header(rebudgeted)).runs) == [(0, 0)]
    tighter = dataclasses.replace(spec, trials=dataclasses.replace(spec.trials, timeout_cap_s=31))
    with pytest.raises(UserError, match=r"differs in \[trials\]"):
        Journal(path, header(tighter))
    with pytest.raises(UserError, match="differs in repeats"):
        Journal(path, journal_header(spec, 32, ("queued",), 2, 0, "cpu", space, machine=this_machine()))
    path.write_text("not json\n")
    with pytest.raises(UserError, match="not a sweep journal"):
        Journal(path, header(spec))


def test_a_sweep_journal_of_another_machine_is_refused_before_any_run(tmp_path):
    from autotune.errors import UserError
    from autotune.sweep import Journal, journal_header, sweep, sweep_space

    spec, out, cmd = fake_sweep(tmp_path)
    space, _ = sweep_space(spec, 32, ("queued",), 4)
    elsewhere = {**this_machine(), "device_name": "NVIDIA H100 80GB HBM3"}
    Journal(out.with_name(out.name + ".runs.jsonl"),
            journal_header(spec, 32, ("queued",), 1, 0, "cpu", space, machine=elsewhere))
    with pytest.raises(UserError, match="measured on device_name NVIDIA H100 80GB HBM3.*start another with --out"):
        sweep(spec, 32, ("queued",), repeats=1, seed=0, out=out, bench_command=cmd, log=lambda _: None)
    journal = out.with_name(out.name + ".runs.jsonl")
    header = json.loads(journal.read_text())["header"]
    del header["machine"]  # as journals were written before they named their machine
    journal.write_text(json.dumps({"header": header}) + "\n")
    with pytest.raises(UserError, match="a machine it does not name"):
        sweep(spec, 32, ("queued",), repeats=1, seed=0, out=out, bench_command=cmd, log=lambda _: None)
    assert not (tmp_path / "fake_bench.calls").exists()


def test_a_sweep_whose_baseline_cannot_run_stops_after_the_baselines_runs(tmp_path):
    import sys

    from autotune.errors import UserError
    from autotune.sweep import sweep

    spec, out, _ = fake_sweep(tmp_path)
    failing = tmp_path / "failing_bench.py"
    failing.write_text(FAKE_BENCH.replace('if cfg["workers"] == 2 and cfg["chunk_size"] == 16:', "if True:"))
    cmd = (sys.executable, str(failing))
    with pytest.raises(UserError, match=r"every run of the baseline config .* failed \(oom\)"):
        sweep(spec, 32, ("queued",), repeats=1, out=out, bench_command=cmd, log=lambda _: None)
    assert len((tmp_path / "failing_bench.calls").read_text().splitlines()) == 1
    with pytest.raises(UserError, match="remove .*runs.jsonl and sweep again"):  # and so does the same command
        sweep(spec, 32, ("queued",), repeats=1, out=out, bench_command=cmd, log=lambda _: None)
    assert len((tmp_path / "failing_bench.calls").read_text().splitlines()) == 1


def test_a_sweep_in_progress_replays_on_the_configs_it_has_measured(tmp_path):
    from autotune.errors import UserError
    from autotune.sweep import Journal, journal_header, sweep, sweep_space

    spec, out, cmd = fake_sweep(tmp_path, pause_s=0.1)
    assert sweep(spec, 32, ("queued",), repeats=1, out=out, timeout_s=5.0, stop_after_s=5.15, bench_command=cmd,
                 log=lambda _: None) is None
    done = len(bench_calls(tmp_path))
    journal = out.with_name(out.name + ".runs.jsonl")
    surface = load_surface(journal)
    assert len(surface) == done < 9
    assert surface.meta["partial"] == {"configs_measured": done, "configs": 9, "runs_finished": done, "runs_planned": 9}
    assert f"{done} of 9 valid configs measured so far" in surface.describe()
    summary = summarise(run_comparison(surface, ["random"], seeds=range(2), horizon=done))
    assert summary["surface"]["partial"]["configs"] == 9
    assert f"{done} configs of 9 (a sweep in progress)" in table(summary)
    # the finished sweep scores the same runs the same way
    assert sweep(spec, 32, ("queued",), repeats=1, out=out, bench_command=cmd, log=lambda _: None) == out
    full = load_surface(out)
    for config, value in zip(surface.configs, surface.true_values):
        assert full.true_values[full.space.index(config)] == pytest.approx(value, nan_ok=True)
    # before the baseline has a run there is nothing to score against
    space, _ = sweep_space(spec, 32, ("queued",), 4)
    other = tmp_path / "other.json.runs.jsonl"
    not_baseline = next(i for i, c in enumerate(space.configs) if c["workers"] == 2)
    Journal(other, journal_header(spec, 32, ("queued",), 1, 0, "cpu", space, machine=this_machine())).add(
        {"index": not_baseline, "repeat": 0, "order": 1, "result": {"status": "ok"}, "wall_s": 0.1, "stderr_tail": ""})
    with pytest.raises(UserError, match="baseline config .* has no finished run yet"):
        load_surface(other)


def test_sweep_stops_before_a_run_that_could_pass_its_deadline_and_then_resumes(tmp_path):
    from autotune.errors import UserError
    from autotune.sweep import sweep

    spec, out, cmd = fake_sweep(tmp_path, pause_s=0.1)
    with pytest.raises(UserError, match="no time for one run"):
        sweep(spec, 32, ("queued",), repeats=1, out=out, timeout_s=5.0, stop_after_s=4.0, bench_command=cmd,
              log=lambda _: None)
    lines = []
    # room for the first run's limit and a few quick runs, not for nine
    assert sweep(spec, 32, ("queued",), repeats=1, out=out, timeout_s=5.0, stop_after_s=5.15, bench_command=cmd,
                 log=lines.append) is None
    done = len(bench_calls(tmp_path))
    assert 1 <= done < 9 and not out.exists()
    assert "the same command continues" in lines[-1]
    assert sweep(spec, 32, ("queued",), repeats=1, out=out, bench_command=cmd, log=lambda _: None) == out
    assert len(bench_calls(tmp_path)) == 9


def test_the_cuda_training_surfaces_have_the_h100_sweeps_space():
    from autotune.replay.tuning import training_surfaces

    recorded = load_surface(STUDIES / "surfaces" / "cuda-350m-queued-L2048.json")
    surfaces = training_surfaces("cuda")
    assert len(surfaces) == 4 and all(s.configs == recorded.configs for s in surfaces)


def test_synthetic_surfaces_are_fixed_by_their_seed():
    a, b = load_surface("synthetic:kernel:7"), load_surface("synthetic:kernel:7")
    assert np.array_equal(a.true_values, b.true_values, equal_nan=True) and a.direction == "minimize"
    assert 0 < a.failed.sum() < len(a)  # compile failures inside the space
    x = load_surface("synthetic:xlstm:7")
    assert x.direction == "maximize" and not np.array_equal(x.true_values, load_surface("synthetic:xlstm:8").true_values)
    with pytest.raises(SurfaceError, match="synthetic:xlstm:SEED"):
        load_surface("synthetic:gemm:1")


def test_comparison_markdown_marks_the_best_strategy():
    from autotune.replay.report import comparison_markdown

    comp = run_comparison(synthetic_surface(), ["random", "boltzmann"], seeds=range(4), horizon=15)
    summary = summarise(comp)
    text = comparison_markdown([summary], order=["random", "boltzmann"])
    row = text.splitlines()[2]
    best = max(("random", "boltzmann"), key=lambda n: summary["strategies"][n]["p_score"]["mean"])
    cells = row.split("|")[5:7]
    assert cells[["random", "boltzmann"].index(best)].strip().startswith("**")
