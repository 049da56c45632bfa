"""The report's HTML page: sections with an introduction each, figures embedded as base64 PNG data URIs,
tables, and a table of contents. No JavaScript and no external resource, so the page opens from disk, offline,
years later."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from astrovader.analysis import figures as figs
from astrovader.data.outputs import write_csv

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;
padding:0 1.5em 3em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #333;padding-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #bbb}
figure{margin:1em 0;text-align:center}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.9em;color:#555;margin-top:.3em}
table.data{border-collapse:collapse;font-size:.85em;margin:.8em 0}
table.data th,table.data td{border:1px solid #ccc;padding:.2em .45em;text-align:right}
table.data th{overflow-wrap:anywhere;max-width:7.5em;vertical-align:bottom}
table.data th{background:#eee}table.data tr:nth-child(even) td{background:#fafafa}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.8em}
nav ul{font-size:.9em}nav>ul{columns:2;column-gap:2em}nav>ul>li{break-inside:avoid-column;margin-bottom:.3em}
.note{color:#555;font-size:.9em}.intro{background:#f4f7fb;border-left:4px solid #6a8caf;padding:.5em .9em;margin:.6em 0}
.banner{background:#fff4d6;border:1px solid #e0b84c;padding:.6em 1em;font-weight:600}
table.metrics td,table.metrics th{text-align:left}.flag{color:#a33;font-weight:600}.wide{overflow-x:auto}
dl.legend{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;font-size:.85em;color:#444}
dl.legend dt{font-family:monospace}dl.legend dd{margin:0}
"""


class Page:
    """Accumulates sections; every figure and table gets an anchor listed in the table of contents."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.sections: list[tuple[str, str, list[str]]] = []
        self.toc: list[tuple[str, str, list[tuple[str, str]]]] = []
        self._n = 0

    def section(self, sid: str, title: str, intro: str) -> None:
        """Start a section; ``intro`` (HTML) says in two lines what it shows and how to read it."""
        self.sections.append((sid, title, [f'<div class="intro">{intro}</div>']))
        self.toc.append((sid, title, []))

    def _anchor(self, title: str) -> str:
        self._n += 1
        aid = f"item{self._n}"
        self.toc[-1][2].append((aid, title))
        return aid

    def figure(self, path: Path, title: str, caption: str = "") -> None:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        rel = Path(path).relative_to(self.out_dir)
        links = " ".join(f'<a href="{html.escape(rel.with_suffix(ext).as_posix())}">{ext[1:].upper()}</a>'
                         for ext in (".png", ".pdf", ".svg") if (self.out_dir / rel.with_suffix(ext)).is_file())
        aid = self._anchor(title)
        self.sections[-1][2].append(
            f'<figure id="{aid}"><img src="data:image/png;base64,{data}" alt="{html.escape(title)}">'
            f"<figcaption><b>{html.escape(title)}.</b> {html.escape(caption)} {links}</figcaption></figure>")

    def table(self, df: pd.DataFrame, title: str, csv: Path | None = None, caption: str = "",
              legend: dict[str, str] | None = None) -> None:
        """A table (scrolling sideways when wider than the page) with its caption and, optionally, a legend of
        its columns."""
        aid = self._anchor(title)
        link = f' <a href="{html.escape(csv.relative_to(self.out_dir).as_posix())}">CSV</a>' if csv else ""
        keys = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in (legend or {}).items())
        self.sections[-1][2].append(
            f'<h3 id="{aid}">{html.escape(title)}</h3><p class="note">{html.escape(caption)}{link}</p>'
            '<div class="wide">'
            + df.to_html(index=False, classes="data", border=0, float_format=lambda v: f"{v:.3f}", na_rep="-")
            + "</div>" + (f'<dl class="legend">{keys}</dl>' if keys else ""))

    def raw(self, text: str) -> None:
        self.sections[-1][2].append(text)

    def render(self, title: str, header: str) -> str:
        toc = ["<nav><h2>Contents</h2><ul>"]
        for sid, stitle, items in self.toc:
            sub = "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in items)
            toc.append(f'<li><a href="#{sid}">{html.escape(stitle)}</a>{"<ul>" + sub + "</ul>" if sub else ""}</li>')
        toc.append("</ul></nav>")
        body = "".join(f'<section id="{sid}"><h2>{html.escape(t)}</h2>{"".join(parts)}</section>'
                       for sid, t, parts in self.sections)
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                '<link rel="icon" href="data:,">'  # no favicon request: the page makes no network access at all
                f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
                f"<h1>{html.escape(title)}</h1>{header}{''.join(toc)}{body}</body></html>\n")


def script_json(obj: object) -> str:
    """``obj`` as JSON that is safe inside an HTML ``<script>`` element: ``<``, ``>`` and ``&`` (which could close
    the element or open a comment) and the line separators U+2028/9 are written as ``\\u`` escapes, which JSON and
    JavaScript read back as the same characters."""
    import json

    text = json.dumps(obj)
    for ch in ("<", ">", "&", "\u2028", "\u2029"):
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return text


def write_report_table(df: pd.DataFrame, tables: Path, name: str, title: str,
                       png: bool = True) -> tuple[Path, Path | None]:
    """CSV + standalone HTML (+ PNG rendering) of one table."""
    csv = write_csv(df, tables / f"{name}.csv")
    (tables / f"{name}.html").write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h2>{html.escape(title)}</h2>"
        + df.to_html(index=False, classes="data", border=0, float_format=lambda v: f"{v:.3f}", na_rep="-")
        + "</body></html>\n")
    return csv, (figs.plot_table(df, tables.parent / "figures" / f"{name}_table.png", title) if png else None)
