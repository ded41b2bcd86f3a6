"""The reference application behind `offload demo`: "Export my report", thumbnails, email.

It is laid out the way an offload user structures an app:

- `contracts.py`: the App and the message classes, imported by both halves;
- `handlers.py`: the worker half (PDF report, thumbnails, confirmation email);
- `pages.py`: the web half (server-rendered pages), which never imports `handlers`;
- `data.py`: the sample shop data set; `report.py`, `images.py`, `mail.py`: the work itself;
- `session.py`: demo users' cookie sessions; `mailbox.py`: the local SMTP catcher;
- `inline.py`: the same work done inside the request, for comparison;
- `launcher.py`: `offload demo`, which starts and stops all of it.
"""
