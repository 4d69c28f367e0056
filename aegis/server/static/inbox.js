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
      // "4m 10s left", never "expired left"
      el.textContent = left > 0 ? duration(left) + (el.dataset.suffix || "") : "expired";
      el.classList.toggle("urgent", left < 300);
    });
  }

  function rowIds(tbody) {
    return Array.prototype.map.call(tbody.querySelectorAll("tr[data-id]"), function (tr) {
      return tr.dataset.id;
    });
  }

  function rowApprovals(tbody) {
    return Array.prototype.map.call(tbody.querySelectorAll("tr[data-id]"), function (tr) {
      return Number(tr.dataset.approvals || 0);
    });
  }

  // A live stream of server-sent events that signs the page out reliably.
  // "signout" comes while the stream is open; but an EventSource gives up for
  // good, without any event of ours, on an answer that is not a stream: a 401
  // when the session lapsed or was ended before it first connected or while it
  // reconnected (after a dropped stream), or a server error. Then the page
  // itself is asked: signed out, it answers with the sign-in page (the reload
  // goes there); otherwise the stream connects again a little later.
  function liveEvents(url, listen) {
    var source = null, stopped = false;
    function connect() {
      if (stopped) return;
      source = new EventSource(url);
      var current = source;
      current.addEventListener("signout", function () { stop(); window.location.reload(); });
      current.addEventListener("error", function () {
        if (stopped || current.readyState !== EventSource.CLOSED) return;
        fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html", "X-Inbox-Peek": "1" } })
          .then(function (response) {
            if (response.status === 401 || response.redirected) { stop(); window.location.reload(); return; }
            setTimeout(connect, 5000);
          })
          .catch(function () { setTimeout(connect, 5000); });
      });
      listen(current);
    }
    function stop() {
      stopped = true;
      if (source) source.close();
    }
    connect();
    window.addEventListener("pagehide", stop);
    return { close: stop };
  }

  function livePending() {
    var live = document.getElementById("live");
    var tbody = document.getElementById("pending-rows");
    if (!live || !tbody || !window.EventSource) return;
    var busy = false, again = false, total = null, matching = null;
    // rows whose approvals went down while shown (a revoked reviewer's, withdrawn):
    // id -> the count after, marked until the count moves on
    var withdrawn = {};

    function markWithdrawn(tr) {
      var left = Number(tr.dataset.approvals || 0);
      if (!(tr.dataset.id in withdrawn)) return;
      if (withdrawn[tr.dataset.id] !== left) { delete withdrawn[tr.dataset.id]; return; }
      tr.classList.add("withdrawn");
      var line = tr.querySelector(".approvals-line");
      if (line && !line.querySelector(".withdrawn-note")) {
        var note = document.createElement("strong");
        note.className = "withdrawn-note";
        note.textContent = " \u2013 an approval was withdrawn";
        line.appendChild(note);
      }
    }

    function refresh() {
      if (busy) { again = true; return; }
      busy = true;
      fetch(live.dataset.fragment, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (response.status === 401 || response.redirected) { window.location.reload(); return null; }
          if (!response.ok) throw new Error("HTTP " + response.status);
          total = response.headers.get("X-Pending-Total");
          matching = response.headers.get("X-Pending-Matching");
          return response.text();
        })
        .then(function (html) {
          if (html === null) return;
          var before = rowIds(tbody), had = rowApprovals(tbody);
          // parsed into an inert document: nothing in it runs
          var doc = new DOMParser().parseFromString("<table><tbody>" + html + "</tbody></table>", "text/html");
          var rows = Array.prototype.slice.call(doc.querySelectorAll("tbody > tr"));
          rows.forEach(function (tr) {
            var at = before.indexOf(tr.dataset.id);
            if (at < 0) tr.classList.add("new");
            else if (Number(tr.dataset.approvals || 0) < had[at]) withdrawn[tr.dataset.id] = Number(tr.dataset.approvals || 0);
          });
          rows = rows.map(function (tr) { return document.importNode(tr, true); });
          rows.forEach(markWithdrawn);
          tbody.replaceChildren.apply(tbody, rows);
          var empty = document.getElementById("pending-empty");
          if (empty) empty.hidden = rows.length > 0;
          var count = document.getElementById("pending-count");
          if (count) count.textContent = total !== null ? total : String(rows.length);
          var summary = document.getElementById("pending-total");
          if (summary && total !== null) {
            // the first page, as filtered and sorted: the live list never pages
            summary.textContent = total + " pending in all" +
              (summary.dataset.filtered && matching !== null ? "; " + matching + " match the filters" : "") +
              (rows.length < Number(summary.dataset.filtered ? matching : total) ? "; " + rows.length + " on this page" : "") + ".";
          }
          tick();
        })
        .catch(function () { /* the next event or the reconnect tries again */ })
        .finally(function () {
          busy = false;
          if (again) { again = false; refresh(); }
        });
    }

    liveEvents(live.dataset.events, function (source) {
      source.addEventListener("open", function () { live.classList.add("on"); live.textContent = "live"; });
      source.addEventListener("error", function () { live.classList.remove("on"); live.textContent = "reconnecting"; });
      source.addEventListener("pending", function (event) {
        var data = null;
        try { data = JSON.parse(event.data); } catch (e) { data = null; }
        var count = document.getElementById("pending-count");
        if (data && Array.isArray(data.ids) && data.ids.join("\n") === rowIds(tbody).join("\n") &&
            (!Array.isArray(data.approvals) || data.approvals.join(",") === rowApprovals(tbody).join(",")) &&
            (!count || count.textContent === String(data.total))) return;
        refresh();
      });
    });
  }

  function clickableRows() {
    document.addEventListener("click", function (event) {
      var row = event.target.closest && event.target.closest("tr[data-href]");
      if (!row || event.target.closest("a, button, input, select, textarea")) return;
      window.location.assign(row.dataset.href);
    });
  }

  function shortcuts() {
    var next = document.getElementById("next-request");
    if (next) {
      next.focus();
      document.addEventListener("keydown", function (event) {
        var tag = (event.target.tagName || "").toLowerCase();
        if (event.key !== "n" || event.ctrlKey || event.metaKey || event.altKey) return;
        if (tag === "input" || tag === "textarea" || tag === "select") return;
        event.preventDefault();
        window.location.assign(next.href);
      });
    }
    var form = document.getElementById("decide");
    if (!form) return;
    document.addEventListener("keydown", function (event) {
      if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
      var tag = (event.target.tagName || "").toLowerCase();
      // a checkbox takes no letters: a, d and c work on from the confirm box
      var box = tag === "input" && event.target.type === "checkbox";
      if ((tag === "input" && !box) || tag === "textarea" || tag === "select" || event.target.isContentEditable) {
        if (event.key === "Escape") event.target.blur();
        return;
      }
      var button = null;
      if (event.key === "a") button = document.getElementById("approve");
      else if (event.key === "d") button = document.getElementById("deny");
      else if (event.key === "c") { event.preventDefault(); var c = document.getElementById("comment"); if (c && !c.disabled) c.focus(); return; }
      if (button && !button.disabled) {
        event.preventDefault();
        if (button.id === "approve" && !confirmed()) return;
        form.requestSubmit(button);
      }
    });
    // a HIGH or CRITICAL approval needs its box ticked, by keyboard as by mouse
    function confirmed() {
      var box = document.getElementById("confirm");
      if (!box || box.checked) return true;
      var label = box.closest("label");
      if (label) label.classList.add("ask");
      box.focus();
      return false;
    }
    form.addEventListener("submit", function (event) {
      if (event.submitter && event.submitter.id === "approve" && !confirmed()) event.preventDefault();
    });
    // one decision per click: a double submit would only earn a 409
    form.addEventListener("submit", function (event) {
      if (event.defaultPrevented) return;
      setTimeout(function () {
        form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
      }, 0);
    });
  }

  // the open request decided elsewhere (another reviewer, expiry, the agent): say so live
  function watchRequest() {
    var article = document.getElementById("request");
    var gone = document.getElementById("gone");
    if (!article || !gone || !article.dataset.events || !window.EventSource) return;
    // signed out meanwhile (revoked, or signed out elsewhere): liveEvents reloads,
    // and nothing here may be decided
    var source = liveEvents(article.dataset.events, function (stream) {
      stream.addEventListener("pending", onPending);
    });
    function onPending(event) {
      var data = null;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      var state = data && data.request;
      if (state && state.id === article.dataset.id) {
        if (state.status !== "pending") { decided(state.status); return; }
        if (Array.isArray(state.approved_by)) lost(state.approved_by, state.approvers);
        return;
      }
      var ids = data && data.ids;
      if (!Array.isArray(ids) || ids.indexOf(article.dataset.id) >= 0) return;
      // not among the newest pending: ask the page itself whether it still is
      fetch(window.location.pathname, { credentials: "same-origin", headers: { "Accept": "text/html", "X-Inbox-Peek": "1" } })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) {
          if (html === null) return;
          var doc = new DOMParser().parseFromString(html, "text/html");
          var now = doc.getElementById("request");
          if (now && now.dataset.status !== "pending") decided(now.dataset.status);
        })
        .catch(function () { /* the next event asks again */ });
    }
    // approvals this page shows that no longer count (their reviewer's token or
    // access was revoked): marked, and the form stays shut until a reload
    function lost(approvedBy, approvers) {
      var stale = Array.prototype.filter.call(
        document.querySelectorAll(".decisions li[data-verdict='approve']"),
        function (li) { return approvedBy.indexOf(li.dataset.reviewer) < 0 && !li.classList.contains("withdrawn"); });
      if (!stale.length) return;
      stale.forEach(function (li) {
        li.classList.add("withdrawn");
        var mark = document.createElement("strong");
        mark.className = "withdrawn-note";
        mark.textContent = " withdrawn: no longer counts";
        li.appendChild(mark);
      });
      var count = document.getElementById("approved-count");
      if (count) count.textContent = String(approvedBy.length);
      gone.textContent = (stale.length === 1 ? "An approval" : stale.length + " approvals") +
        " of this request " + (stale.length === 1 ? "was" : "were") +
        " withdrawn while you had it open (the reviewer's access was revoked): " +
        approvedBy.length + " of " + approvers + " approvals now count. Reload to see it as it stands before you decide.";
      gone.classList.add("withdrawn");
      gone.hidden = false;
      shut();
      var buttons = document.getElementById("decide-buttons");
      if (buttons) buttons.hidden = true;
    }
    function shut() {
      document.querySelectorAll("#decide button, #decide textarea, #decide input").forEach(function (el) {
        if (el.type !== "hidden") el.disabled = true;
      });
    }
    function decided(status) {
      source.close();
      gone.textContent = "This request was " + status + " elsewhere while you had it open; nothing you do here changes it. Reload to see who decided.";
      gone.hidden = false;
      document.querySelectorAll("#decide button, #decide textarea, #decide input").forEach(function (el) {
        if (el.type !== "hidden") el.disabled = true;
      });
    }
    window.addEventListener("pagehide", function () { source.close(); });
    // deciding here: the page is about to go on, nothing to watch any more
    var form = document.getElementById("decide");
    if (form) form.addEventListener("submit", function (event) {
      // after every listener: the confirm box may still hold the approval back
      setTimeout(function () { if (!event.defaultPrevented) source.close(); }, 0);
    });
  }

  // what the last step did (e.g. "Decided: approved ..."), read out once the page has loaded
  function announce() {
    var flash = document.querySelector(".flash");
    var region = document.getElementById("announce");
    if (!flash || !region) return;
    setTimeout(function () { region.textContent = flash.textContent; }, 250);
  }

  document.addEventListener("DOMContentLoaded", function () {
    announce();
    watchRequest();
    tick();
    setInterval(tick, 1000);
    livePending();
    clickableRows();
    shortcuts();
  });
})();
