import base64
import csv
import re
import shutil
import subprocess

import pytest

from mixmag.report.html import build_report
from mixmag.synth.embedding_cohort import write_embedding_cohort
from mixmag.train.finetune import TrainConfig, run_training

HOSTILE = 'P<b>&"x'


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    table = write_embedding_cohort(d, n_specimens=30, seed=5, signal=2.5)
    rows = list(csv.DictReader(open(table)))
    first_test = next(r["specimen"] for r in rows if r["split"] == "test")
    for r in rows:
        if r["specimen"] == first_test:
            r["specimen"] = HOSTILE
    with table.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    run_training(TrainConfig(cohort=str(table), stores=str(d / "stores"), out=str(d / "run"), bags="20x", epochs=3, batch_size=8,
                             lr=3e-3, bootstrap=100))
    return d / "run"


def test_report_is_self_contained_and_escaped(run_dir):
    path = build_report(run_dir, {"tile": 1.5, "embed": 12.0})
    text = path.read_text()
    assert "P&lt;b&gt;&amp;&quot;x" in text and HOSTILE not in text
    sources = re.findall(r"src='([^']*)'", text)
    assert len(sources) >= 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    for s in sources:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in text and "https://" not in text
    assert "ROC curves" in text and "95% CI" in text and "Stage timings" in text


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed here (Debian package 'chromium'); .ci/run installs it where it can")
    path = build_report(run_dir)
    shot = tmp_path / "shot.png"
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--window-size=1200,2400", f"--screenshot={shot}", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 10_000, result.stderr[-2000:]
    console_errors = [line for line in result.stderr.splitlines() if "CONSOLE" in line and ("error" in line.lower() or "Uncaught" in line)]
    assert not console_errors, console_errors
    import cv2

    picture = cv2.imread(str(shot))
    assert picture is not None and picture.std() > 10  # not a blank page
