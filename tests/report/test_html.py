"""The report as a user sees it: self-contained HTML with non-blank plots, rendered in a real
headless Chromium without errors (skipped only where no Chromium can be found)."""

import base64
import io
import re
import shutil
import subprocess

import pytest
import torch
from torch import nn

import lowbit
from lowbit.report.analysis import analyze
from lowbit.report.html import write_report
from lowbit.search.mixed import search

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 10))
    batches = [torch.randn(8, 128) for _ in range(2)]
    a = analyze(model, lowbit.recipe_from_flags(quantize_all=True, quant_bits=4), batches,
                n_probes=1)
    a.search = search(model, ["w4a16-g128", "w8a16"], "0.25x", batches).to_dict()
    out = tmp_path_factory.mktemp("report")
    return write_report(a, out), a


def _non_blank(png: bytes) -> bool:
    img = Image.open(io.BytesIO(png)).convert("L")
    lo, hi = img.getextrema()
    return hi - lo > 100 and len(img.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 8


def test_files_and_inline_images(report):
    paths, _ = report
    assert {"json", "sqnr", "sensitivity", "histograms", "pareto", "html"} <= set(paths)
    page = paths["html"].read_text()
    assert not re.search(r"(src|href)=\"(https?:|//|file:)", page)  # nothing fetched
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4
    assert all(_non_blank(base64.b64decode(b)) for b in images)
    for key in ("sqnr", "sensitivity", "histograms", "pareto"):
        assert _non_blank(paths[key].read_bytes())


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_renders_in_headless_chromium(report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium here (.ci/run installs Debian's chromium package)")
    paths, analysis = report
    url = paths["html"].resolve().as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-images-loaded="4/4"' in dom.stdout  # every plot decoded in the browser
    assert analysis.worst_layer() in dom.stdout
    for marker in ("Uncaught", "Failed to load resource", "ERR_"):
        assert marker not in dom.stderr
    shot = tmp_path / "shot.png"
    run = subprocess.run(flags + ["--window-size=1200,2400", f"--screenshot={shot}", url],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2400)
    colours = img.resize((300, 600)).getcolors(maxcolors=100000)
    assert colours is not None and len(colours) > 50  # plots, not a blank or error page
