"""`autotune report`: one self-contained HTML file whose figures render in a browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import optuna
import pytest

from autotune.cli import main
from outputs_fixtures import BASELINE, add_study, make_trial, standard_store

optuna.logging.set_verbosity(optuna.logging.WARNING)


def chromium() -> str:
    """The headless browser; in CI its absence is a failure, not a skip."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    message = "chromium is not installed: apt-get update && apt-get install -y chromium"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def rendered_dom(html_path, tmp_path) -> str:
    """The DOM after plotly's scripts ran (virtual time lets them finish)."""
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=15000",
         "--dump-dom", html_path.as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def figure_divs(dom: str) -> list[str]:
    """The inner HTML of each figure's div, split at the next figure."""
    starts = [m.start() for m in re.finditer(r'<div id="[^"]+" class="plotly-graph-div', dom)]
    return [dom[a:b] for a, b in zip(starts, starts[1:] + [len(dom)])]


def test_report_is_self_contained_and_every_figure_renders(tmp_path, capsys):
    url = standard_store(tmp_path)
    out = tmp_path / "report.html"
    assert main(["report", "--storage", url, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    page = out.read_text()
    # Offline machines: no script or stylesheet is fetched from anywhere.
    assert not re.search(r'<script[^>]+src=|<link[^>]+href="http', page)
    assert "plotly.js v" in page or "plotly.js" in page.lower()
    titles = re.findall(r"<h2>([^<]+)</h2>", page)
    assert titles == [
        "Optimisation history", "Best so far", "Strategy shares",
        "Parallel coordinates: tiny/cpu/queued/L16", "Parallel coordinates: tiny/cpu/queued/L64",
        "Parameter importances", "Throughput against context length",
    ]

    dom = rendered_dom(out, tmp_path)
    figures = figure_divs(dom)
    assert len(figures) == len(titles)
    for title, fig in zip(titles, figures):
        # plotly adds js-plotly-plot and draws an SVG only when the figure rendered.
        assert "js-plotly-plot" in fig[:300], f"{title} did not render"
        assert 'class="main-svg"' in fig, f"{title} has no SVG"
    history, best, shares, par16, par64, importance, throughput = figures
    # 14 completed trials per study, each a marker; legend shows every strategy.
    assert len(re.findall(r'class="point"', history)) >= 28
    for strategy in ("baseline", "genetic", "bandit"):
        assert f">{strategy}<" in history
    assert 'class="parcoords"' in par16 and 'class="parcoords"' in par64
    assert ">chunk_size<" in par64 and ">score<" in par64
    assert len(re.findall(r'class="trace bars"', importance)) == 2 and ">workers<" in importance
    assert len(re.findall(r'class="point"', throughput)) >= 8  # 2 contexts x 2 lines x 2 panels
    assert len(re.findall(r'class="js-fill"', shares)) >= 5  # one filled area per strategy


def test_report_with_too_few_trials_explains_missing_importances(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    add_study(storage, "tiny/cpu/queued/L32", [make_trial(BASELINE, 3.0, strategy="baseline", baseline=True)])
    out = tmp_path / "r.html"
    assert main(["report", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--out", str(out)]) == 0
    page = out.read_text()
    assert "1 completed trials; importances need at least 3" in page


def test_report_of_an_empty_store_is_an_error(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'e.db'}"
    optuna.create_study(study_name="not-a-tuning-study", storage=url)
    assert main(["report", "--storage", url, "--out", str(tmp_path / "r.html")]) == 2
    assert "no tuning studies" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
