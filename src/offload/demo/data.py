"""The demo's sample data set: a year of orders for a few small shops, in its own SQLite file.

The data set is deterministic (seeded), so a report's totals can be checked independently
from the same file. Money is kept in integer cents.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

#: The year the sample orders cover.
DEFAULT_YEAR = 2025
#: Seed of the sample data; change it and every total changes.
DEFAULT_SEED = "offload-demo-1"
#: Schema version of the data file; a file of another version is rebuilt.
SCHEMA_VERSION = 1

_PERIOD = re.compile(r"^(\d{4})(?:-Q([1-4]))?$")
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


@dataclass(frozen=True, slots=True)
class DemoUser:
    """A signed-in person of the demo: owner of one shop."""

    id: str
    name: str
    shop: str
    email: str
    products: tuple[tuple[str, int], ...]
    customers: tuple[tuple[str, str], ...]


USERS: dict[str, DemoUser] = {
    u.id: u
    for u in (
        DemoUser(
            "alice",
            "Alice Martin",
            "Alpine Coffee Roasters",
            "alice@example.com",
            (
                ("House Espresso 1 kg", 3200),
                ("Single Origin Ethiopia 250 g", 1450),
                ("Decaf Colombia 500 g", 1690),
                ("Cold Brew Kit", 3900),
                ("Ceramic Pour-Over", 2850),
                ("Barista Course (seat)", 12000),
            ),
            (
                ("Café Lumière", "Lyon"),
                ("Bergblick Hotel", "Innsbruck"),
                ("The Daily Grind", "Leeds"),
                ("Studio Nord", "Oslo"),
                ("Marta Rossi", "Turin"),
                ("Kaffeehaus Weber", "Vienna"),
                ("Oak & Ember Bakery", "Bristol"),
                ("Jonas Keller", "Zürich"),
            ),
        ),
        DemoUser(
            "bob",
            "Bob Okafor",
            "Bluebird Books",
            "bob@example.com",
            (
                ("Hardback Novel", 2499),
                ("Paperback Classic", 1199),
                ("Children's Picture Book", 1499),
                ("Cookbook", 3299),
                ("Gift Card", 5000),
                ("Reading Lamp", 4599),
            ),
            (
                ("Riverside Library", "Cambridge"),
                ("St. Anne's School", "Dublin"),
                ("Priya Shah", "London"),
                ("The Book Nook", "Edinburgh"),
                ("Tom Becker", "Hamburg"),
                ("Maple Street Café", "York"),
                ("Lena Novak", "Prague"),
            ),
        ),
        DemoUser(
            "carol",
            "Carol Nguyen",
            "Copper Kettle Tea Co.",
            "carol@example.com",
            (
                ("Assam Breakfast 250 g", 1290),
                ("Jasmine Pearls 100 g", 1890),
                ("Sencha Kyoto 100 g", 1590),
                ("Cast-Iron Teapot", 6400),
                ("Tasting Flight Box", 2990),
            ),
            (
                ("Willow Tea Room", "Bath"),
                ("Hotel Astoria", "Brussels"),
                ("Mei Lin", "Amsterdam"),
                ("Greenleaf Deli", "Cardiff"),
                ("Ana Costa", "Porto"),
                ("The Lantern Inn", "Galway"),
            ),
        ),
    )
}

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT NOT NULL, shop TEXT NOT NULL,
                    email TEXT NOT NULL);
CREATE TABLE customers (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id),
                        name TEXT NOT NULL, city TEXT NOT NULL);
CREATE TABLE products (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id),
                       name TEXT NOT NULL, unit_price_cents INTEGER NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id),
                     customer_id INTEGER NOT NULL REFERENCES customers(id),
                     ordered_on TEXT NOT NULL);
CREATE TABLE order_lines (order_id INTEGER NOT NULL REFERENCES orders(id),
                          product_id INTEGER NOT NULL REFERENCES products(id),
                          quantity INTEGER NOT NULL, unit_price_cents INTEGER NOT NULL);
CREATE INDEX orders_user_day ON orders (user_id, ordered_on);
CREATE INDEX lines_order ON order_lines (order_id);
"""


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson-distributed count (Knuth's method; the means here are small)."""
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _fill_user(conn: sqlite3.Connection, user: DemoUser, year: int, seed: str) -> None:
    rng = random.Random(f"{seed}:{user.id}")
    conn.execute(
        "INSERT INTO users VALUES (?, ?, ?, ?)", (user.id, user.name, user.shop, user.email)
    )
    products = [
        (conn.execute("INSERT INTO products VALUES (NULL, ?, ?, ?)", (user.id, n, p)).lastrowid, p)
        for n, p in user.products
    ]
    customers = [
        conn.execute("INSERT INTO customers VALUES (NULL, ?, ?, ?)", (user.id, n, c)).lastrowid
        for n, c in user.customers
    ]
    loyalty = [rng.uniform(0.3, 3.0) for _ in customers]  # some customers buy far more
    day = date(year, 1, 1)
    while day.year == year:
        # More orders towards the winter holidays, fewer on Sundays.
        season = 1.0 + 0.45 * math.cos((day.timetuple().tm_yday - 350) / 365 * 2 * math.pi)
        mean = 3.2 * season * (0.5 if day.weekday() == 6 else 1.0)
        for _ in range(_poisson(rng, mean)):
            (customer,) = rng.choices(customers, weights=loyalty)
            order = conn.execute(
                "INSERT INTO orders VALUES (NULL, ?, ?, ?)", (user.id, customer, day.isoformat())
            ).lastrowid
            for product, price in rng.sample(products, rng.choice((1, 1, 1, 2, 2, 3))):
                quantity = rng.choice((1, 1, 1, 2, 2, 3, 4, 6))
                conn.execute(
                    "INSERT INTO order_lines VALUES (?, ?, ?, ?)", (order, product, quantity, price)
                )
        day += timedelta(days=1)


def create_dataset(path: Path, *, year: int = DEFAULT_YEAR, seed: str = DEFAULT_SEED) -> Path:
    """Write the sample data set to `path` unless a current one is there; returns `path`.

    The file is built under a temporary name and renamed into place, so concurrent
    starters never see half a data set.
    """
    if _current(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(tmp)) as conn:
        conn.executescript(_SCHEMA)
        for user in USERS.values():
            _fill_user(conn, user, year, seed)
        meta = {"version": str(SCHEMA_VERSION), "year": str(year), "seed": seed}
        conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        conn.commit()
    os.replace(tmp, path)
    return path


def _current(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == str(SCHEMA_VERSION)


@contextlib.contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the data set."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


@functools.lru_cache(maxsize=64)  # a data set never changes once written
def order_count(path: Path, user_id: str) -> int:
    """How many orders the user's shop has in the data set."""
    with connect(path) as conn:
        (n,) = conn.execute("SELECT COUNT(*) FROM orders WHERE user_id = ?", (user_id,)).fetchone()
    return int(n)


@functools.lru_cache(maxsize=16)
def dataset_year(path: Path) -> int:
    with connect(path) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'year'").fetchone()
    return int(row[0]) if row else DEFAULT_YEAR


# -- periods and money ---------------------------------------------------------------------


def period_months(period: str) -> tuple[int, int, int]:
    """`2025` → (2025, 1, 12); `2025-Q2` → (2025, 4, 6).

    Raises:
        ValueError: not a year or a quarter.
    """
    match = _PERIOD.match(period)
    if not match:
        raise ValueError(f"period must look like 2025 or 2025-Q2, not {period!r}")
    year, quarter = int(match[1]), match[2]
    if quarter is None:
        return year, 1, 12
    first = 3 * (int(quarter) - 1) + 1
    return year, first, first + 2


def period_label(period: str) -> str:
    """`2025` → "Full year 2025"; `2025-Q2` → "Q2 2025 (Apr–Jun)"."""
    year, first, last = period_months(period)
    if (first, last) == (1, 12):
        return f"Full year {year}"
    return f"Q{(first + 2) // 3} {year} ({_MONTHS[first - 1]}–{_MONTHS[last - 1]})"


def month_name(month: int, *, full: bool = False) -> str:
    """1 → "Jan" (or "January" when `full`)."""
    return date(2000, month, 1).strftime("%B") if full else _MONTHS[month - 1]


def money(cents: int) -> str:
    """Cents as dollars with thousands separators: 123456 → "$1,234.56"."""
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents) // 100:,}.{abs(cents) % 100:02d}"
