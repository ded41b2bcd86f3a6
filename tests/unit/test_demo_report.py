"""The sales report PDF: pages, totals in its text, progress, and stopping."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pypdf import PdfReader

from offload.demo.data import create_dataset
from offload.demo.report import Stopped, render_report
from offload.demo.sales import load_sales

from ..demo_support import dollars, expected_totals


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_dataset(tmp_path_factory.mktemp("data") / "shop.db")


def test_report_is_a_multi_page_pdf_with_the_totals(dataset: Path) -> None:
    seen: list[tuple[float, str]] = []
    report = render_report(load_sales(dataset, "alice", "2025"), lambda f, m: seen.append((f, m)))
    reader = PdfReader(io.BytesIO(report.pdf))
    assert report.pdf.startswith(b"%PDF") and len(reader.pages) == report.pages > 10
    first = reader.pages[0].extract_text()
    orders, revenue = expected_totals(dataset, "alice")
    assert "Sales report · Full year 2025" in first
    assert dollars(revenue) in first and f"{orders:,}" in first
    assert f"Page 1 of {report.pages}" in first
    assert "Revenue by month" in reader.pages[1].extract_text()
    assert reader.metadata is not None and reader.metadata.title == "Sales report Full year 2025"
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] >= 0.95
    assert any("December 2025" in m or "Dec 2025" in m for _, m in seen)
    assert report.filename == "sales-report-alice-2025.pdf"


def test_a_quarter_report_is_shorter(dataset: Path) -> None:
    year = render_report(load_sales(dataset, "bob", "2025"))
    quarter = render_report(load_sales(dataset, "bob", "2025-Q4"))
    assert 1 < quarter.pages < year.pages


def test_rendering_stops_when_progress_says_so(dataset: Path) -> None:
    def stop_half_way(fraction: float, _message: str) -> None:
        if fraction > 0.5:
            raise Stopped

    with pytest.raises(Stopped):
        render_report(load_sales(dataset, "carol", "2025"), stop_half_way)
