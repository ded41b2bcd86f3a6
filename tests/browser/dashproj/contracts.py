"""The messages: invoices (billing queue) and pings (misc queue)."""

from __future__ import annotations

from offload import App, Message

app = App("shop")


@app.message("billing.invoice", queue="billing")
class Invoice(Message):
    customer: str
    amount: int


@app.message("misc.ping", queue="misc")
class Ping(Message):
    n: int
