"""The figures of one sales report, computed from the sample data set with SQL."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .data import USERS, DemoUser, connect, period_months


@dataclass(frozen=True, slots=True)
class Line:
    """One row of a summary table: a month, a customer or a product."""

    label: str
    orders: int
    units: int
    revenue_cents: int


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One order, as the ledger lists it."""

    order_id: int
    day: str
    customer: str
    items: str
    units: int
    amount_cents: int


@dataclass(frozen=True, slots=True)
class Totals:
    orders: int
    units: int
    revenue_cents: int
    customers: int

    @property
    def average_order_cents(self) -> int:
        return round(self.revenue_cents / self.orders) if self.orders else 0


@dataclass(frozen=True, slots=True)
class SalesFigures:
    """Everything a report shows for one shop and one period."""

    user: DemoUser
    period: str
    months: list[Line]
    customers: list[Line]
    products: list[Line]
    ledger: dict[int, list[LedgerEntry]]
    totals: Totals


_WHERE = "o.user_id = ? AND o.ordered_on >= ? AND o.ordered_on < ?"


def _bounds(period: str) -> tuple[str, str, int, int]:
    year, first, last = period_months(period)
    end = f"{year + 1}-01-01" if last == 12 else f"{year}-{last + 1:02d}-01"
    return f"{year}-{first:02d}-01", end, first, last


def _grouped(
    conn: sqlite3.Connection,
    label_sql: str,
    join: str,
    args: tuple[object, ...],
) -> list[Line]:
    sql = f"""
        SELECT {label_sql} AS label, COUNT(DISTINCT o.id), SUM(l.quantity),
               SUM(l.quantity * l.unit_price_cents)
        FROM orders o JOIN order_lines l ON l.order_id = o.id {join}
        WHERE {_WHERE} GROUP BY label ORDER BY 4 DESC"""
    rows = conn.execute(sql, args).fetchall()
    return [Line(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]


def load_sales(path: Path, user_id: str, period: str) -> SalesFigures:
    """The figures of `user_id`'s shop for `period` (`2025` or `2025-Q3`).

    Raises:
        KeyError: no such demo user.
        ValueError: a malformed period.
    """
    user = USERS[user_id]
    start, end, first, last = _bounds(period)
    args = (user_id, start, end)
    with connect(path) as conn:
        by_month = {
            int(line.label): line
            for line in _grouped(conn, "CAST(substr(o.ordered_on, 6, 2) AS INTEGER)", "", args)
        }
        customers = _grouped(conn, "c.name", "JOIN customers c ON c.id = o.customer_id", args)
        products = _grouped(conn, "p.name", "JOIN products p ON p.id = l.product_id", args)
        rows = conn.execute(
            f"""SELECT o.id, o.ordered_on, c.name,
                       group_concat(l.quantity || ' × ' || p.name, ', '),
                       SUM(l.quantity), SUM(l.quantity * l.unit_price_cents)
                FROM orders o JOIN order_lines l ON l.order_id = o.id
                JOIN customers c ON c.id = o.customer_id JOIN products p ON p.id = l.product_id
                WHERE {_WHERE} GROUP BY o.id ORDER BY o.ordered_on, o.id""",
            args,
        ).fetchall()
    ledger: dict[int, list[LedgerEntry]] = {m: [] for m in range(first, last + 1)}
    for r in rows:
        entry = LedgerEntry(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), int(r[5]))
        ledger[int(entry.day[5:7])].append(entry)
    months = [by_month.get(m, Line(str(m), 0, 0, 0)) for m in range(first, last + 1)]
    totals = Totals(
        orders=sum(m.orders for m in months),
        units=sum(m.units for m in months),
        revenue_cents=sum(m.revenue_cents for m in months),
        customers=len(customers),
    )
    return SalesFigures(user, period, months, customers, products, ledger, totals)
