"""The self-contained HTML pages (the sweep report, the analyses): one page shell and PNGs
embedded inline, so a page is a single file that can be mailed or archived."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from tomsparse.files import atomic_write_text

PAGE_CSS = """body{font-family:sans-serif;max-width:1140px;margin:1.2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:0.4em 0}td,th{border:1px solid #ccc;padding:3px 6px}
table.num td{white-space:nowrap}th{background:#f3f3f3}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.bottom-line{font-size:1.15em;background:#fff8e1;border-left:4px solid #f0a500;padding:0.6em 0.8em}
.warning{background:#fdecea;border-left:4px solid #d62728;padding:0.5em 0.8em}
.caption,.run-summary{font-size:13px;color:#444}nav ol{font-size:13px;columns:2}
details{margin:0.5em 0}summary{cursor:pointer;color:#0645ad}
img{max-width:100%;margin:0.5em 0}pre{background:#f6f6f6;padding:1em;font-size:11px;overflow:auto}"""


def embed_png(path: str | Path) -> str:
    """An ``<img>`` holding the PNG at ``path`` as a data URL."""
    path = Path(path)
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def page(title: str, body: str) -> str:
    """A whole HTML document: ``title`` (plain text) and ``body`` (HTML) in the shared shell."""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}'
            f"</title>\n<style>{PAGE_CSS}</style>\n</head><body>\n{body}\n</body></html>\n")


def write_page(path: str | Path, title: str, body: str) -> Path:
    """Write ``page(title, body)`` to ``path`` atomically."""
    return atomic_write_text(path, page(title, body))
