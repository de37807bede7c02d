"""report.html in a real headless Chromium (Debian's ``chromium``), opened from a local file.

Checks what a reader would see: no console message (errors, warnings or logs: a clean page logs
nothing), every plot section rendered by plotly (its SVG is in the DOM), and a screenshot that is
not blank and shows coloured plot marks. CI installs the browser with ``apt-get install -y
chromium``; without it the tests skip and say so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import create_trial

from controller.export import write_export
from controller.planner.confirmation import ATTR_CONFIRM_OF, CONFIRM_KIND
from tests.report.png import read_png
from tests.storage.test_export import MULTI_SPEC, SINGLE_SPEC, build_study
from trial_worker.contract import ATTR_KIND

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed: run `apt-get install -y chromium` (as root)"
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=10000",  # lets plotly finish drawing before the DOM or picture is taken
]
CONSOLE = re.compile(r":CONSOLE(?:\(\d+\))?:?\d*\]\s*(?P<message>.*)")


def chromium(page: Path, *extra: str) -> tuple[str, list[str]]:
    """Open ``page`` from its file URL; returns stdout and the page's console messages."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="tunefleet-chromium-") as profile:
        result = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    console = [m.group("message") for m in map(CONSOLE.search, result.stderr.splitlines()) if m]
    return result.stdout, console


def plot_sections(dom: str) -> dict[str, str]:
    """Each plot section's key -> its rendered HTML (from the live DOM, after scripts ran)."""
    sections: dict[str, str] = {}
    for chunk in dom.split('<section class="plot"')[1:]:
        key = re.search(r'data-plot="([^"]+)"', chunk)
        assert key is not None
        sections[key.group(1)] = chunk.split("</section>")[0]
    return sections


def check_page(page: Path, expected: list[str], tmp_path: Path) -> None:
    dom, console = chromium(page, "--dump-dom")
    assert console == [], f"the page logged to the console: {console}"
    sections = plot_sections(dom)
    assert set(expected) <= set(sections), f"missing sections: {set(expected) - set(sections)}"
    for key in expected:
        html = sections[key]
        assert "data-plot-missing" not in html.split(">")[0], f"{key} was not drawn: {html[:300]}"
        assert 'class="main-svg"' in html, f"plotly did not render {key}"
    for key, html in sections.items():
        drawn = "data-plot-missing" not in html.split(">")[0]
        assert drawn == ('class="main-svg"' in html), f"{key}: drawn sections render, notes do not"

    shot = tmp_path / f"{page.stem}.png"
    _, console = chromium(
        page, "--window-size=1200,7000", "--force-device-scale-factor=0.2", f"--screenshot={shot}"
    )
    assert console == []
    rgb = read_png(shot)[..., :3].astype(int)
    ink = (rgb.min(axis=2) < 235).mean()  # anything that is not (near) white
    colour = ((rgb.max(axis=2) - rgb.min(axis=2)) > 60).mean()  # plot marks; text is grey
    assert ink > 0.05, f"the screenshot is nearly blank ({ink:.1%} non-white)"
    assert colour > 0.005, f"no plot colour on the screenshot ({colour:.2%})"


def test_the_console_check_catches_a_broken_page(tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefined_function();</script></body></html>")
    _, console = chromium(broken, "--dump-dom")
    assert any("undefined_function" in message for message in console)


def test_a_blank_screenshot_is_recognized(tmp_path: Path) -> None:
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>")
    shot = tmp_path / "blank.png"
    chromium(blank, "--window-size=400,300", f"--screenshot={shot}")
    rgb = read_png(shot)[..., :3].astype(int)
    assert (rgb.min(axis=2) < 235).mean() == 0.0
    assert np.unique(rgb.reshape(-1, 3), axis=0).shape[0] == 1


def test_single_objective_report_with_confirmation_renders(sqlite_url: str, tmp_path: Path) -> None:
    study = build_study(sqlite_url, "browser-single", SINGLE_SPEC, 20)
    best = study.best_trial
    for offset in range(3):  # three confirmation runs of the best configuration
        study.add_trial(
            create_trial(
                params=best.params,
                distributions=best.distributions,
                value=float(best.value or 0.0) + 0.01 * offset,
                user_attrs={ATTR_KIND: CONFIRM_KIND, ATTR_CONFIRM_OF: best.number},
            )
        )
    out = tmp_path / "single"
    write_export(sqlite_url, "browser-single", out)
    page = out / "report.html"
    assert "Confirmed configurations" in page.read_text()
    check_page(
        page,
        ["history-0", "importance", "parallel-0", "slice-0", "contour-0", "intermediate", "timeline"],
        tmp_path,
    )


def test_multi_objective_report_renders(sqlite_url: str, tmp_path: Path) -> None:
    build_study(sqlite_url, "browser-multi", MULTI_SPEC, 16)
    out = tmp_path / "multi"
    write_export(sqlite_url, "browser-multi", out)
    check_page(
        out / "report.html",
        [
            "history-0",
            "history-1",
            "importance",
            "parallel-0",
            "parallel-1",
            "pareto",
            "hypervolume",
            "timeline",
        ],
        tmp_path,
    )


def test_an_empty_study_report_opens_with_notes(sqlite_url: str, tmp_path: Path) -> None:
    optuna.create_study(study_name="browser-empty", storage=sqlite_url)
    out = tmp_path / "empty"
    write_export(sqlite_url, "browser-empty", out)
    dom, console = chromium(out / "report.html", "--dump-dom")
    assert console == []
    sections = plot_sections(dom)
    assert sections and all("data-plot-missing" in html.split(">")[0] for html in sections.values())
    assert "No search trial has completed yet" in dom
