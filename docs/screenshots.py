"""Screenshots of the built site in headless Chromium, and a check of what they show.

Build the site, then run this script (Chromium from the distribution, e.g.
``apt-get install chromium``; no network is used):

    sphinx-build -W -b html docs docs/_build/html
    python docs/screenshots.py

For the home page, an API page and a notebook page it

1. loads the page in headless Chromium and dumps the DOM after the scripts
   ran, and fails unless MathJax typeset the page's formulas (``mjx-container``
   elements, no raw ``\\(`` left) and every image on the notebook page is
   there;
2. writes a PNG of the page to ``docs/_build/screenshots/`` to look at.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
# page name: (path in the site, window height in pixels: down to its first figure)
PAGES = {
    "home": ("index.html", 1400),
    "api": ("api/_autosummary/lyapopt.lyapunov_guard.html", 1400),
    "notebook": ("notebooks/02_superlevel_sets.html", 4400),
}


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("no Chromium found: apt-get install chromium")


def run(browser: str, *args: str) -> str:
    flags = [
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--hide-scrollbars",
        "--allow-file-access-from-files",  # MathJax loads its fonts via file://
        "--virtual-time-budget=20000",  # let MathJax finish before the capture
    ]
    done = subprocess.run(
        [browser, *flags, *args], capture_output=True, text=True, timeout=120
    )
    if done.returncode:
        sys.exit(f"{browser} failed: {done.stderr[-2000:]}")
    return done.stdout


def check(name: str, page: Path, dom: str) -> list[str]:
    """What is missing from a rendered page."""
    problems = []
    if name in ("home", "api") and "<mjx-container" not in dom:
        problems.append("no formula typeset by MathJax")
    if re.search(r"\\\(|\\\[", re.sub(r"<script.*?</script>", "", dom, flags=re.S)):
        problems.append("raw TeX left on the page")
    if name == "notebook":
        images = re.findall(r'<img [^>]*src="([^"]+)"', dom)
        if not images:
            problems.append("no image")
        for src in images:
            if not src.startswith("data:") and not (page.parent / src).is_file():
                problems.append(f"missing image {src}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=DOCS / "_build" / "html")
    parser.add_argument("--out", type=Path, default=DOCS / "_build" / "screenshots")
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args()
    browser = chromium()
    args.out.mkdir(parents=True, exist_ok=True)
    failures = []
    for name, (rel, height) in PAGES.items():
        page = args.html / rel
        if not page.is_file():
            sys.exit(f"{page} is missing: build the site first")
        dom = run(browser, "--dump-dom", page.as_uri())
        problems = check(name, page, dom)
        png = args.out / f"{name}.png"
        run(
            browser,
            f"--screenshot={png}",
            f"--window-size={args.width},{height}",
            page.as_uri(),
        )
        formulas = dom.count("<mjx-container")
        print(f"{name}: {png} ({formulas} formulas typeset) {problems or 'ok'}")
        failures += [f"{name}: {p}" for p in problems]
    if failures:
        sys.exit("\n".join(failures))


if __name__ == "__main__":
    main()
