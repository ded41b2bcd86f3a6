// offload's dashboard: follow the change feed (server-sent events) and redraw the parts of
// the page that the server renders, instead of reloading it.
"use strict";

(() => {
  const STATES = ["queued", "running", "retrying", "succeeded", "failed", "cancelled", "dead"];
  const FINAL = new Set(["succeeded", "failed", "cancelled", "dead"]);
  const base = document.body.dataset.base;

  // What names the focused control inside `box`, to find its like once `box` is redrawn.
  function focusedIn(box) {
    const el = document.activeElement;
    if (!el || el === document.body || !box.contains(el)) return null;
    return {
      testid: el.dataset.testid,
      href: el.getAttribute("href"),
      // (a button's like in its row: Pause that became Resume; a link gone is not
      // replaced by that row's button, which an Enter meant for the link would press)
      queue: el.tagName === "BUTTON" ? el.closest("[data-queue]")?.dataset.queue : undefined,
    };
  }

  // Put focus back on the control the redraw replaced (a queue's Pause that became Resume
  // meanwhile: that row's button), so that a keyboard user is not sent back to the page's
  // top by a redraw.
  function refocus(box, was) {
    if (!was) return;
    const like = (selector) => box.querySelector(selector);
    const found =
      (was.testid && like(`[data-testid="${CSS.escape(was.testid)}"]`)) ||
      (was.href && like(`a[href="${CSS.escape(was.href)}"]`)) ||
      (was.queue && like(`[data-queue="${CSS.escape(was.queue)}"] button`)) ||
      box.querySelector("h2, [tabindex]");
    if (found) {
      if (!found.matches("a, button, input, select, textarea, [tabindex]")) found.tabIndex = -1;
      found.focus();
    }
  }

  // Fetch a server-rendered part again and put it in place (at most one fetch at a time;
  // a change during a fetch asks for one more).
  function redrawer(box, url) {
    let busy = false;
    let again = false;
    // The part as last put in place, its forms' tokens left out (each render signs anew):
    // one that has not changed is left alone, for an hour at most (its tokens then renewed).
    let shown = null;
    let shownAt = 0;
    return async function redraw() {
      if (busy) { again = true; return; }
      busy = true;
      try {
        const response = await fetch(url, { headers: { Accept: "text/html" } });
        if (response.ok) {
          const html = await response.text();
          const same = html.replace(/<input type="hidden"[^>]*>/g, "");
          // (a focused control, refocused, is read out again)
          if (same === shown && Date.now() - shownAt < 3600e3) return;
          shown = same;
          shownAt = Date.now();
          const was = focusedIn(box);
          box.innerHTML = html;
          refocus(box, was);
        }
      } catch (err) {
        // the next change (or the timer) tries again
      } finally {
        busy = false;
        if (again) { again = false; setTimeout(redraw, 200); }
      }
    };
  }

  function listen(url, onChange, status) {
    const events = new EventSource(url);
    for (const state of STATES) events.addEventListener(state, onChange);
    events.addEventListener("open", () => {
      if (status) { status.textContent = "live"; status.classList.add("on"); }
    });
    // EventSource reconnects by itself, resuming with Last-Event-ID.
    events.addEventListener("error", () => {
      if (status) { status.textContent = "reconnecting…"; status.classList.remove("on"); }
    });
    return events;
  }

  function overview() {
    const box = document.getElementById("overview-live");
    const activity = document.getElementById("activity");
    const status = document.getElementById("live-state");
    const redraw = redrawer(box, box.dataset.live);
    let pending = null;
    listen(box.dataset.events, (event) => {
      const record = JSON.parse(event.data);
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = `${base}/jobs/${encodeURIComponent(record.id)}`;
      const id = document.createElement("code");
      id.textContent = record.id;
      link.append(id);
      const what = document.createElement("span");
      what.textContent = `${record.kind} · ${record.queue}`;
      const state = document.createElement("span");
      state.className = `state state-${record.state}`;
      state.textContent = record.state;
      item.append(state, link, what);
      activity.querySelector(".empty")?.remove();
      activity.prepend(item);
      while (activity.children.length > 30) activity.lastElementChild.remove();
      // Many changes at once (a drain) redraw once.
      if (pending === null) pending = setTimeout(() => { pending = null; redraw(); }, 300);
    }, status);
    // Ages grow without any change: redraw now and then too.
    setInterval(() => { if (!document.hidden) redraw(); }, 10000);
  }

  function job() {
    const box = document.getElementById("job-detail");
    if (box.dataset.final === "true") return;
    const redraw = redrawer(box, box.dataset.live);
    const said = document.getElementById("announce");
    const events = listen(box.dataset.events, (event) => {
      const record = JSON.parse(event.data);
      const badge = box.querySelector('[data-role="state"]');
      if (said && badge && badge.textContent !== record.state) said.textContent = `Job ${record.state}`;
      if (badge) {
        badge.textContent = record.state;
        badge.className = `state state-${record.state}`;
      }
      const progress = record.progress || {};
      const bar = box.querySelector(".progress");
      if (bar && typeof progress.fraction === "number") {
        const percent = Math.round(progress.fraction * 100);
        bar.setAttribute("aria-valuenow", String(percent));
        bar.firstElementChild.style.width = `${percent}%`;
      }
      const message = box.querySelector('[data-role="message"]');
      if (message && progress.message) message.textContent = progress.message;
      if (FINAL.has(record.state)) {
        events.close(); // the stream ends with the final state
        box.dataset.final = "true";
        redraw(); // error, traceback, result, actions as the server renders them
      }
    }, null);
    // A job deleted (purged) while its page is open: its stream ends, and coming back it
    // is refused (404), which closes an EventSource for good. Say so, rather than go on
    // showing the job as it was, with actions that would only answer 404.
    events.addEventListener("error", async () => {
      if (events.readyState !== EventSource.CLOSED || box.dataset.final === "true") return;
      try {
        const response = await fetch(box.dataset.live, { headers: { Accept: "text/html" } });
        if (response.status !== 404) return;
      } catch (err) {
        return;
      }
      box.dataset.final = "true";
      const gone = document.createElement("p");
      gone.className = "notice";
      gone.tabIndex = -1;
      gone.dataset.testid = "job-gone";
      gone.textContent = "This job no longer exists: it was deleted since this page was shown.";
      box.replaceChildren(gone);
      gone.focus();
      if (said) said.textContent = gone.textContent;
    });
  }

  document.addEventListener("submit", (event) => {
    const question = event.target.closest("form[data-confirm]")?.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });
  // An action's notice is there as the page loads: focused, it is read out.
  document.querySelector('[data-testid="notice"]')?.focus();
  if (document.body.dataset.page === "overview") overview();
  if (document.getElementById("job-detail")) job();
})();
