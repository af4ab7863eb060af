"""The report as documents: a self-contained ``index.html`` and a ``README.md``.

Both are rendered from one :class:`Document` (title, facts, findings, figures, tables, notes), so
they hold the same content. The HTML embeds its images as ``data:`` URIs and its style sheet
inline: it needs no network and no other file, opens on a laptop and prints (print CSS: A4,
no navigation, figures and table rows kept whole). The Markdown links the PNG files.

>>> import pandas as pd
>>> t = Table("t", "A table", "Its caption.", pd.DataFrame({"x": [1]}),
...           pd.DataFrame({"optimizer": ["sgdm"], "online accuracy": ["0.8 [0.7, 0.9]"]}))
>>> doc = Document("Report: demo", facts=[("runs", "2 ok")], findings=["**sgdm** wins."],
...                tables=[t])
>>> print(markdown_table(t.display))
| optimizer | online accuracy |
| :-- | --: |
| sgdm | 0.8 [0.7, 0.9] |
>>> "<strong>sgdm</strong> wins." in render_html(doc)
True
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_INTERVAL = re.compile(r"^(?P<m>\S+) \[(?P<ci>[^\]]+)\](?P<rest>.*)$")
_NUMERIC = re.compile(r"^([+−-]?(\d|∞)|—$|never$|undefined\*?$)")


@dataclass
class Table:
    """One table of the report: numbers for CSV, formatted text for Markdown and HTML."""

    name: str
    title: str
    caption: str
    data: pd.DataFrame
    display: pd.DataFrame

    def __len__(self) -> int:
        return len(self.data)


@dataclass
class FigureFile:
    """A figure written to disk: file stem, title, caption, the PNG bytes and its size in
    CSS pixels (the figure's size in inches × 96)."""

    name: str
    title: str
    caption: str
    png: bytes
    width: int
    height: int
    formats: Sequence[str] = ("png", "svg")


@dataclass
class Document:
    """Everything a report shows, in order."""

    title: str
    subtitle: str = ""
    facts: list[tuple[str, str]] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[FigureFile] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    files: list[tuple[str, str]] = field(default_factory=list)
    #: tables shown before the figures (the rest follow them)
    lead_tables: int = 1


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


# ----------------------------------------------------------------------------------------------
# Markdown


def _md_cell(value: object) -> str:
    text = "" if value is None or (isinstance(value, float) and value != value) else str(value)
    text = " ".join(text.split())
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def _numeric_columns(df: pd.DataFrame) -> list[bool]:
    out = []
    for c in df.columns:
        cells = [str(x) for x in df[c].tolist() if str(x) not in ("", "—")]
        out.append(bool(cells) and sum(bool(_NUMERIC.match(x)) for x in cells) > len(cells) / 2)
    return out


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table (GitHub-flavoured Markdown); numeric columns right-aligned."""
    if df.empty:
        return "_(no rows)_"
    num = _numeric_columns(df)
    head = "| " + " | ".join(_md_cell(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("--:" if n else ":--" for n in num) + " |"
    body = ["| " + " | ".join(_md_cell(x) for x in row) + " |"
            for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def render_markdown(doc: Document, figure_dir: str = "figures") -> str:
    """The README.md text: the same sections as the HTML, images linked from ``figure_dir``."""
    out = [f"# {doc.title}", ""]
    if doc.subtitle:
        out += [doc.subtitle, ""]
    if doc.facts:
        out += [f"- **{k}**: {v}" for k, v in doc.facts] + [""]
    out += ["Open `index.html` for the self-contained version of this report (images embedded).",
            ""]
    if doc.findings:
        out += ["## Findings", ""] + [f"- {f}" for f in doc.findings] + [""]

    def table(t: Table) -> list[str]:
        return [f"## {t.title}", "", markdown_table(t.display), "", f"_{t.caption}_", "",
                f"Numbers: [`tables/{t.name}.csv`](tables/{t.name}.csv)", ""]

    for t in doc.tables[:doc.lead_tables]:
        out += table(t)
    if doc.figures:
        out += ["## Figures", ""]
        for f in doc.figures:
            links = ", ".join(f"[{fmt.upper()}]({figure_dir}/{f.name}.{fmt})" for fmt in f.formats)
            out += [f"### {f.title}", "", f"![{f.title}]({figure_dir}/{f.name}.png)", "",
                    f"{f.caption} ({links})", ""]
    for t in doc.tables[doc.lead_tables:]:
        out += table(t)
    for title, text in doc.notes:
        out += [f"## {title}", "", text, ""]
    if doc.files:
        out += ["## Files", ""] + [f"- `{name}`: {what}" for name, what in doc.files] + [""]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------
# HTML


CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; color: #1b1b1b; background: #fff; margin: 0 auto; max-width: 1320px;
       padding: 1.5rem 2rem 3rem; }
h1 { font-size: 1.65rem; margin: 0 0 .25rem; }
h2 { font-size: 1.25rem; margin: 2.2rem 0 .6rem; padding-bottom: .2rem;
     border-bottom: 1px solid #d9d9d9; }
h3 { font-size: 1.05rem; margin: 1.6rem 0 .4rem; }
.subtitle { color: #444; margin: 0 0 1rem; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem;
           margin: .8rem 0; font-size: .92rem; }
dl.facts dt { font-weight: 600; color: #333; }
dl.facts dd { margin: 0; }
nav.toc { font-size: .9rem; margin: 1rem 0; padding: .5rem .8rem; background: #f6f7f9;
          border-radius: 6px; display: flex; flex-wrap: wrap; gap: .25rem 1.1rem; }
nav.toc a { color: #0b5cad; text-decoration: none; white-space: nowrap; }
ul.findings li { margin: .35rem 0; }
figure { margin: .6rem 0 1.8rem; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption, p.caption { font-size: .86rem; color: #444; max-width: 62rem; margin-top: .4rem; }
.table-wrap { overflow-x: auto; margin: .4rem 0 0; }
table { border-collapse: collapse; font-size: .8rem; font-variant-numeric: tabular-nums; }
th, td { padding: .28rem .55rem; border-bottom: 1px solid #e4e4e4; text-align: left;
         vertical-align: top; }
th { background: #f1f3f5; font-weight: 600; position: sticky; top: 0; }
td.num { text-align: right; white-space: nowrap; }
th.num { text-align: right; }
td.short { white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
.ci { color: #666; font-size: .9em; }
.files code, code { font-size: .88em; background: #f3f3f3; padding: 0 .2em; border-radius: 3px; }
footer { margin-top: 3rem; font-size: .8rem; color: #777; }
@media print {
  @page { size: A4; margin: 12mm; }
  body { max-width: none; padding: 0; font-size: 10pt; }
  nav.toc { display: none; }
  h2, h3 { break-after: avoid; }
  figure, tr, dl.facts { break-inside: avoid; }
  .table-wrap { overflow: visible; }
  table { font-size: 7pt; }
  th { position: static; }
  a { color: inherit; text-decoration: none; }
}
"""


def _inline(text: str) -> str:
    """Escape, then ``**bold**`` -> <strong> and ``code`` -> <code>."""
    out = _BOLD.sub(r"<strong>\1</strong>", html.escape(text, quote=False))
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def _html_cell(value: object) -> str:
    text = "" if value is None or (isinstance(value, float) and value != value) else str(value)
    m = _INTERVAL.match(text)
    if m:
        return (f"{html.escape(m['m'])}<br><span class=\"ci\">[{html.escape(m['ci'])}]</span>"
                f"{html.escape(m['rest'])}")
    return html.escape(text)


def html_table(df: pd.DataFrame) -> str:
    """An HTML table; intervals on a second line, numeric columns right-aligned."""
    if df.empty:
        return "<p><em>(no rows)</em></p>"
    num = _numeric_columns(df)
    head = "".join(('<th scope="col" class="num">' if n else '<th scope="col">')
                   + f"{html.escape(str(c))}</th>" for c, n in zip(df.columns, num))
    rows = []
    for row in df.itertuples(index=False):
        cells = "".join(f"<td class=\"num\">{_html_cell(x)}</td>" if n else
                        f"<td class=\"short\">{_html_cell(x)}</td>" if len(str(x)) <= 24 else
                        f"<td>{_html_cell(x)}</td>" for x, n in zip(row, num))
        rows.append(f"<tr>{cells}</tr>")
    return (f"<div class=\"table-wrap\"><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _html_figure(f: FigureFile) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    links = ", ".join(f"<a href=\"figures/{f.name}.{fmt}\">{fmt.upper()}</a>" for fmt in f.formats)
    return (f"<figure id=\"fig-{f.name}\"><img src=\"data:image/png;base64,{data}\" "
            f"width=\"{f.width}\" height=\"{f.height}\" alt=\"{html.escape(f.title)}\">"
            f"<figcaption>{_inline(f.caption)} <span class=\"files\">(files: {links})</span>"
            "</figcaption></figure>")


def render_html(doc: Document, footer: str = "") -> str:
    """The self-contained index.html text."""
    sections: list[tuple[str, str]] = []  # (title, html)
    if doc.findings:
        items = "".join(f"<li>{_inline(f)}</li>" for f in doc.findings)
        sections.append(("Findings", f"<ul class=\"findings\">{items}</ul>"))

    def table(t: Table) -> tuple[str, str]:
        return (t.title, html_table(t.display) + f"<p class=\"caption\">{_inline(t.caption)} "
                f"Numbers: <a href=\"tables/{t.name}.csv\"><code>tables/{t.name}.csv</code></a>"
                "</p>")

    sections += [table(t) for t in doc.tables[:doc.lead_tables]]
    if doc.figures:
        body = "".join(f"<h3 id=\"{_anchor(f.title)}\">{html.escape(f.title)}</h3>"
                       + _html_figure(f) for f in doc.figures)
        sections.append(("Figures", body))
    sections += [table(t) for t in doc.tables[doc.lead_tables:]]
    sections += [(title, f"<p>{_inline(text)}</p>") for title, text in doc.notes]
    if doc.files:
        items = "".join(f"<li><code>{html.escape(n)}</code>: {_inline(w)}</li>"
                        for n, w in doc.files)
        sections.append(("Files", f"<ul class=\"files\">{items}</ul>"))
    toc = "".join(f"<a href=\"#{_anchor(t)}\">{html.escape(t)}</a>" for t, _ in sections)
    facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{_inline(v)}</dd>" for k, v in doc.facts)
    body = "".join(f"<section><h2 id=\"{_anchor(t)}\">{html.escape(t)}</h2>{h}</section>"
                   for t, h in sections)
    sub = f"<p class=\"subtitle\">{_inline(doc.subtitle)}</p>" if doc.subtitle else ""
    foot = f"<footer>{_inline(footer)}</footer>" if footer else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{html.escape(doc.title)}</h1>{sub}"
            f"<dl class=\"facts\">{facts}</dl></header>"
            f"<nav class=\"toc\">{toc}</nav><main>{body}</main>{foot}</body></html>\n")
