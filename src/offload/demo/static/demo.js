// Tally's page script: start exports without leaving the page, and follow each job live
// over server-sent events (GET /v1/jobs/{id}/events, authorised by the session cookie).
"use strict";

(() => {
  const STATES = ["queued", "running", "retrying", "succeeded", "failed", "cancelled", "dead"];
  const FINAL = new Set(["succeeded", "failed", "cancelled", "dead"]);
  const WAITING = { queued: "waiting for a worker", retrying: "an attempt failed; retrying soon" };
  const csrf = document.body.dataset.csrf;
  const list = document.getElementById("jobs");

  function fromHTML(html) {
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.firstElementChild;
  }

  function show(row, record) {
    row.dataset.state = record.state;
    row.className = row.className.replace(/\bstate-\S+/, `state-${record.state}`);
    const badge = row.querySelector('[data-role="state"]');
    if (badge) badge.textContent = record.state;
    const progress = record.progress || {};
    const bar = row.querySelector(".progress");
    if (bar && typeof progress.fraction === "number") {
      const percent = Math.round(progress.fraction * 100);
      bar.setAttribute("aria-valuenow", String(percent));
      bar.firstElementChild.style.width = `${percent}%`;
    }
    const message = row.querySelector('[data-role="message"]');
    if (message) message.textContent = progress.message || WAITING[record.state] || "";
  }

  // Once a job is final, the server renders its row (download link, thumbnails, error).
  async function refresh(row) {
    const response = await fetch(`/rows/${encodeURIComponent(row.dataset.jobId)}`);
    if (response.ok) row.replaceWith(fromHTML(await response.text()));
  }

  function follow(row) {
    if (row.dataset.final === "true") return;
    const events = new EventSource(`/v1/jobs/${encodeURIComponent(row.dataset.jobId)}/events`);
    const onEvent = (event) => {
      const record = JSON.parse(event.data);
      show(row, record);
      if (FINAL.has(record.state)) {
        events.close(); // the stream ends here; don't let EventSource reconnect
        refresh(row);
      }
    };
    for (const state of STATES) events.addEventListener(state, onEvent);
    // On a dropped connection EventSource reconnects by itself, sending Last-Event-ID.
    events.addEventListener("error", () => {
      if (events.readyState !== EventSource.CLOSED) return;
      const message = row.querySelector('[data-role="message"]');
      if (message) message.textContent = "Lost the live connection; reload the page.";
    });
  }

  function submitInBackground(form) {
    const button = form.querySelector('button[type="submit"]');
    const error = form.querySelector(".form-error");
    const fileInput = form.querySelector('input[type="file"]');
    const showError = (text) => {
      error.textContent = text;
      error.hidden = false;
    };
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.hidden = true;
      const file = fileInput && fileInput.files[0];
      const maxBytes = Number(form.dataset.maxBytes || 0);
      if (file && maxBytes && file.size > maxBytes) {
        showError(`The file is too large: images up to ${+(maxBytes / 1048576).toPrecision(3)} MB.`);
        return;
      }
      const label = button.textContent;
      button.disabled = true;
      if (document.body.dataset.inline === "true") button.textContent = "Working…";
      try {
        const response = await fetch(form.action, {
          method: "POST",
          body: new FormData(form),
          headers: { Accept: "application/json", "X-CSRF-Token": csrf },
        });
        const body = await response.json().catch(() => ({}));
        if (!response.ok) {
          showError(body.detail || `The server answered ${response.status}.`);
          return;
        }
        const row = fromHTML(body.html);
        row.classList.add("fresh");
        list.prepend(row);
        document.getElementById("jobs-empty")?.setAttribute("hidden", "");
        if (fileInput) fileInput.value = "";
        follow(row);
      } catch (err) {
        showError("Could not reach the server. Is the demo still running?");
      } finally {
        button.disabled = false;
        button.textContent = label;
      }
    });
  }

  function watchMailbox(box) {
    let last = box.innerHTML;
    setInterval(async () => {
      if (document.hidden) return;
      const response = await fetch(box.dataset.live).catch(() => null);
      if (!response || !response.ok) return;
      const html = await response.text();
      if (html.trim() !== last.trim()) box.innerHTML = last = html;
    }, 2000);
  }

  document.querySelectorAll("form[data-async]").forEach(submitInBackground);
  document.querySelectorAll("#jobs > .job").forEach(follow);
  const mailbox = document.querySelector("[data-live]");
  if (mailbox) watchMailbox(mailbox);
})();
