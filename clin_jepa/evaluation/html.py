"""``report.html``: a report's Markdown and its plots as one self-contained file any browser opens.

The Markdown goes through Python-Markdown (``tables`` extension); every plot is embedded as a base64
``data:`` URI, so the file can be mailed or copied alone. Links to the plot files in the Markdown
become links to the embedded figures.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping

import markdown as md

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f0f0f0; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _anchor(name: str) -> str:
    return "fig-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


def to_html(markdown_text: str, images: Mapping[str, bytes], title: str) -> str:
    """One HTML page: ``markdown_text`` rendered, then every PNG of ``images`` (file name -> bytes)."""
    body = md.markdown(markdown_text, extensions=["tables"], output_format="html")
    for name in images:
        body = body.replace(f'href="{name}"', f'href="#{_anchor(name)}"')
    figures = "".join(
        f'<figure id="{_anchor(name)}"><img alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>\n" for name, png in images.items())
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n{body}\n<h2>Plots</h2>\n{figures}</body></html>\n")
