"""A self-contained static HTML page: inline CSS and JS, no network needed to view it.

Clicking a column header sorts the rows by it (numbers by value, text alphabetically; click
again to reverse). ``page.html#sort=worst_case`` (or ``#sort=worst_case:desc``) clicks that
header once the page has loaded: a link that opens the table sorted, and the hook the browser
test drives. The page records script errors in ``<html data-errors>`` and sets
``<body data-ready="1">`` when its script has run.
"""
from __future__ import annotations

import html
import math

import pandas as pd

from .frame import FLAG_HELP
from .text import display_cell, display_columns, is_numeric_column, missing

STYLE = """
body{font:14px/1.4 -apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em;color:#1f2328}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #d0d7de;padding:4px 8px;white-space:nowrap}
th{background:#f6f8fa;cursor:pointer;user-select:none}
th:hover{background:#eaeef2}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#f6f8fa}
.flag{color:#9a6700;font-weight:600;cursor:help}
.failed{color:#cf222e}
.note{color:#59636e;font-size:.9em}
"""

SCRIPT = r"""
(function () {
  function value(cell) {
    var v = cell.getAttribute("data-v");
    if (v === null || v === "") return null;
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  function compare(a, b, ascending) {
    if (a === null && b === null) return 0;
    if (a === null) return 1;            // missing values last, whichever the direction
    if (b === null) return -1;
    var numbers = typeof a === "number" && typeof b === "number";
    var order = numbers ? a - b : String(a).localeCompare(String(b));
    return ascending ? order : -order;
  }
  function sortBy(table, th, ascending) {
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows = rows.map(function (row, position) { return [row, position]; });
    rows.sort(function (x, y) {
      return compare(value(x[0].cells[index]), value(y[0].cells[index]), ascending) || x[1] - y[1];
    });
    rows.forEach(function (item) { body.appendChild(item[0]); });
    Array.prototype.forEach.call(th.parentNode.children, function (other) { other.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }
  function onClick(event) {
    var th = event.currentTarget;
    var table = th.closest("table");
    var current = th.getAttribute("aria-sort");
    var ascending = current ? current !== "ascending" : th.getAttribute("data-type") !== "num";
    sortBy(table, th, ascending);
  }
  var headers = document.querySelectorAll("table.sortable thead th");
  Array.prototype.forEach.call(headers, function (th) { th.addEventListener("click", onClick); });
  var match = /(?:^#|&)sort=([^&:]+)(?::(asc|desc))?/.exec(decodeURIComponent(window.location.hash));
  if (match) {
    var th = document.querySelector('table.sortable thead th[data-col="' + match[1] + '"]');
    if (th) {
      th.click();
      if (match[2] && (th.getAttribute("aria-sort") === "ascending") !== (match[2] === "asc")) th.click();
    }
  }
  document.body.setAttribute("data-ready", "1");
})();
"""

ERRORS = """window.addEventListener("error", function (e) {
  var root = document.documentElement;
  root.setAttribute("data-errors", (root.getAttribute("data-errors") || "") + (e.message || "error") + ";");
});"""


def _sort_value(frame: pd.DataFrame, row, column: str) -> str:
    value = row[column]
    if missing(value):
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


def table_html(frame: pd.DataFrame, table_id: str) -> str:
    if frame.empty:
        return "<p><em>no finished runs</em></p>"
    columns = display_columns(frame)  # run ids are shown as tooltips, not as a column
    numeric = {c: is_numeric_column(frame, c) for c in columns}
    head = "".join(f'<th data-col="{html.escape(str(c))}" data-type="{"num" if numeric[c] else "text"}"'
                   f' title="click to sort">{html.escape(str(c))}</th>' for c in columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for column in columns:
            text = display_cell(frame, row, column)
            attrs = f' data-v="{html.escape(_sort_value(frame, row, column))}"'
            if numeric[column]:
                attrs += ' class="num"'
            content = html.escape(text)
            if column == "flags" and text != "-":
                details = "; ".join(f"{code}: {detail}" for code, detail in row.get("_flags", []) or [])
                codes = {token.split("(")[0].lstrip("!") for token in text.split()}
                tip = details or "; ".join(f"{c}: {FLAG_HELP.get(c, '')}" for c in sorted(codes))
                content = f'<span class="flag" title="{html.escape(tip)}">{content}</span>'
            elif column == "status" and text.startswith("failed"):
                content = f'<span class="failed">{content}</span>'
            elif column == "method" and "run_id" in frame.columns:
                content = f'<span title="run {html.escape(str(row["run_id"]))}">{content}</span>'
            cells.append(f"<td{attrs}>{content}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead>'
            f'<tbody>\n' + "\n".join(body) + "\n</tbody></table>")


def to_html(frame: pd.DataFrame, teachers: pd.DataFrame | None = None, title: str = "rkbench leaderboard",
            notes: list[str] | None = None) -> str:
    from .text import flag_legend

    parts = [f"<h1>{html.escape(title)}</h1>",
             '<p class="note">Accuracies in %; mean ± sample std over seeds; click a column header to sort.</p>',
             table_html(frame, "leaderboard")]
    legend = flag_legend(frame).strip()
    if legend:
        parts.append(f'<p class="note">{html.escape(legend.replace("`", ""))}</p>')
    if teachers is not None and not teachers.empty:
        parts += ["<h2>Teachers (accuracy in %)</h2>", table_html(teachers, "teachers")]
    for note in notes or []:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{html.escape(title)}</title>"
            f"<script>{ERRORS}</script><style>{STYLE}</style></head>\n<body>\n" + "\n".join(parts)
            + f"\n<script>{SCRIPT}</script>\n</body></html>\n")
