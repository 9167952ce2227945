// pg_eventstore's stream browser: the little the pages do in the browser.
// - Pages with a [data-refresh] element reload every that many seconds (the dashboard,
//   groups, projections), unless the reader is typing in a form.
// - The global log's "Follow live" box opens the server-sent feed and puts each new event
//   on top of the table. Every value goes in as text, never as HTML.
"use strict";

(function () {
  const refresh = document.querySelector("[data-refresh]");
  if (refresh) {
    const seconds = Number(refresh.dataset.refresh) || 5;
    setInterval(function () {
      const active = document.activeElement;
      if (!active || !["INPUT", "SELECT", "TEXTAREA"].includes(active.tagName)) {
        location.reload();
      }
    }, seconds * 1000);
  }

  const live = document.getElementById("live");
  if (!live) {
    return;
  }
  const status = document.getElementById("live-status");
  const body = document.querySelector("#log tbody");
  let feed = null;
  let received = 0;

  function link(href, text) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  }

  function cell(row, content) {
    const td = document.createElement("td");
    if (typeof content === "string") {
      td.textContent = content;
    } else {
      td.appendChild(content);
    }
    row.appendChild(td);
  }

  function show(event) {
    const e = JSON.parse(event.data);
    const stream = new URLSearchParams({ name: e.stream });
    const at = new URLSearchParams({ name: e.stream, dir: "backwards", from: String(e.version) });
    const row = document.createElement("tr");
    row.className = "arrived";
    cell(row, String(e.position));
    cell(row, link("/ui/stream?" + stream.toString(), e.stream));
    cell(row, link("/ui/stream?" + at.toString() + "#v" + e.version, String(e.version)));
    cell(row, e.type);
    cell(row, e.recorded_at);
    cell(row, link("/ui/event?" + new URLSearchParams({ id: e.id }).toString(), e.id));
    const code = document.createElement("code");
    code.textContent = e.data;
    cell(row, code);
    body.insertBefore(row, body.firstChild);
    const empty = document.querySelector("p.empty");
    if (empty) {
      empty.remove();
    }
    received += 1;
    status.textContent = "live: " + received + " new";
  }

  live.addEventListener("change", function () {
    if (live.checked) {
      feed = new EventSource(live.dataset.feed);
      feed.onopen = function () {
        status.textContent = "live: " + received + " new";
      };
      feed.onmessage = show;
      feed.addEventListener("failure", function (event) {
        status.textContent = "live feed failed: " + event.data;
      });
      feed.onerror = function () {
        status.textContent = "live: reconnecting…";
      };
    } else if (feed) {
      feed.close();
      feed = null;
      status.textContent = "";
    }
  });
})();
