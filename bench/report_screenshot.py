"""Does report.html render? Screenshot each given report with headless Chromium and say how much of the
page is drawn.

    python bench/report_screenshot.py REPORT.html [REPORT.html ...] [--out DIR] [--height 4000]

Chromium comes from the OS packages (`apt-get install -y chromium`); without it the script says so and
exits 2. Each screenshot is written as ``DIR/<report folder>_<name>.png`` (default DIR: beside the
report); look at them. Printed per report: the PNG path, its size and the share of non-white pixels
(a blank page, or one whose images failed to load, shows almost none).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clin_jepa.evaluation.screenshot import find_chromium, ink_share, screenshot  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--height", type=int, default=4000)
    args = p.parse_args()
    browser = find_chromium()
    if browser is None:
        print("no Chromium found: apt-get install -y chromium", file=sys.stderr)
        return 2
    for report in args.reports:
        out = (args.out or report.parent) / f"{report.parent.name}_{report.stem}.png"
        png = screenshot(browser, report, out, height=args.height)
        print(f"{report} -> {png} ({png.stat().st_size // 1024} KiB, {100 * ink_share(png):.1f} % non-white)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
