"""A self-contained static HTML page: inline CSS and JS, the plots embedded as data URIs; no
network or other file needed to view it.

Clicking a column header sorts the rows by it (numbers by value, text alphabetically; click
again to reverse). Two drop-downs keep the rows of one student and/or one teacher. In every
accuracy column (and transfer ratio, delta) the best value among the rows shown is highlighted
(class ``best``); an accuracy's 95 % interval is the cell's hover text. Rows whose difference to
the baseline is within noise are greyed (class ``noise``).
``page.html#sort=worst_case`` (or ``#sort=worst_case:desc``) clicks that header once the page has
loaded, ``#student=mlp&teacher=-`` sets the filters: links that open the table so, and the hooks
the browser test drives. The page records script errors in ``<html data-errors>`` and sets
``<body data-ready="1">`` when its script has run.

Under the plots, each run's training losses per epoch (from its ``metrics.json``: the total
``losses`` and the named ``loss_terms``) are drawn as inline SVG, one small chart per run; once laid
out, the script writes each chart's drawn line length into ``data-length`` (the browser test reads it).
"""
from __future__ import annotations

import html
import math

import pandas as pd

from .frame import FLAG_HELP
from .text import display_cell, display_columns, interval_of, is_numeric_column, missing

HIGHER_IS_BETTER_EXTRA = {"worst_class", "transfer_ratio", "delta_at", "delta"}

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
td.best{background:#dafbe1;font-weight:700}
tr.noise td{color:#8c959f}
.verdict-better{color:#1a7f37;font-weight:600}.verdict-worse{color:#cf222e;font-weight:600}
.filters label{margin-right:1.5em}
img.plot{max-width:100%;border:1px solid #d0d7de;margin:.5em 0}
.curves{display:flex;flex-wrap:wrap;gap:1em}
figure.curve{margin:0;border:1px solid #d0d7de;padding:.4em}
figure.curve figcaption{font-size:.85em;color:#59636e}
svg.loss-curve text{font-size:10px;fill:#59636e}
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
  function highlightBest(table) {
    Array.prototype.forEach.call(table.querySelectorAll("thead th[data-best]"), function (th) {
      var index = Array.prototype.indexOf.call(th.parentNode.children, th);
      var best = null, cells = [];
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        var cell = row.cells[index];
        cell.classList.remove("best");
        if (row.style.display === "none") return;
        var v = value(cell);
        if (typeof v !== "number") return;
        cells.push([cell, v]);
        if (best === null || v > best) best = v;
      });
      cells.forEach(function (item) { if (item[1] === best) item[0].classList.add("best"); });
    });
  }
  function applyFilters() {
    var table = document.getElementById("leaderboard");
    if (!table) return;
    var wanted = {};
    Array.prototype.forEach.call(document.querySelectorAll("select.filter"), function (select) {
      wanted[select.getAttribute("data-key")] = select.value;
    });
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      var shown = Object.keys(wanted).every(function (key) {
        return wanted[key] === "" || row.getAttribute("data-" + key) === wanted[key];
      });
      row.style.display = shown ? "" : "none";
    });
    highlightBest(table);
  }
  Array.prototype.forEach.call(document.querySelectorAll("select.filter"), function (select) {
    select.addEventListener("change", applyFilters);
  });
  var hash = decodeURIComponent(window.location.hash);
  Array.prototype.forEach.call(document.querySelectorAll("select.filter"), function (select) {
    var key = select.getAttribute("data-key");
    var found = new RegExp("(?:^#|&)" + key + "=([^&]*)").exec(hash);
    if (found) select.value = found[1];
  });
  applyFilters();
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    if (table.id !== "leaderboard") highlightBest(table);
  });
  var headers = document.querySelectorAll("table.sortable thead th");
  Array.prototype.forEach.call(headers, function (th) { th.addEventListener("click", onClick); });
  var match = /(?:^#|&)sort=([^&:]+)(?::(asc|desc))?/.exec(hash);
  if (match) {
    var th = document.querySelector('table.sortable thead th[data-col="' + match[1] + '"]');
    if (th) {
      th.click();
      if (match[2] && (th.getAttribute("aria-sort") === "ascending") !== (match[2] === "asc")) th.click();
    }
  }
  Array.prototype.forEach.call(document.querySelectorAll("svg.loss-curve"), function (svg) {
    var length = 0;
    Array.prototype.forEach.call(svg.querySelectorAll("polyline"), function (line) { length += line.getTotalLength(); });
    svg.setAttribute("data-length", length.toFixed(1));
  });
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


def higher_is_better(frame: pd.DataFrame, column: str) -> bool:
    """Accuracy columns (they have an interval) and the ratios and differences where more is better."""
    return column in HIGHER_IS_BETTER_EXTRA or (f"{column}_lo" in frame.columns and f"{column}_hi" in frame.columns)


def _hover(frame: pd.DataFrame, row, column: str) -> str | None:
    bounds = interval_of(frame, row, column)
    if bounds is None:
        return None
    if column == "delta":
        return f"95 % interval of the paired difference: {bounds[0]:+.2f} to {bounds[1]:+.2f} points"
    n = row.get("_n")
    text = f"95 % Wilson interval: {bounds[0]:.2f} to {bounds[1]:.2f}"
    if not missing(n):
        text += f" ({int(n)} examples)"
    std = row.get(f"{column}_std")
    return text + (f"; sample std over seeds {float(std):.2f}" if not missing(std) else "")


def _filters(frame: pd.DataFrame) -> str:
    """Drop-downs keeping one student's or one teacher's rows (with more than one to choose from)."""
    selects = []
    for key in ("student", "teacher"):
        if key not in frame.columns:
            continue
        values = sorted({str(v) for v in frame[key] if not missing(v)})
        if len(values) < 2:
            continue
        options = '<option value="">all</option>' + "".join(
            f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values)
        selects.append(f'<label>{key}: <select class="filter" data-key="{key}" id="filter-{key}">{options}'
                       f'</select></label>')
    return f'<p class="filters">{"".join(selects)}</p>' if selects else ""


def table_html(frame: pd.DataFrame, table_id: str) -> str:
    if frame.empty:
        return "<p><em>no finished runs</em></p>"
    columns = display_columns(frame)  # run ids are shown as tooltips, not as a column
    numeric = {c: is_numeric_column(frame, c) for c in columns}
    best = {c: numeric[c] and higher_is_better(frame, c) for c in columns}
    head = "".join(f'<th data-col="{html.escape(str(c))}" data-type="{"num" if numeric[c] else "text"}"'
                   + (' data-best="max"' if best[c] else "")
                   + f' title="click to sort">{html.escape(str(c))}</th>' for c in columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for column in columns:
            text = display_cell(frame, row, column)
            attrs = f' data-v="{html.escape(_sort_value(frame, row, column))}"'
            if numeric[column]:
                attrs += ' class="num"'
            hover = _hover(frame, row, column)
            if hover:
                attrs += f' title="{html.escape(hover)}"'
            content = html.escape(text)
            if column == "verdict" and text in ("better", "worse", "within noise"):
                content = f'<span class="verdict-{text.split()[-1]}">{content}</span>'
            elif column == "flags" and text != "-":
                details = "; ".join(f"{code}: {detail}" for code, detail in row.get("_flags", []) or [])
                codes = {token.split("(")[0].lstrip("!") for token in text.split()}
                tip = details or "; ".join(f"{c}: {FLAG_HELP.get(c, '')}" for c in sorted(codes))
                content = f'<span class="flag" title="{html.escape(tip)}">{content}</span>'
            elif column == "status" and text.startswith("failed"):
                content = f'<span class="failed">{content}</span>'
            elif column == "method" and "run_id" in frame.columns:
                content = f'<span title="run {html.escape(str(row["run_id"]))}">{content}</span>'
            cells.append(f"<td{attrs}>{content}</td>")
        row_attrs = "".join(f' data-{key}="{html.escape(str(row[key]))}"' for key in ("student", "teacher")
                            if key in frame.columns)
        if str(row.get("verdict", "")) == "within noise":
            row_attrs += ' class="noise"'
        body.append(f"<tr{row_attrs}>" + "".join(cells) + "</tr>")
    return (f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead>'
            f'<tbody>\n' + "\n".join(body) + "\n</tbody></table>")


COLOURS = ["#1f2328", "#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#6e7781"]
CURVE_SIZE = (300, 150)  # pixels: a chart per run
MARGIN = (46, 10, 10, 22)  # left, top, right, bottom


def loss_curve_svg(curve: dict) -> str:
    """One run's losses per epoch as an inline SVG chart: the total (``loss``, dark) and each named
    term, on one linear axis from the smallest to the largest value; hover a line for its values."""
    series = {}
    if curve.get("losses"):
        series["loss"] = [float(v) for v in curve["losses"]]
    for name in dict.fromkeys(name for epoch in curve.get("loss_terms") or [] for name in epoch):
        series[name] = [float(epoch.get(name, math.nan)) for epoch in curve["loss_terms"]]
    values = [v for line in series.values() for v in line if math.isfinite(v)]
    if not values:
        return ""
    width, height = CURVE_SIZE
    left, top, right, bottom = MARGIN
    epochs = max(len(line) for line in series.values())
    low, high = min(values), max(values)
    span = (high - low) or abs(high) or 1.0

    def x(epoch: int) -> float:  # epoch counts from 1
        return left + (width - left - right) * ((epoch - 1) / (epochs - 1) if epochs > 1 else 0.5)

    def y(value: float) -> float:
        return top + (height - top - bottom) * (1 - (value - low) / span)

    parts = [f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#d0d7de"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#d0d7de"/>',
             f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{high:.3g}</text>',
             f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">{low:.3g}</text>',
             f'<text x="{left}" y="{height - 6}">epoch 1</text>',
             f'<text x="{width - right}" y="{height - 6}" text-anchor="end">{epochs}</text>']
    legend = []
    for index, (name, line) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        points = [(x(epoch), y(value)) for epoch, value in enumerate(line, start=1) if math.isfinite(value)]
        text = ", ".join(f"{value:.4g}" for value in line)
        parts.append(f'<polyline data-series="{html.escape(name)}" data-epochs="{len(points)}" fill="none" '
                     f'stroke="{colour}" stroke-width="1.5" points="'
                     + " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
                     + f'"><title>{html.escape(name)} per epoch: {html.escape(text)}</title></polyline>')
        parts += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2" fill="{colour}"/>' for px, py in points]
        legend.append(f'<span style="color:{colour}">&#9632; {html.escape(name)}</span>')
    return (f'<figure class="curve"><svg class="loss-curve" data-run="{html.escape(str(curve.get("run_id", "")))}" '
            f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img">' + "".join(parts) + f'</svg><figcaption>{html.escape(curve.get("title", ""))}<br>'
            + " ".join(legend) + "</figcaption></figure>")


def curves_html(curves: list[dict] | None) -> list[str]:
    charts = [chart for chart in (loss_curve_svg(curve) for curve in curves or []) if chart]
    if not charts:
        return []
    return ["<h2>Training losses per epoch</h2>",
            '<p class="note">Mean loss of each epoch from each run\'s metrics.json (loss: the total; other lines: '
            'the method\'s named terms); hover a line for its values.</p>',
            '<div class="curves">' + "".join(charts) + "</div>"]


def to_html(frame: pd.DataFrame, teachers: pd.DataFrame | None = None, title: str = "rkbench leaderboard",
            notes: list[str] | None = None, images: list[tuple[str, bytes]] | None = None,
            curves: list[dict] | None = None, sections: list[str] | None = None) -> str:
    """The leaderboard page; ``curves``: each run's losses per epoch; ``sections``: further HTML blocks
    after the plots (the ranking, rank.py)."""
    import base64

    from .text import flag_legend, interval_legend

    parts = [f"<h1>{html.escape(title)}</h1>",
             '<p class="note">Accuracies in %; hover over a cell for its 95 % interval; the best value of each '
             'column among the rows shown is highlighted; click a column header to sort.</p>',
             _filters(frame), table_html(frame, "leaderboard")]
    for legend in (interval_legend(frame), flag_legend(frame)):
        for line in filter(None, (part.strip() for part in legend.split("\n"))):
            parts.append(f'<p class="note">{html.escape(line.replace("`", ""))}</p>')
    if teachers is not None and not teachers.empty:
        parts += ["<h2>Teachers (accuracy in %)</h2>", table_html(teachers, "teachers")]
    if images:
        parts.append("<h2>Plots</h2>")
        for name, data in images:
            parts.append(f'<p><img class="plot" alt="{html.escape(name)}" title="{html.escape(name)}" '
                         f'src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}"></p>')
    parts += curves_html(curves)
    parts += list(sections or [])
    for note in notes or []:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    return page(title, parts)


def page(title: str, parts: list[str]) -> str:
    """A self-contained page of HTML blocks (sortable tables)."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{html.escape(title)}</title>"
            f"<script>{ERRORS}</script><style>{STYLE}</style></head>\n<body>\n" + "\n".join(parts)
            + f"\n<script>{SCRIPT}</script>\n</body></html>\n")
