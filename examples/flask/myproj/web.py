# myproj/web.py: a plain Flask app (sync views, a threaded server) that enqueues jobs
import hmac
import os

from flask import Flask, abort, redirect, render_template_string, request, session, url_for
from offload import JobState
from pydantic import ValidationError
from werkzeug.wrappers import Response

from myproj.contracts import CountWords
from myproj.contracts import app as jobs

web = Flask(__name__)
web.config.update(
    SECRET_KEY=os.environ["FLASK_SECRET_KEY"],
    SESSION_COOKIE_HTTPONLY=True,
    SESSION_COOKIE_SAMESITE="Lax",  # a form another site posts carries no session: refused
)
#: Who may sign in, `name=password,…`: your user database stands here.
USERS = dict(u.split("=", 1) for u in os.environ.get("FLASK_USERS", "").split(",") if "=" in u)

PAGE = """<!doctype html><title>Word count</title>{% if refresh %}
<meta http-equiv="refresh" content="1">{% endif %}<h1>Word count</h1>
{% if error %}<p role="alert">{{ error }}</p>{% endif %}{{ body | safe }}"""
LOGIN = """<form method="post" action="/login"><input name="user" placeholder="name">
<input name="password" type="password"><button>Sign in</button></form>"""
FORM = """<form method="post" action="/count"><textarea name="text"></textarea>
<button>Count the words</button></form>"""


def page(body: str, status: int = 200, error: str = "", refresh: bool = False) -> tuple[str, int]:
    return render_template_string(PAGE, body=body, error=error, refresh=refresh), status


def signed_in() -> str:
    user = session.get("user")
    if user not in USERS:
        abort(401)
    return str(user)


@web.get("/")
def home() -> tuple[str, int]:
    return page(FORM if session.get("user") in USERS else LOGIN)


@web.post("/login")
def login() -> Response | tuple[str, int]:
    user, password = request.form.get("user", ""), request.form.get("password", "")
    if user not in USERS or not hmac.compare_digest(USERS[user], password):
        return page(LOGIN, 401, "wrong name or password")
    session["user"] = user
    return redirect(url_for("home"), 303)


@web.post("/count")
def count() -> Response | tuple[str, int]:
    user = signed_in()
    try:
        message = CountWords(user=user, text=request.form.get("text", ""))
    except ValidationError as exc:  # refused: nothing is enqueued
        return page(FORM, 422, "; ".join(e["msg"] for e in exc.errors()))
    job = jobs.enqueue_sync(message, owner=user)  # blocks until stored, no event loop needed
    return redirect(url_for("status", job_id=job.id), 303)


@web.get("/jobs/<job_id>")
def status(job_id: str) -> Response | tuple[str, int]:
    job = jobs.job_sync(job_id, owner=signed_in())  # another user's job: None
    if job is None:
        abort(404)
    st = job.status_sync()
    if st.state is JobState.SUCCEEDED:
        return redirect(url_for("result", job_id=job_id), 303)
    progress = st.progress.message if st.progress and st.progress.message else ""
    return page(f"<p>Job {job_id}: {st.state.value} {progress}</p>", refresh=not st.state.final)


@web.get("/jobs/<job_id>/result")
def result(job_id: str) -> Response | tuple[str, int]:
    job = jobs.job_sync(job_id, owner=signed_in())
    if job is None:
        abort(404)
    st = job.status_sync()
    if st.state is not JobState.SUCCEEDED:
        return redirect(url_for("status", job_id=job_id), 303)
    top = ", ".join(f"{word} ({n})" for word, n in st.result["top"])
    return page(f"<p>{st.result['words']} words. Most used: {top}</p>")
