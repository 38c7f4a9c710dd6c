"""Render a report (accounting.reports) as CSV, XLSX or PDF.

Each renderer walks `report.tables()` -- the very rows the page shows -- so
the numbers are the same everywhere. CSV holds every table one after the
other (a `# title` line, the header, the rows, a blank line), or just one with
`?table=<name>`; XLSX has one sheet per table; the PDF lays the tables out
with the report's title and period.
"""
import csv
import io
import re
from datetime import date, datetime, timezone as dt_timezone
from xml.sax.saxutils import escape

from django.http import HttpResponse

FORMATS = ("csv", "xlsx", "pdf")
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pdf": "application/pdf",
}
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")  # download file names: plain ASCII
# A spreadsheet would run text starting with these as a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _meta(report):
    lines = [("Report", report.title), ("Start", report.range.start.isoformat()),
             ("End", report.range.end.isoformat())]
    if getattr(report, "points", None) is not None:
        lines.append(("Grouped by", report.range.period))
    cluster = getattr(report, "cluster", None)
    lines.append(("Cluster", cluster.name if cluster else "all"))
    cloud = getattr(report, "cloud", None)
    lines.append(("Cloud", cloud.name if cloud else "all"))
    lines.append(("Generated", report.generated.astimezone(dt_timezone.utc).strftime("%Y-%m-%d %H:%M UTC")))
    return lines


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(dt_timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def to_csv(report, table=None):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    tables = report.tables()
    if table is not None:
        tables = [t for t in tables if t.name == table]
    for i, t in enumerate(tables):
        if table is None:
            if i:
                writer.writerow([])
            writer.writerow([f"# {t.title}"])
        writer.writerow(t.columns)
        for row in t.rows:
            writer.writerow([_csv_value(v) for v in row])
    return out.getvalue().encode("utf-8")


def to_xlsx(report):
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font

    wb = Workbook(write_only=True)
    bold = Font(bold=True)
    info = wb.create_sheet("Report")
    for key, value in _meta(report):
        info.append([WriteOnlyCell(info, value=key), _cell(info, value)])
    for t in report.tables():
        ws = wb.create_sheet(t.name[:31])
        header = []
        for name in t.columns:
            cell = WriteOnlyCell(ws, value=name)
            cell.font = bold
            header.append(cell)
        ws.append(header)
        for row in t.rows:
            ws.append([_cell(ws, v) for v in row])
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def _cell(ws, value):
    from openpyxl.cell import WriteOnlyCell

    if isinstance(value, datetime):  # Excel has no time zones: UTC, naive
        value = value.astimezone(dt_timezone.utc).replace(tzinfo=None)
    cell = WriteOnlyCell(ws, value=value)
    if isinstance(value, str):
        cell.data_type = "s"  # never a formula, whatever the text starts with
    elif isinstance(value, datetime):
        cell.number_format = "yyyy-mm-dd hh:mm"
    elif isinstance(value, date):
        cell.number_format = "yyyy-mm-dd"
    return cell


def _pdf_value(value):
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(dt_timezone.utc).strftime("%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def to_pdf(report):
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    small = styles["BodyText"].clone("small", fontSize=8, leading=10)
    out = io.BytesIO()
    doc = SimpleDocTemplate(out, pagesize=landscape(A4), leftMargin=1.5 * cm, rightMargin=1.5 * cm,
                            topMargin=1.5 * cm, bottomMargin=1.5 * cm, title=report.title, author="Nephele")
    story = [Paragraph(escape(report.title), styles["Title"]),
             Paragraph(escape(" · ".join(f"{k}: {v}" for k, v in _meta(report)[1:])), styles["BodyText"])]
    burndown = getattr(report, "burndown", None)
    if burndown is not None:
        story += [Spacer(1, 0.3 * cm), Paragraph(escape(burndown.sentence), styles["BodyText"])]
    for t in report.tables():
        if t.name == "burndown":
            continue  # said in a sentence above
        story += [Spacer(1, 0.4 * cm), Paragraph(escape(t.title), styles["Heading3"])]
        if not t.rows:
            story.append(Paragraph("Nothing in this period.", small))
            continue
        data = [[Paragraph(escape(c), small) for c in t.columns]]
        data += [[Paragraph(escape(_pdf_value(v)), small) for v in row] for row in t.rows]
        table = Table(data, repeatRows=1, hAlign="LEFT")
        table.setStyle(TableStyle([
            ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e9ecef")),
            ("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#adb5bd")),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ]))
        story.append(table)
    doc.build(story)
    return out.getvalue()


def response(report, fmt, *, table=None):
    """An attachment download of `report` in `fmt` (one of FORMATS)."""
    if fmt == "csv":
        body = to_csv(report, table=table)
    elif fmt == "xlsx":
        body = to_xlsx(report)
    elif fmt == "pdf":
        body = to_pdf(report)
    else:
        raise ValueError(fmt)
    name = SAFE_NAME.sub("_", report.filename + (f"-{table}" if table and fmt == "csv" else ""))
    resp = HttpResponse(body, content_type=CONTENT_TYPES[fmt])
    resp["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    resp["Cache-Control"] = "private, no-store"
    return resp
