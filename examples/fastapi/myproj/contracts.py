# myproj/contracts.py: imported by the web app and the worker, message classes only
from offload import App, Message

app = App("wordcount")  # backend from OFFLOAD_URL, default sqlite:///offload.db


@app.message("texts.count", version=1, queue="texts", http=False)  # only through POST /count
class CountWords(Message):
    user: str  # who asked: the caller's principal, set by the route
    text: str
