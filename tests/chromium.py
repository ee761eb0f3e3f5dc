"""Open a page in headless Chromium and read back what it rendered (as a user's browser would
show it): the images that loaded, the text of the elements asked for, any script error."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

PROBE_HEAD = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
const origError = console.error;
console.error = (...a) => { window.__errors.push(a.join(' ')); origError(...a); };
</script>"""
PROBE_BODY = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images).map(i => ({
    alt: i.alt, ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth, h: i.naturalHeight}));
  const text = {};
  for (const sel of SELECTORS) {
    text[sel] = Array.from(document.querySelectorAll(sel)).map(e => e.innerText);
  }
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify({images: imgs, text: text, errors: window.__errors});
  document.body.appendChild(pre);
});
</script>"""
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--virtual-time-budget=5000"]


def require_chromium() -> str:
    """The browser. Without one the test is skipped on a laptop and fails in CI, where
    dev/setup_host.sh installs it: a missing browser must not pass as a rendered page."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    reason = "chromium is not installed (Debian: apt-get install -y chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def render(browser: str, page: Path, selectors: list[str], work: Path) -> dict[str, Any]:
    """{images: [{alt, ok, w, h}], text: {selector: [innerText...]}, errors: [...]} of the
    page, read from the DOM Chromium dumps after load (a probed copy of the page in work)."""
    probed = work / f"probed-{page.name}"
    body = PROBE_BODY.replace("SELECTORS", json.dumps(selectors))
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE_HEAD, 1)
                      .replace("</body>", body + "</body>", 1))
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                              probed.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert match, (dom.stdout[-2000:], dom.stderr[-2000:])
    return json.loads(html.unescape(match.group(1)))


def screenshot(browser: str, page: Path, png: Path, size: str = "1000,1400") -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                        f"--screenshot={png}", page.as_uri()], capture_output=True,
                       timeout=120, cwd=png.parent, check=True)
