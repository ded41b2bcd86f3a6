"""The sales report PDF (ReportLab): title page, charts, summary tables and the order ledger."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.charts.piecharts import Pie
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Flowable,
    KeepTogether,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from .data import money, month_name, period_label, period_months
from .sales import Line, SalesFigures

#: Called with (fraction 0..1, message) as the rendering advances.
ProgressFn = Callable[[float, str], None]

BRAND = colors.HexColor("#4338ca")
INK = colors.HexColor("#1e293b")
MUTED = colors.HexColor("#64748b")
ZEBRA = colors.HexColor("#f1f5f9")
PALETTE = [
    colors.HexColor(c) for c in ("#4338ca", "#0891b2", "#16a34a", "#ca8a04", "#db2777", "#7c3aed")
]

_styles = getSampleStyleSheet()
H1 = ParagraphStyle("h1", parent=_styles["Heading1"], textColor=INK, fontSize=20, spaceAfter=8)
H2 = ParagraphStyle("h2", parent=_styles["Heading2"], textColor=BRAND, spaceBefore=6)
BODY = ParagraphStyle("body", parent=_styles["BodyText"], textColor=INK, fontSize=10, leading=14)
SMALL = ParagraphStyle("small", parent=BODY, fontSize=8, leading=10)
RIGHT = ParagraphStyle("right", parent=SMALL, alignment=TA_RIGHT)


@dataclass(frozen=True, slots=True)
class RenderedReport:
    pdf: bytes
    pages: int
    filename: str


def report_result(pdf_ref: str, rendered: RenderedReport, figures: SalesFigures) -> dict[str, Any]:
    """The job result of a rendered report (the same in queued and inline mode)."""
    totals = figures.totals
    return {
        "pdf": pdf_ref,
        "filename": rendered.filename,
        "pages": rendered.pages,
        "bytes": len(rendered.pdf),
        "period": figures.period,
        "label": period_label(figures.period),
        "totals": {
            "orders": totals.orders,
            "units": totals.units,
            "revenue_cents": totals.revenue_cents,
            "customers": totals.customers,
        },
    }


class Stopped(Exception):
    """The rendering was asked to stop (the job was cancelled or timed out)."""


class _Mark(Flowable):  # type: ignore[misc]  # reportlab ships no type hints
    """An invisible flowable that reports progress when the layout reaches it."""

    def __init__(self, fraction: float, message: str, report: ProgressFn) -> None:
        super().__init__()
        self.fraction, self.message, self.report = fraction, message, report

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        return 0, 0

    def draw(self) -> None:
        self.report(self.fraction, self.message)


def _numbered_canvas(header: str) -> type[Canvas]:
    class NumberedCanvas(Canvas):  # type: ignore[misc]
        """Holds every page until the end, so each footer can say "page X of Y"."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pages: list[dict[str, Any]] = []

        def showPage(self) -> None:
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self) -> None:
            total = len(self._pages)
            for state in self._pages:
                self.__dict__.update(state)
                self._decorate(total)
                super().showPage()
            super().save()

        def _decorate(self, total: int) -> None:
            width, _ = A4
            self.setFont("Helvetica", 8)
            self.setFillColor(MUTED)
            if self._pageNumber > 1:
                self.drawString(20 * mm, 287 * mm, header)
                self.setStrokeColor(ZEBRA)
                self.line(20 * mm, 285 * mm, width - 20 * mm, 285 * mm)
            self.drawRightString(width - 20 * mm, 10 * mm, f"Page {self._pageNumber} of {total}")
            self.drawString(20 * mm, 10 * mm, "Tally · made with offload")

    return NumberedCanvas


def _table(rows: list[list[Any]], widths: list[float], *, text_cols: int = 1) -> Table:
    """A zebra table with a header row and a bold totals row; the first `text_cols`
    columns are text (left-aligned), the rest figures (right-aligned)."""
    table = Table(rows, colWidths=widths, repeatRows=1)
    style = [
        ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 9),
        ("FONT", (0, 1), (-1, -1), "Helvetica", 9),
        ("TEXTCOLOR", (0, 0), (-1, 0), colors.white),
        ("BACKGROUND", (0, 0), (-1, 0), BRAND),
        ("ALIGN", (text_cols, 0), (-1, -1), "RIGHT"),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, ZEBRA]),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
        ("TOPPADDING", (0, 0), (-1, -1), 4),
        ("FONT", (0, -1), (-1, -1), "Helvetica-Bold", 9),
        ("LINEABOVE", (0, -1), (-1, -1), 1, INK),
        ("BACKGROUND", (0, -1), (-1, -1), colors.white),
    ]
    table.setStyle(TableStyle(style))
    return table


def _summary_rows(title: str, lines: list[Line], total_cents: int, total: list[Any]) -> list[Any]:
    rows: list[list[Any]] = [[title, "Orders", "Units", "Revenue", "Share"]]
    for line in lines:
        share = f"{100 * line.revenue_cents / total_cents:.1f}%" if total_cents else "–"
        rows.append(
            [line.label, f"{line.orders:,}", f"{line.units:,}", money(line.revenue_cents), share]
        )
    rows.append(total)
    return rows


def _revenue_chart(figures: SalesFigures) -> Drawing:
    drawing = Drawing(170 * mm, 75 * mm)
    chart = VerticalBarChart()
    chart.x, chart.y, chart.width, chart.height = 18 * mm, 10 * mm, 148 * mm, 58 * mm
    months = figures.months
    chart.data = [[m.revenue_cents / 100 for m in months]]
    chart.categoryAxis.categoryNames = [month_name(int(m.label)) for m in months]
    chart.categoryAxis.labels.fontName = "Helvetica"
    chart.valueAxis.valueMin = 0
    chart.valueAxis.labelTextFormat = lambda v: f"${v / 1000:,.0f}k"
    chart.valueAxis.labels.fontName = "Helvetica"
    chart.valueAxis.gridStrokeColor = ZEBRA
    chart.valueAxis.visibleGrid = True
    chart.bars[0].fillColor = BRAND
    chart.bars[0].strokeColor = None
    chart.barSpacing = 2
    drawing.add(chart)
    drawing.add(
        String(
            18 * mm,
            71 * mm,
            "Revenue by month",
            fontName="Helvetica-Bold",
            fontSize=10,
            fillColor=INK,
        )
    )
    return drawing


def _product_pie(figures: SalesFigures) -> Drawing:
    drawing = Drawing(170 * mm, 60 * mm)
    pie = Pie()
    pie.x, pie.y, pie.width, pie.height = 10 * mm, 5 * mm, 50 * mm, 50 * mm
    products = figures.products
    pie.data = [p.revenue_cents for p in products] or [1]
    pie.labels = None
    pie.slices.strokeColor = colors.white
    for i in range(len(pie.data)):
        pie.slices[i].fillColor = PALETTE[i % len(PALETTE)]
    legend = Legend()
    legend.x, legend.y = 75 * mm, 50 * mm
    legend.fontName, legend.fontSize = "Helvetica", 9
    legend.alignment = "right"
    legend.columnMaximum = 8
    legend.colorNamePairs = [
        (PALETTE[i % len(PALETTE)], f"{p.label}  {money(p.revenue_cents)}")
        for i, p in enumerate(products)
    ]
    drawing.add(pie)
    drawing.add(legend)
    return drawing


def _title_page(figures: SalesFigures, now: datetime) -> list[Any]:
    t = figures.totals
    kpis = [
        ["Total revenue", "Orders", "Average order", "Units sold", "Customers"],
        [
            money(t.revenue_cents),
            f"{t.orders:,}",
            money(t.average_order_cents),
            f"{t.units:,}",
            f"{t.customers}",
        ],
    ]
    kpi = Table(kpis, colWidths=[34 * mm] * 5)
    kpi.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, 0), "Helvetica", 8),
                ("TEXTCOLOR", (0, 0), (-1, 0), MUTED),
                ("FONT", (0, 1), (-1, 1), "Helvetica-Bold", 13),
                ("TEXTCOLOR", (0, 1), (-1, 1), INK),
                ("BOX", (0, 0), (-1, -1), 0.5, ZEBRA),
                ("INNERGRID", (0, 0), (-1, -1), 0.5, ZEBRA),
                ("TOPPADDING", (0, 0), (-1, -1), 8),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 8),
            ]
        )
    )
    user = figures.user
    return [
        Spacer(1, 62 * mm),
        Paragraph(f"Sales report · {period_label(figures.period)}", H1),
        Paragraph(f"<b>{user.shop}</b>, prepared for {user.name}", BODY),
        Paragraph(f"Generated {now:%d %B %Y, %H:%M} UTC", BODY),
        Spacer(1, 12 * mm),
        kpi,
        Spacer(1, 10 * mm),
        Paragraph(
            "This report was rendered by an offload worker process while the web page stayed "
            "responsive: the button only enqueued a job. The following pages chart revenue by "
            "month, break it down by customer and product, and list every order.",
            BODY,
        ),
    ]


def _cover(canvas: Canvas, _doc: Any) -> None:
    width, height = A4
    canvas.saveState()
    canvas.setFillColor(BRAND)
    canvas.rect(0, height - 70 * mm, width, 70 * mm, stroke=0, fill=1)
    canvas.setFillColor(colors.white)
    canvas.setFont("Helvetica-Bold", 30)
    canvas.drawString(20 * mm, height - 35 * mm, "Tally")
    canvas.setFont("Helvetica", 12)
    canvas.drawString(20 * mm, height - 45 * mm, "Sales reports for small shops")
    canvas.restoreState()


def _summary_pages(figures: SalesFigures) -> list[Any]:
    t = figures.totals
    totals = ["Total", f"{t.orders:,}", f"{t.units:,}", money(t.revenue_cents), "100%"]
    month_lines = [
        Line(f"{month_name(int(m.label))}", m.orders, m.units, m.revenue_cents)
        for m in figures.months
    ]
    widths = [60 * mm, 25 * mm, 25 * mm, 35 * mm, 25 * mm]
    return [
        PageBreak(),
        Paragraph("Revenue", H2),
        _revenue_chart(figures),
        _table(_summary_rows("Month", month_lines, t.revenue_cents, totals), widths),
        PageBreak(),
        Paragraph("Customers", H2),
        _table(_summary_rows("Customer", figures.customers, t.revenue_cents, totals), widths),
        Spacer(1, 8 * mm),
        KeepTogether(
            [
                Paragraph("Products", H2),
                _product_pie(figures),
                _table(_summary_rows("Product", figures.products, t.revenue_cents, totals), widths),
            ]
        ),
    ]


def _ledger_pages(figures: SalesFigures, report: ProgressFn, pace_s: float) -> list[Any]:
    year, first, last = period_months(figures.period)
    story: list[Any] = [PageBreak(), Paragraph("Order ledger", H1)]
    months = last - first + 1
    for i, month in enumerate(range(first, last + 1)):
        entries = figures.ledger[month]
        fraction = 0.25 + 0.7 * i / months
        story.append(
            _Mark(fraction, f"laying out {month_name(month)} {year}", _paced(report, pace_s))
        )
        rows: list[list[Any]] = [["Date", "Order", "Customer", "Items", "Units", "Amount"]]
        for e in entries:
            rows.append(
                [
                    e.day[5:],
                    f"#{e.order_id}",
                    Paragraph(e.customer, SMALL),
                    Paragraph(e.items, SMALL),
                    str(e.units),
                    money(e.amount_cents),
                ]
            )
        total = sum(e.amount_cents for e in entries)
        rows.append(
            ["", "", f"{len(entries)} orders", "", str(sum(e.units for e in entries)), money(total)]
        )
        story += [
            Paragraph(f"{month_name(month, full=True)} {year}", H2),
            _table(rows, [16 * mm, 16 * mm, 38 * mm, 66 * mm, 12 * mm, 24 * mm], text_cols=4),
        ]
    return story


def _paced(report: ProgressFn, pace_s: float) -> ProgressFn:
    def step(fraction: float, message: str) -> None:
        report(fraction, message)
        if pace_s > 0:
            time.sleep(pace_s)

    return step


def render_report(
    figures: SalesFigures,
    progress: ProgressFn | None = None,
    *,
    pace_s: float = 0.0,
    now: datetime | None = None,
) -> RenderedReport:
    """Render the report of `figures` as a PDF.

    Args:
        figures: the numbers, from `sales.load_sales`.
        progress: called as the layout advances; it may raise `Stopped` to abort.
        pace_s: a pause per ledger month, imitating a slower data source.
        now: the time printed on the title page (default: the current time).
    """
    report = progress or (lambda _f, _m: None)
    report(0.1, "drawing charts")
    now = now or datetime.now(UTC)
    header = f"{figures.user.shop} · Sales report · {period_label(figures.period)}"
    story = [
        *_title_page(figures, now),
        _Mark(0.15, "summarising customers and products", report),
        *_summary_pages(figures),
        *_ledger_pages(figures, report, pace_s),
        _Mark(0.96, "writing the PDF", report),
    ]
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=20 * mm,
        rightMargin=20 * mm,
        topMargin=20 * mm,
        bottomMargin=18 * mm,
        title=f"Sales report {period_label(figures.period)}",
        author=figures.user.shop,
        subject="Sales report",
        creator="offload demo",
    )
    doc.build(story, onFirstPage=_cover, canvasmaker=_numbered_canvas(header))
    return RenderedReport(
        pdf=buffer.getvalue(),
        pages=doc.page,
        filename=f"sales-report-{figures.user.id}-{figures.period}.pdf",
    )
