# myproj/contracts.py: imported by both halves, message classes only
from typing import Annotated

from offload import App, FromPrincipal, Message

app = App("myproj")  # backend from OFFLOAD_URL, default sqlite:///offload.db


@app.message("reports.export", version=1, queue="reports")
class ExportReport(Message):  # a pydantic v2 model: the queue contract
    user_id: Annotated[str, FromPrincipal()]  # over HTTP: the caller, not the client's choice
    period: str
