// The Aegis inbox: live pending list, ticking clocks, keyboard shortcuts.
// Served as a file so the Content-Security-Policy can forbid inline script.
// Nothing here writes HTML from strings except the server's own escaped
// fragment, which is parsed, not evaluated (scripts in it never run).
"use strict";

(function () {
  function duration(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
    var m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + String(m).padStart(2, "0") + "m";
    if (m) return m + "m " + String(s).padStart(2, "0") + "s";
    return s + "s";
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-since-ms]").forEach(function (el) {
      var t = Number(el.dataset.sinceMs);
      if (!isNaN(t)) el.textContent = duration((now - t) / 1000);
    });
    document.querySelectorAll("[data-until-ms]").forEach(function (el) {
      var t = Number(el.dataset.untilMs);
      if (isNaN(t)) return;
      var left = (t - now) / 1000;
      el.textContent = left > 0 ? duration(left) : "expired";
      el.classList.toggle("urgent", left < 300);
    });
  }

  function rowIds(tbody) {
    return Array.prototype.map.call(tbody.querySelectorAll("tr[data-id]"), function (tr) {
      return tr.dataset.id;
    });
  }

  function livePending() {
    var live = document.getElementById("live");
    var tbody = document.getElementById("pending-rows");
    if (!live || !tbody || !window.EventSource) return;
    var busy = false, again = false;

    function refresh() {
      if (busy) { again = true; return; }
      busy = true;
      fetch(live.dataset.fragment, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (response.status === 401 || response.redirected) { window.location.reload(); return null; }
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.text();
        })
        .then(function (html) {
          if (html === null) return;
          var before = rowIds(tbody);
          // parsed into an inert document: nothing in it runs
          var doc = new DOMParser().parseFromString("<table><tbody>" + html + "</tbody></table>", "text/html");
          var rows = Array.prototype.slice.call(doc.querySelectorAll("tbody > tr"));
          rows.forEach(function (tr) {
            if (before.indexOf(tr.dataset.id) < 0) tr.classList.add("new");
          });
          tbody.replaceChildren.apply(tbody, rows.map(function (tr) { return document.importNode(tr, true); }));
          var empty = document.getElementById("pending-empty");
          if (empty) empty.hidden = rows.length > 0;
          var count = document.getElementById("pending-count");
          if (count) count.textContent = String(rows.length);
          tick();
        })
        .catch(function () { /* the next event or the reconnect tries again */ })
        .finally(function () {
          busy = false;
          if (again) { again = false; refresh(); }
        });
    }

    var source = new EventSource(live.dataset.events);
    source.addEventListener("open", function () { live.classList.add("on"); live.textContent = "live"; });
    source.addEventListener("error", function () { live.classList.remove("on"); live.textContent = "reconnecting"; });
    source.addEventListener("pending", function (event) {
      var ids = null;
      try { ids = JSON.parse(event.data); } catch (e) { ids = null; }
      if (Array.isArray(ids) && ids.join("\n") === rowIds(tbody).join("\n")) return;
      refresh();
    });
    source.addEventListener("signout", function () { source.close(); window.location.reload(); });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  function clickableRows() {
    document.addEventListener("click", function (event) {
      var row = event.target.closest && event.target.closest("tr[data-href]");
      if (!row || event.target.closest("a, button, input, select, textarea")) return;
      window.location.assign(row.dataset.href);
    });
  }

  function shortcuts() {
    var form = document.getElementById("decide");
    if (!form) return;
    document.addEventListener("keydown", function (event) {
      if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
      var tag = (event.target.tagName || "").toLowerCase();
      if (tag === "input" || tag === "textarea" || tag === "select" || event.target.isContentEditable) {
        if (event.key === "Escape") event.target.blur();
        return;
      }
      var button = null;
      if (event.key === "a") button = document.getElementById("approve");
      else if (event.key === "d") button = document.getElementById("deny");
      else if (event.key === "c") { event.preventDefault(); var c = document.getElementById("comment"); if (c && !c.disabled) c.focus(); return; }
      if (button && !button.disabled) {
        event.preventDefault();
        form.requestSubmit(button);
      }
    });
    // one decision per click: a double submit would only earn a 409
    form.addEventListener("submit", function () {
      setTimeout(function () {
        form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
      }, 0);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    tick();
    setInterval(tick, 1000);
    livePending();
    clickableRows();
    shortcuts();
  });
})();
