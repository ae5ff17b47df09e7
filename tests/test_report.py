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


def screenshot(html_path, tmp_path, width: int = 1400, height: int = 1800):
    """A PNG of the page as headless Chromium draws it, after plotly's scripts ran."""
    png = tmp_path / "report.png"
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'chromium-shot'}", "--virtual-time-budget=15000", "--hide-scrollbars",
         f"--window-size={width},{height}", f"--screenshot={png}", html_path.as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0 and png.exists(), result.stderr[-2000:]
    return png


def png_size(png) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


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
    assert "1 completed trial; importances are shown from 10 on" in page


def test_report_of_an_empty_store_is_an_error(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'e.db'}"
    optuna.create_study(study_name="not-a-tuning-study", storage=url)
    assert main(["report", "--storage", url, "--out", str(tmp_path / "r.html")]) == 2
    assert "no tuning studies" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_report_says_what_export_writes_and_labels_the_search_maximum(tmp_path):
    """The page as a browser shows it: the verdict per study in words, the search
    maximum marked unconfirmed, the exported config marked, and a drawn screenshot."""
    url = standard_store(tmp_path)
    out = tmp_path / "report.html"
    assert main(["report", "--storage", url, "--out", str(out)]) == 0
    dom = rendered_dom(out, tmp_path)
    export_table = dom[dom.index("<table id=\"export\""):dom.index("</table>")]
    rows = dict(re.findall(r"<tr><td>(tiny/cpu/queued/L\d+)</td>(.*?)</tr>", export_table))
    # L64's winner beat the baseline; L16's search maximum (trial 14) did not hold up.
    assert "<td>tuned (#14)</td>" in rows["tiny/cpu/queued/L64"]
    assert "<td>1,540.0</td><td>154.0</td>" in rows["tiny/cpu/queued/L64"]  # confirmed medians
    assert "<td>baseline (#0)</td>" in rows["tiny/cpu/queued/L16"]
    assert "<td>3.500 (#14)</td>" in rows["tiny/cpu/queued/L16"] and "search max (unconfirmed)" in export_table
    verdicts = dom[dom.index("<ul id=\"verdicts\">"):]
    assert "Trial 14 becomes the default" in verdicts and "The baseline stays the default" in verdicts
    # The history figure marks the maximum as unconfirmed and where export's choice sits.
    history = figure_divs(dom)[0]
    drawn = re.findall(r'class="annotation-text"[^>]*data-unformatted="([^"]+)"', history)
    assert sorted(drawn) == ["export: baseline stays", "export: confirmed winner",  # + the panel titles
                             "search max (unconfirmed)", "search max (unconfirmed)",
                             "tiny/cpu/queued/L16", "tiny/cpu/queued/L64"], drawn
    assert "importances are shown from" not in dom and "a rough hint below 30" in dom

    png = screenshot(out, tmp_path)
    assert png_size(png) == (1400, 1800)
    # A page that drew its table and plots compresses far worse than a blank one (~10 KB).
    assert png.stat().st_size > 100_000
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(png) as image:
        histogram = image.convert("L").crop((0, 0, 1400, 400)).histogram()
        dark = sum(histogram[:100])
    assert dark > 2000, "no text drawn at the top of the page"
