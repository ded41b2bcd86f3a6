"""The demo's sample data set and the report figures computed from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.demo.data import (
    USERS,
    create_dataset,
    money,
    order_count,
    period_label,
    period_months,
)
from offload.demo.sales import load_sales

from ..demo_support import expected_totals
from ..sqlite_support import sqlite_file


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_dataset(tmp_path_factory.mktemp("data") / "shop.db")


def _dump(path: Path) -> list[tuple[object, ...]]:
    with sqlite_file(path) as conn:
        return conn.execute(
            "SELECT o.id, o.user_id, o.ordered_on, l.product_id, l.quantity, l.unit_price_cents"
            " FROM orders o JOIN order_lines l ON l.order_id = o.id ORDER BY o.id, l.rowid"
        ).fetchall()


def test_dataset_is_deterministic(dataset: Path, tmp_path: Path) -> None:
    again = create_dataset(tmp_path / "again.db")
    assert _dump(again) == _dump(dataset)


def test_dataset_covers_a_year_for_every_user(dataset: Path) -> None:
    with sqlite_file(dataset) as conn:
        for user in USERS:
            first, last, months = conn.execute(
                "SELECT MIN(ordered_on), MAX(ordered_on),"
                " COUNT(DISTINCT substr(ordered_on, 1, 7)) FROM orders WHERE user_id = ?",
                (user,),
            ).fetchone()
            assert first.startswith("2025-01") and last.startswith("2025-12")
            assert months == 12
            assert order_count(dataset, user) > 500


def test_existing_dataset_is_kept(dataset: Path) -> None:
    before = dataset.stat().st_mtime_ns
    create_dataset(dataset)
    assert dataset.stat().st_mtime_ns == before


def test_a_stale_dataset_file_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    path.write_bytes(b"not a database")
    create_dataset(path)
    assert order_count(path, "alice") > 0


@pytest.mark.parametrize("user", sorted(USERS))
def test_report_totals_match_the_raw_data(dataset: Path, user: str) -> None:
    figures = load_sales(dataset, user, "2025")
    orders, revenue = expected_totals(dataset, user)
    assert (figures.totals.orders, figures.totals.revenue_cents) == (orders, revenue)
    assert sum(c.revenue_cents for c in figures.customers) == revenue
    assert sum(p.revenue_cents for p in figures.products) == revenue
    assert sum(len(entries) for entries in figures.ledger.values()) == orders
    assert sum(e.amount_cents for es in figures.ledger.values() for e in es) == revenue


def test_quarters_add_up_to_the_year(dataset: Path) -> None:
    year = load_sales(dataset, "bob", "2025").totals
    quarters = [load_sales(dataset, "bob", f"2025-Q{q}").totals for q in range(1, 5)]
    assert sum(q.orders for q in quarters) == year.orders
    assert sum(q.revenue_cents for q in quarters) == year.revenue_cents
    assert [m.label for m in load_sales(dataset, "bob", "2025-Q3").months] == ["7", "8", "9"]


@pytest.mark.parametrize(
    ("period", "months", "label"),
    [
        ("2025", (2025, 1, 12), "Full year 2025"),
        ("2025-Q1", (2025, 1, 3), "Q1 2025 (Jan–Mar)"),
        ("2024-Q4", (2024, 10, 12), "Q4 2024 (Oct–Dec)"),
    ],
)
def test_periods(period: str, months: tuple[int, int, int], label: str) -> None:
    assert period_months(period) == months
    assert period_label(period) == label


@pytest.mark.parametrize("period", ["", "25", "2025-Q5", "2025-03", "2025 "])
def test_malformed_periods_are_refused(period: str) -> None:
    with pytest.raises(ValueError):
        period_months(period)


@pytest.mark.parametrize(
    ("cents", "text"),
    [
        (0, "$0.00"),
        (5, "$0.05"),
        (123456, "$1,234.56"),
        (18423200, "$184,232.00"),
        (-150, "-$1.50"),
    ],
)
def test_money(cents: int, text: str) -> None:
    assert money(cents) == text
