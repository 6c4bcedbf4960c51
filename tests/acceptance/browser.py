"""Read a report as a user does: load it in headless Chromium (Debian's ``chromium``) at a
given window size and report where the headline elements sit and whether every image loaded.

A copy of the page gets a small script that runs on ``load`` and writes its findings as JSON
into a ``<pre id="browser-check">``; ``chromium --dump-dom`` prints the DOM after the page
has loaded (with a virtual-time budget for the inline images), and the JSON is read back.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  function box(selector) {
    var e = document.querySelector(selector);
    if (!e) return null;
    var b = e.getBoundingClientRect();
    return {top: b.top, bottom: b.bottom, left: b.left, right: b.right,
            text: e.textContent.slice(0, 300)};
  }
  var images = Array.prototype.slice.call(document.images);
  var found = {
    viewport: [window.innerWidth, window.innerHeight],
    page_height: document.documentElement.scrollHeight,
    page_width: document.documentElement.scrollWidth,
    bottom_line: box('.bottom-line'),
    gate_table: box('#gate-table'),
    claims_table: box('#claims-table'),
    images: images.length,
    broken_images: images.filter(function (i) {
      return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.alt; })
  };
  var pre = document.createElement('pre');
  pre.id = 'browser-check';
  pre.textContent = JSON.stringify(found);
  document.body.appendChild(pre);
});
</script>"""


def find_chromium() -> str | None:
    """The path of a Chromium-family browser on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def read_in_browser(report: Path, work: Path, *, width: int = 1280, height: int = 1000,
                    chromium: str | None = None, timeout: int = 120) -> dict:
    """Load ``report`` in headless Chromium at ``width`` x ``height`` and return what the
    check script found (boxes in CSS pixels from the top of the first screen)."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium on PATH")
    page = report.read_text(encoding="utf-8")
    copy = work / "report_checked.html"
    copy.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    shot = work / "first_screen.png"
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size={width},{height}", "--virtual-time-budget=20000",
            f"--user-data-dir={work / 'chromium-profile'}"]
    done = subprocess.run(base + ["--dump-dom", copy.as_uri()], capture_output=True,
                          text=True, timeout=timeout)
    match = re.search(r'<pre id="browser-check">(.*?)</pre>', done.stdout, re.S)
    if match is None:
        raise AssertionError(f"the check script did not run (exit {done.returncode}): "
                             f"{done.stderr[-1500:]}")
    # a screenshot of the first screen beside it, for a person to look at
    subprocess.run(base + [f"--screenshot={shot}", report.as_uri()], capture_output=True,
                   timeout=timeout)
    text = (match.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
            .replace("&amp;", "&"))
    return json.loads(text)
