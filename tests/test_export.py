"""`autotune best` and `autotune export` on stores laid out as the tuner writes them."""

from __future__ import annotations

import json
import os
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from autotune.store.layout import parse_study_name
from autotune.store.views import load_views, open_storage
from autotune.cli import main
from autotune.defaults import DefaultsWarning, pick_choice
from autotune.export import build_defaults, read_confirmation, write_atomic
from outputs_fixtures import BASELINE, WINNER_16, WINNER_64, add_study, make_trial, standard_store

optuna.logging.set_verbosity(optuna.logging.WARNING)


def export(url: str, out, *extra: str) -> dict:
    assert main(["export", "--storage", url, "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_study_names_parse_as_the_contract_writes_them():
    key = parse_study_name("350m/cuda/queued+ray/L2048")
    assert (key.shape, key.device_kind, key.backends, key.context) == ("350m", "cuda", ("queued", "ray"), 2048)
    assert parse_study_name("someone-elses-study") is None
    assert parse_study_name("tiny/cpu/queued/2048") is None


def test_best_prints_what_export_writes_and_labels_the_search_maximum(tmp_path, capsys):
    url = standard_store(tmp_path)
    assert main(["best", "--storage", url]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("L")}
    assert set(rows) == {"L16", "L64"}
    assert "search max (unconfirmed)" in out
    # L64: the confirmed winner, with the confirmation's re-measured medians (1.54x the baseline).
    assert "tuned #14" in rows["L64"] and "workers=2 heads_per_band=2 chunk_size=32 T_inner=16" in rows["L64"]
    assert "1,540.0" in rows["L64"] and "154.0" in rows["L64"]
    # The infeasible trial scores higher (value + 1) but is below the recall floor.
    assert rows["L64"].rstrip().endswith("3.800 #14 genetic")
    # L16: its search maximum did not hold up, so the row shows the baseline, not the maximum.
    assert "baseline #0" in rows["L16"] and "workers=1 heads_per_band=4 chunk_size=16 T_inner=16" in rows["L16"]
    assert rows["L16"].rstrip().endswith("3.500 #14 genetic")
    verdicts = {line.split(":")[0].strip(): line.strip() for line in out.splitlines() if line.startswith("  L")}
    assert verdicts["L64"].startswith("L64: Trial 14 becomes the default")
    assert verdicts["L16"].startswith("L16: The baseline stays the default")
    assert "Mann-Whitney p = 0.13 >= 0.05" in verdicts["L16"]


def test_export_honours_the_confirmation_verdict(tmp_path):
    url = standard_store(tmp_path)
    doc = export(url, tmp_path / "defaults.json")
    assert doc["schema_version"] == 1
    (entry,) = doc["entries"]
    assert (entry["shape"], entry["device_kind"], entry["backend"], entry["dtype"]) == ("tiny", "cpu", "queued", "float32")
    rows = {row["context"]: row for row in entry["table"]}
    assert [row["context"] for row in entry["table"]] == [16, 64]
    # L64's winner beat the baseline: it is the default.
    assert rows[64]["config"] == WINNER_64 and rows[64]["source"] == "tuned"
    assert rows[64]["study"] == "tiny/cpu/queued/L64" and rows[64]["trial"] == 14
    # Its metrics are the confirmation's re-measurement (more repeats than the search).
    assert rows[64]["metrics"]["decode_tok_s"] == pytest.approx(154.0)
    # L16's winner did not: the baseline (trial 0) stays the default.
    assert rows[16]["config"] == dict(BASELINE, chunk_size=16, T_inner=16)
    assert rows[16]["source"] == "baseline" and rows[16]["trial"] == 0


def test_unconfirmed_studies_keep_the_baseline_unless_asked(tmp_path):
    url = standard_store(tmp_path, confirm_64=None, confirm_16=None)
    rows = {r["context"]: r for r in export(url, tmp_path / "a.json")["entries"][0]["table"]}
    assert rows[64]["source"] == "baseline" and rows[64]["trial"] == 0
    rows = {r["context"]: r for r in export(url, tmp_path / "b.json", "--unconfirmed")["entries"][0]["table"]}
    assert rows[64]["config"] == WINNER_64 and rows[64]["source"] == "unconfirmed"
    assert rows[16]["config"] == WINNER_16


@pytest.mark.parametrize("confirmation, expected", [
    ({"verdict": "improved", "default": {"trial": 7, "source": "tuned"}}, (True, 7)),
    ({"verdict": "baseline", "default": {"trial": 0, "source": "baseline"}}, (False, 0)),
    ({"verdict": "improved"}, (True, None)),
    ({"candidates": []}, (None, None)),
    ("improved", (None, None)),
    (None, (None, None)),
])
def test_confirmation_verdicts_are_read(confirmation, expected):
    assert read_confirmation(confirmation) == expected


def test_multi_backend_study_files_the_row_under_the_winning_backend(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    base = dict(BASELINE, backend="queued")
    win = dict(WINNER_64, backend="ray")
    add_study(storage, "tiny/cpu/queued+ray/L64", [
        make_trial(base, 3.0, strategy="baseline", baseline=True),
        make_trial(win, 3.6, strategy="bandit", prefill=1300, decode=130),
    ], confirmation={"verdict": "improved", "default": {"trial": 1, "config": win, "source": "tuned"}})
    doc, _ = build_defaults(load_views(storage))
    (entry,) = doc["entries"]
    assert entry["backend"] == "ray" and entry["table"][0]["config"] == WINNER_64


def test_only_the_newest_study_of_a_family_is_read(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    old = dict(BASELINE, workers=4)
    add_study(storage, "tiny/cpu/queued/L32", [make_trial(old, 3.0, strategy="baseline", baseline=True)])
    add_study(storage, "tiny/cpu/queued/L32~2", [make_trial(BASELINE, 3.0, strategy="baseline", baseline=True)])
    (view,) = load_views(storage)
    assert view.name == "tiny/cpu/queued/L32~2" and view.key.generation == 2
    doc, _ = build_defaults([view])
    assert doc["entries"][0]["table"][0]["config"] == BASELINE


def test_study_without_a_completed_baseline_gets_no_row(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    add_study(storage, "tiny/cpu/queued/L32", [
        make_trial(BASELINE, None, strategy="baseline", baseline=True, state=TrialState.FAIL),
    ])
    doc, notes = build_defaults(load_views(storage))
    assert doc["entries"] == [] and "no completed baseline" in notes[0]


def test_export_then_pick_round_trip(tmp_path):
    url = standard_store(tmp_path)
    out = tmp_path / "defaults.json"
    export(url, out)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DefaultsWarning)
        choice = pick_choice("tiny", "cpu", "queued", 40, out, num_heads=4)
    assert choice.config == WINNER_64 and choice.context == 64 and choice.source == "file"


def test_merge_keeps_other_entries_and_replaces_matching_ones(tmp_path):
    url = standard_store(tmp_path)
    out = tmp_path / "defaults.json"
    other = {"shape": "350m", "device_kind": "cuda", "backend": "queued", "dtype": "bfloat16",
             "table": [{"context": 2048, "config": dict(BASELINE), "metrics": {}, "trial": 0, "study": "x"}]}
    stale = {"shape": "tiny", "device_kind": "cpu", "backend": "queued", "dtype": "float32", "table": []}
    out.write_text(json.dumps({"schema_version": 1, "entries": [other, stale]}))
    doc = export(url, out, "--merge")
    keys = [(e["shape"], e["device_kind"]) for e in doc["entries"]]
    assert keys == [("350m", "cuda"), ("tiny", "cpu")]
    assert len(doc["entries"][1]["table"]) == 2
    assert len(export(url, out)["entries"]) == 1  # without --merge the file is replaced


def test_write_atomic_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "defaults.json"
    path.write_text("old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        write_atomic(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["defaults.json"]  # no temporary left behind


def test_study_spec_selects_its_studies_and_its_storage(tmp_path, monkeypatch, capsys):
    standard_store(tmp_path)
    spec = tmp_path / "spec.toml"
    spec.write_text('storage = "sqlite:///autotune.db"\n[model]\nshape = "tiny"\ndevice = "cpu"\n'
                    '[workload]\ncontexts = [64, 256]\n')
    monkeypatch.chdir(tmp_path)  # the spec's relative SQLite path
    assert main(["best", "--study", str(spec)]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("L")]
    assert rows == ["L64"]


def test_missing_store_and_bad_url_are_one_line_errors(tmp_path, capsys):
    assert main(["best", "--storage", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    err = capsys.readouterr().err
    assert "no store at" in err and "autotune tune" in err and "Traceback" not in err
    assert not (tmp_path / "none.db").exists()  # looking did not create an empty store
    assert main(["export", "--storage", "not a url", "--out", str(tmp_path / "d.json")]) == 2
    assert "is not a database URL" in capsys.readouterr().err


def test_store_without_tuning_studies_is_an_error(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'other.db'}"
    optuna.create_study(study_name="unrelated", storage=url)
    assert main(["export", "--storage", url, "--out", str(tmp_path / "d.json")]) == 2
    assert "no tuning studies" in capsys.readouterr().err
    assert not (tmp_path / "d.json").exists()


def test_open_storage_refuses_memory_sqlite():
    from autotune.errors import UserError

    with pytest.raises(UserError, match="no store"):
        open_storage("sqlite:///:memory:")


E2E_SPEC = """storage = "sqlite:///autotune.db"
[model]
shape = "tiny"
device = "cpu"
backends = ["queued"]
[workload]
contexts = [32]
new_tokens = 2
repeats = 1
[space]
workers = [1, 2]
heads_per_band = [2, 4]
chunk_size = [16, 32]
T_inner = [8, 16]
[search]
n_trials = 2
seed = 0
[trials]
timeout_min_s = 60
timeout_cap_s = 120
[confirmation]
top_k = 1
repeats = 4
"""


@pytest.mark.slow
def test_tune_then_best_export_report_generate(tmp_path, monkeypatch, capsys):
    """A real `autotune tune` store read by every output command, ending in a generation
    that runs with the exported knobs."""
    import subprocess
    import sys

    spec = tmp_path / "e2e.toml"
    spec.write_text(E2E_SPEC)
    monkeypatch.chdir(tmp_path)
    tuned = subprocess.run([sys.executable, "-m", "autotune", "tune", "--study", str(spec)],
                           capture_output=True, text=True, timeout=300)
    assert tuned.returncode == 0, tuned.stdout[-3000:] + tuned.stderr[-3000:]

    assert main(["best", "--study", str(spec)]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("L")] == ["L32"]

    out = tmp_path / "defaults.json"
    assert main(["export", "--study", str(spec), "--out", str(out)]) == 0
    (entry,) = json.loads(out.read_text())["entries"]
    assert (entry["shape"], entry["device_kind"], entry["backend"], entry["dtype"]) == ("tiny", "cpu", "queued", "float32")
    (row,) = entry["table"]
    (view,) = load_views(open_storage("sqlite:///autotune.db"))
    trial = view.trial(row["trial"])
    assert row["context"] == 32 and row["study"] == view.name == "tiny/cpu/queued/L32"
    assert row["config"] == {k: trial.params[k] for k in row["config"]}
    assert row["metrics"]["decode_tok_s"] > 0 and row["metrics"]["prefill_tok_s"] > 0
    beats, _ = read_confirmation(view.user_attrs.get("confirmation"))
    assert beats is not None, "the tuner stored no confirmation verdict"
    assert row["source"] == ("tuned" if beats else "baseline")

    assert main(["report", "--study", str(spec), "--out", str(tmp_path / "report.html")]) == 0
    assert "Parallel coordinates: tiny/cpu/queued/L32" in (tmp_path / "report.html").read_text()

    capsys.readouterr()
    assert main(["generate", "--shape", "tiny", "--prompt-tokens", "20", "--new-tokens", "2", "--device", "cpu",
                 "--defaults", str(out)]) == 0
    knobs = " ".join(f"{k}={row['config'][k]}" for k in ("workers", "heads_per_band", "chunk_size", "T_inner"))
    said = "tuned for context 32" if beats else "the baseline for context 32"
    assert f"config: {knobs} ({said}" in capsys.readouterr().out


def test_export_and_report_refuse_an_output_folder_that_does_not_exist(tmp_path, capsys):
    url = standard_store(tmp_path)
    for command in ("export", "report"):
        target = tmp_path / "missing" / "dir" / "out.file"
        assert main([command, "--storage", url, "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert f"the folder {target.parent} of the output file does not exist" in err
        assert "mkdir -p" in err and "--out" in err and "Traceback" not in err
        assert not (tmp_path / "missing").exists()


def test_outputs_are_written_with_the_umask_mode_not_0600(tmp_path):
    url = standard_store(tmp_path)
    old = os.umask(0o022)
    try:
        assert main(["export", "--storage", url, "--out", str(tmp_path / "defaults.json")]) == 0
        assert main(["report", "--storage", url, "--out", str(tmp_path / "report.html")]) == 0
    finally:
        os.umask(old)
    for name in ("defaults.json", "report.html"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_export_counts_in_words_and_explains_a_kept_baseline(tmp_path, capsys):
    url = standard_store(tmp_path)
    assert main(["export", "--storage", url, "--out", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert ": 1 entry, 2 context rows" in out
    assert "note: tiny/cpu/queued/L16: The baseline stays the default" in out
