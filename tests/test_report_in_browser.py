"""The report step's page as a reader sees it: opened in headless Chromium, no console error, every image loaded.

Needs Chromium on PATH (Debian: `apt-get install -y chromium`); skipped with that hint otherwise.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from vlv.testing.builders import published_outputs
from vlv.testing.headless_browser import INSTALL_HINT, check_html_file, find_browser

needs_chromium = pytest.mark.skipif(find_browser() is None, reason=f"no headless Chromium: {INSTALL_HINT}")

BROKEN_PAGE = """<!doctype html><html><head><title>broken</title></head><body>
<img alt="missing file" src="nothere.png"><img alt="corrupt data" src="data:image/png;base64,aGVsbG8=">
<img alt="fine" src="data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7">
<script>console.error("boom", 42); notDefinedAnywhere();</script></body></html>"""


@needs_chromium
def test_the_checker_sees_console_errors_exceptions_failed_loads_and_broken_images(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(BROKEN_PAGE, encoding="utf-8")
    check = check_html_file(page)
    assert check.title == "broken"
    assert [i.alt for i in check.broken_images] == ["missing file", "corrupt data"]
    assert [(i.alt, i.width, i.height) for i in check.images if i.ok] == [("fine", 1, 1)]
    assert "console.error: boom 42" in check.errors  # the three kinds arrive in no fixed order
    assert any(e.startswith("uncaught exception: ReferenceError: notDefinedAnywhere") for e in check.errors)
    assert any("ERR_FILE_NOT_FOUND" in e and e.endswith("nothere.png") for e in check.errors), check.errors


@pytest.mark.slow
@needs_chromium
def test_the_tiny_runs_report_renders_without_errors_and_with_every_image(tiny_store, tmp_path):
    report = published_outputs(tiny_store, ["report"])["report"] / "report.html"
    check = check_html_file(report)
    assert check.title == "VLV pipeline report"
    assert check.errors == []
    assert len(check.images) >= 8 and check.broken_images == [], check.broken_images
    alts = {image.alt for image in check.images}
    assert {"data funnel", "train_stage1 training curve", "train_stage2 training curve"} <= alts
    shot = Image.open(io.BytesIO(check.screenshot_png))
    (tmp_path / "report.png").write_bytes(check.screenshot_png)
    assert shot.width >= 1000 and shot.height > 3000  # the whole page, not one screen
    assert len(set(shot.convert("L").resize((64, 256)).getdata())) > 8  # drawn, not a blank page
