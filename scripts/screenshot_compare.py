"""Check in headless Chromium that a comparison page shows every study's curve.

    python scripts/screenshot_compare.py reports/compare [--png shot.png] [--min-pixels 40]

The page (``index.html`` of ``vae_study compare``) is shot twice at the same size, with
images and without them (``--blink-settings=imagesEnabled=false``; the figure's ``<img>``
has its width and height, so the layout is the same). A study is shown when the figure
adds at least ``--min-pixels`` pixels of its colour (the ``data-colour`` of its entry in
the page's list of studies) to the page as a browser draws it.

Exit status: 0 every study is shown; 1 one or more is not (one line each, then "N
problems"); 2 no headless browser, or no page.
"""

from __future__ import annotations

import argparse
import html.parser
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
WIDTH, HEIGHT = 1280, 9000  # tall enough for the tables above the figure and the figure
TOLERANCE = 10  # per channel: anti-aliasing and colour management move a colour a little


class _Studies(html.parser.HTMLParser):
    """(label, "#rrggbb") of each ``<span class="study" data-colour=...>`` in the page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []
        self._colour: str | None = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "span" and a.get("class") == "study" and a.get("data-colour"):
            self._colour, self._text = a["data-colour"], ""

    def handle_data(self, data):
        if self._colour is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "span" and self._colour is not None:
            self.found.append((self._text.strip().lstrip("\u25a0").strip(), self._colour))
            self._colour = None


def _browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _shoot(browser: str, page: Path, out: Path, *, images: bool) -> None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",  # root in a container has no user namespace for the sandbox
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--force-color-profile=srgb",
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{HEIGHT}",
            f"--screenshot={out}",
            *([] if images else ["--blink-settings=imagesEnabled=false"]),
            page.resolve().as_uri(),
        ]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if run.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{browser} could not shoot {page}: {run.stderr.strip()[-500:]}")


def _rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def count_added(with_images, without, colour: str) -> int:
    """Pixels of ``colour`` (within ``TOLERANCE``) in ``with_images`` that differ from
    ``without`` (PIL images of the same size): what the figure adds in that colour."""
    import numpy as np

    a = np.asarray(with_images.convert("RGB"), dtype=np.int16)
    b = np.asarray(without.convert("RGB"), dtype=np.int16)
    near = (np.abs(a - np.array(_rgb(colour), dtype=np.int16)) <= TOLERANCE).all(axis=2)
    added = (a != b).any(axis=2)
    return int((near & added).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", help="a compare output folder, or its index.html")
    parser.add_argument("--png", help="keep the screenshot (with images) here")
    parser.add_argument("--min-pixels", type=int, default=40, help="per study (default 40)")
    args = parser.parse_args(argv)
    page = Path(args.page)
    page = page / "index.html" if page.is_dir() else page
    if not page.is_file():
        print(f"screenshot_compare: no page at {page}", file=sys.stderr)
        return 2
    browser = _browser()
    if browser is None:
        print(f"screenshot_compare: no headless browser ({', '.join(BROWSERS)})", file=sys.stderr)
        return 2
    parsed = _Studies()
    parsed.feed(page.read_text(encoding="utf-8"))
    if not parsed.found:
        print(f"screenshot_compare: {page} lists no studies (not a comparison page?)")
        print("1 problems")
        return 1
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        shot, bare = Path(tmp) / "shot.png", Path(tmp) / "bare.png"
        _shoot(browser, page, shot, images=True)
        _shoot(browser, page, bare, images=False)
        if args.png:
            shutil.copyfile(shot, args.png)
        with Image.open(shot) as a, Image.open(bare) as b:
            counts = {label: count_added(a, b, colour) for label, colour in parsed.found}
    problems = 0
    for label, colour in parsed.found:
        shown = counts[label] >= args.min_pixels
        problems += not shown
        verdict = "shown" if shown else f"NOT SHOWN (fewer than {args.min_pixels})"
        print(f"{label} ({colour}): {counts[label]} pixels of its colour in the figure: {verdict}")
    if problems:
        print(f"{problems} problems")
        return 1
    print(f"every study's curve is shown ({len(parsed.found)} studies)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
