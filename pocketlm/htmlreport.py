"""One self-contained HTML page from report sections written in a small Markdown subset.

Used by `pocketlm demo` and `pocketlm fit` beside their report.md. Every piece of text is HTML-escaped
(section text may quote model output, file names or errors); figures are read from disk and embedded as
data URIs; the page's Content-Security-Policy forbids any network request. Tables sort by a click on
their header and scroll sideways on a phone.

The subset: `#` headings, paragraphs, `-`/`1.` lists, `>` quotes, fenced code, pipe tables, and inline
`code`, **bold**, *italic*, [links](url) and ![figures](path).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Iterable

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
        ".gif": "image/gif", ".webp": "image/webp"}
INLINE = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)|`([^`]+)`|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*")

STYLE = """
body{font:16px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:60rem;
padding:0 1rem 3rem;color:#1d2430;background:#fff}
h1{font-size:1.6rem;margin:1.2rem 0 .4rem}h2{font-size:1.3rem;border-bottom:1px solid #dde;margin-top:2rem}
nav ol{padding-left:1.4rem;columns:2 14rem}
.table{overflow-x:auto;margin:.6rem 0}table{border-collapse:collapse;font-size:.9rem;min-width:50%}
th,td{border:1px solid #d6dae2;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f1f3f7;cursor:pointer;white-space:nowrap}th.sorted-asc:after{content:" \\25B2"}
th.sorted-desc:after{content:" \\25BC"}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:.6rem 0}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;font-size:.85rem}code{background:#f3f4f6;padding:0 .2rem}
blockquote{border-left:4px solid #c9cfda;margin:.5rem 0;padding:.1rem .8rem;color:#444}
.missing{color:#a00;font-weight:bold}.seconds{color:#667;font-size:.85rem;font-weight:normal}
"""

SORT_SCRIPT = """
document.querySelectorAll('table').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
    var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows),asc=!th.classList.contains('sorted-asc');
    t.querySelectorAll('th').forEach(function(h){h.classList.remove('sorted-asc','sorted-desc')});
    th.classList.add(asc?'sorted-asc':'sorted-desc');
    function key(r){var s=r.cells[i]?r.cells[i].textContent.trim():'';var n=parseFloat(s.replace(/[,%x]/g,''));
      return isNaN(n)?s.toLowerCase():n}
    rows.sort(function(a,b){var x=key(a),y=key(b);if(typeof x!==typeof y){x=String(x);y=String(y)}
      return (x<y?-1:x>y?1:0)*(asc?1:-1)});
    rows.forEach(function(r){body.appendChild(r)});});});});
"""


def _image(alt: str, target: str, base: Path) -> str:
    path = (base / target) if not Path(target).is_absolute() else Path(target)
    mime = MIME.get(path.suffix.lower())
    if "://" in target or mime is None or not path.is_file():
        return f'<span class="missing">figure missing: {html.escape(target)}</span>'
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{data}">'


def inline(text: str, base: Path) -> str:
    """Escape `text` and render its inline markup."""
    out, pos = [], 0
    for m in INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        bang, label, target, code, bold, italic = m.groups()
        if target is not None and bang:
            out.append(_image(label, target, base))
        elif target is not None:
            safe = target if re.match(r"^(https?://|#|[\w./-]+$)", target) else "#"
            out.append(f'<a href="{html.escape(safe)}">{html.escape(label)}</a>')
        elif code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            out.append(f"<strong>{inline(bold, base)}</strong>")
        else:
            out.append(f"<em>{inline(italic, base)}</em>")
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: list[str], base: Path) -> str:
    head, rows = _cells(lines[0]), [_cells(r) for r in lines[2:]]
    num = re.compile(r"^[-+]?[\d,.]+\s*(%|x|MB|ms|s)?$")

    def td(c: str) -> str:
        cls = ' class="num"' if num.match(c) else ""
        return f"<td{cls}>{inline(c, base)}</td>"

    body = "".join("<tr>" + "".join(td(c) for c in r) + "</tr>" for r in rows)
    return ('<div class="table"><table><thead><tr>' + "".join(f"<th>{inline(h, base)}</th>" for h in head)
            + f"</tr></thead><tbody>{body}</tbody></table></div>")


def markdown_to_html(text: str, base: Path) -> str:
    """The subset above as HTML; anything else is an escaped paragraph."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        s = line.strip()
        if not s:
            i += 1
        elif s.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append("<pre><code>" + html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
        elif m := re.match(r"^(#{1,6})\s+(.*)$", s):
            level = min(len(m.group(1)) + 2, 6)  # section titles are h2
            out.append(f"<h{level}>{inline(m.group(2), base)}</h{level}>")
            i += 1
        elif s.startswith("|") and i + 1 < len(lines) and re.match(r"^\|?\s*:?-{3,}", lines[i + 1].strip()):
            j = i + 2
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            out.append(_table(lines[i:j], base))
            i = j
        elif re.match(r"^([-*]|\d+\.)\s+", s):
            tag = "ol" if s[0].isdigit() else "ul"
            items = []
            while i < len(lines) and re.match(r"^([-*]|\d+\.)\s+", lines[i].strip()):
                items.append(re.sub(r"^([-*]|\d+\.)\s+", "", lines[i].strip()))
                i += 1
            out.append(f"<{tag}>" + "".join(f"<li>{inline(t, base)}</li>" for t in items) + f"</{tag}>")
        elif s.startswith(">"):
            quote = []
            while i < len(lines) and lines[i].strip().startswith(">"):
                quote.append(lines[i].strip()[1:].strip())
                i += 1
            out.append(f"<blockquote>{inline(' '.join(quote), base)}</blockquote>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"^(```|#|\||>|[-*]\s|\d+\.\s)",
                                                                           lines[i].strip()):
                para.append(lines[i].strip())
                i += 1
            if not para:  # a line that looked like a block start but was not one
                para, i = [s], i + 1
            out.append(f"<p>{inline(' '.join(para), base)}</p>")
    return "\n".join(out)


def render_report(title: str, sections: Iterable[dict], base_dir: str | Path, intro: str = "") -> str:
    """The page: a title, a table of contents, then each section ({"title", "markdown", "seconds"?}) in order."""
    base = Path(base_dir)
    sections = list(sections)
    toc, body = [], []
    for n, s in enumerate(sections, 1):
        anchor = f"s{n}"
        secs = f' <span class="seconds">({s["seconds"]} s)</span>' if s.get("seconds") is not None else ""
        toc.append(f'<li><a href="#{anchor}">{html.escape(str(s["title"]))}</a></li>')
        body.append(f'<section id="{anchor}"><h2>{html.escape(str(s["title"]))}{secs}</h2>\n'
                    f'{markdown_to_html(str(s.get("markdown", "")), base)}</section>')
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{markdown_to_html(intro, base) if intro else ''}"
            f"<nav><ol>{''.join(toc)}</ol></nav>\n" + "\n".join(body)
            + f"<script>{SORT_SCRIPT}</script></body></html>\n")


def write_report_html(path: str | Path, title: str, sections: Iterable[dict], intro: str = "") -> Path:
    """Render beside `path`'s folder (figures resolved from there) and write atomically."""
    from pocketlm.utils import atomic_write_text

    path = Path(path)
    atomic_write_text(path, render_report(title, sections, path.parent, intro))
    return path
