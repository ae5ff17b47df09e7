"""Leave-one-family-out: a variant is chosen on the other families, parts merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.replay.heldout import main, targets_markdown, variant_options
from autotune.replay.synthetic import xlstm_surface
from autotune.strategies import make_strategy

SURFACES = Path(__file__).parent.parent / "studies" / "surfaces"


def test_each_family_gets_the_variant_chosen_on_the_others(tmp_path, capsys):
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps({"bandit-only": {"members": ["bandit"], "warmup": 1},
                                    "boltzmann-only": {"members": ["boltzmann"], "warmup": 1}}))
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    common = ["--variants", str(variants), "--seeds", "3"]
    main(["run", "--family", f"x={SURFACES / 'cpu-tiny-queued-L128.json'}", "--references", "random", *common, "--out", str(a)])
    main(["run", "--family", f"y={SURFACES / 'cpu-tiny-queued-L512.json'}", "--references", "random", *common, "--out", str(b)])
    # a second part for one surface's extra label merges into it
    main(["run", "--family", f"y={SURFACES / 'cpu-tiny-queued-L512.json'}", "--references", "regression",
          "--variants", str(variants), "--seeds", "3", "--out", str(c)])
    capsys.readouterr()
    choice = tmp_path / "choice.json"
    main(["report", str(a), str(b), str(c), "--out", str(choice)])
    printed = capsys.readouterr().out
    record = json.loads(choice.read_text())
    parts = {p: json.loads(p.read_text()) for p in (a, b)}
    means = {fam: {v: parts[p]["summaries"][s]["strategies"][v]["p_score"]["mean"]
                   for v in ("portfolio[bandit-only]", "portfolio[boltzmann-only]")}
             for p, fam, s in ((a, "x", "cpu-tiny-queued-L128"), (b, "y", "cpu-tiny-queued-L512"))}
    # held out x: chosen on y alone, and the other way round
    assert record["held_out"]["x"]["chosen"] == max(means["y"], key=means["y"].get)
    assert record["held_out"]["y"]["chosen"] == max(means["x"], key=means["x"].get)
    assert "Held out: x" in printed and "regression" in printed
    # the choice says how far the other variant was, paired by seed on the training family
    held_x = record["held_out"]["x"]
    other = next(v for v in held_x["paired"] if v != held_x["chosen"])
    y = parts[b]["summaries"]["cpu-tiny-queued-L512"]["strategies"]
    paired = [o - c for o, c in zip(y[other]["p_score"]["per_seed"], y[held_x["chosen"]]["p_score"]["per_seed"])]
    d = held_x["paired"][other]
    assert d["best"] == held_x["chosen"] and d["diff"] == pytest.approx(sum(paired) / 3) and d["diff"] <= 0
    assert f"{d['diff']:+.4f} ± {d['se']:.4f}" in printed
    # a label left out of the parts takes no part in the choice and is not printed
    main(["report", str(a), str(b), str(c), "--exclude", "portfolio[bandit-only],regression", "--out", str(choice)])
    printed = capsys.readouterr().out
    assert {c["chosen"] for c in json.loads(choice.read_text())["held_out"].values()} == {"portfolio[boltzmann-only]"}
    assert "bandit-only" not in printed and "regression" not in printed


def test_a_variant_may_set_the_members_own_options():
    plain = {"members": ["bandit", "parzen"]}
    assert variant_options(plain) == {"portfolio": plain}
    full = {"portfolio": plain, "parzen": {"startup": 3}}
    portfolio = make_strategy("portfolio", xlstm_surface(1).space, seed=0, options=variant_options(full))
    assert portfolio.members["parzen"].startup == 3


def test_seeds_replayed_in_processes_give_the_same_scores(tmp_path):
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps({"wide": {"members": ["boltzmann", "bandit", "parzen"], "warmup": 2}}))
    scores = []
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}.json"
        main(["run", "--family", f"x={SURFACES / 'cpu-tiny-queued-L512.json'}", "--variants", str(variants),
              "--references", "random,tpe", "--seeds", "4", "--jobs", jobs, "--out", str(out)])
        strategies = json.loads(out.read_text())["summaries"]["cpu-tiny-queued-L512"]["strategies"]
        scores.append({label: s["p_score"]["per_seed"] for label, s in strategies.items()})
    assert scores[0] == scores[1]
    assert set(scores[0]) == {"portfolio[wide]", "random", "tpe"} and len(scores[0]["tpe"]) == 4


def test_an_unknown_reference_is_one_error_before_any_replay(tmp_path, capsys):
    variants = tmp_path / "variants.json"
    variants.write_text("{}")
    out = tmp_path / "part.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--family", f"x={SURFACES / 'cpu-tiny-queued-L128.json'}", "--variants", str(variants),
              "--references", "tpe,annealing", "--out", str(out)])
    assert exit_info.value.code == 2
    assert "unknown strategy annealing" in capsys.readouterr().err and not out.exists()


def test_a_label_that_ran_fewer_seeds_says_so_in_the_merged_table(tmp_path, capsys):
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps({"bandit-only": {"members": ["bandit"], "warmup": 1}}))
    none = tmp_path / "none.json"
    none.write_text("{}")
    parts = []
    for fam, surface in (("x", "cpu-tiny-queued-L128"), ("y", "cpu-tiny-queued-L512")):
        for seeds, refs, var in (("3", "random", none), ("5", "", variants)):
            parts.append(tmp_path / f"{fam}{seeds}.json")
            main(["run", "--family", f"{fam}={SURFACES / (surface + '.json')}", "--variants", str(var),
                  "--references", refs, "--seeds", seeds, "--out", str(parts[-1])])
    capsys.readouterr()
    main(["report", *map(str, parts)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| cpu-tiny-queued-L128 | 18 |")]
    assert rows and all("| 5 |" in row and "(3 seeds)" in row for row in rows)
    assert all(row.count("seeds)") == 1 for row in rows)  # the variant ran every seed of the row


def test_the_targets_table_checks_the_gap_to_each_best_and_the_floor():
    def summary(means):
        return {"strategies": {k: {"p_score": {"mean": m, "se": 0.01}} for k, m in means.items()}}

    summaries = {"a": summary({"portfolio[v]": 0.50, "parzen": 0.63, "random": 0.0, "kt:pso": 0.30}),
                 "b": summary({"portfolio[v]": 0.20, "parzen": 0.25, "kt:pso": 0.35})}
    table = targets_markdown(summaries, {"f": ["a", "b"]}, {"f": {"chosen": "portfolio[v]"}},
                             ["parzen", "random", "kt:pso"])
    row_a, row_b = table.splitlines()[2:]
    assert "parzen 0.63 ± 0.01" in row_a and "kt:pso 0.30 ± 0.01" in row_a
    assert row_a.endswith("| no (-0.130) | yes (+0.200) | yes |")
    assert row_b.endswith("| yes (-0.050) | no (-0.150) | n/a (none reaches 0.4) |")


def test_fewer_than_one_job_is_one_error(tmp_path, capsys):
    out = tmp_path / "part.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--family", f"x={SURFACES / 'cpu-tiny-queued-L128.json'}", "--variants", str(tmp_path / "v.json"),
              "--jobs", "0", "--out", str(out)])
    assert exit_info.value.code == 2
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err and not out.exists()
