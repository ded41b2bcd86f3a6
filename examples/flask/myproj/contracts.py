# myproj/contracts.py: imported by the Flask app and the worker, message classes only
from offload import App, Message
from pydantic import Field

app = App("wordcount")  # backend from OFFLOAD_URL, default sqlite:///offload.db


@app.message("texts.count", version=1, queue="texts")
class CountWords(Message):
    user: str  # who asked: the signed-in user, set by the web app
    text: str = Field(min_length=1, max_length=10_000, pattern=r"\S")  # not blank
