// edgeship fleet dashboard: live updates without a reload. The server renders every page;
// this script listens to /events (server-sent events) and re-fetches the page's <main>
// when the fleet changed, and filters the devices table as you type. No framework, no CDN.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var live = document.getElementById("live");
  var busy = false, again = false;
  document.body.dataset.refreshes = "0";

  function refresh() {
    var focus = document.activeElement;
    if (focus && focus.id === "q") { refreshKeepingFocus(); return; }
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.pathname + location.search,
          { headers: { "X-Fragment": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (text !== null && text !== main.innerHTML) { main.innerHTML = text; }
        document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes) + 1);
      })
      .catch(function () { /* the next event tries again */ })
      .then(function () {
        busy = false;
        if (again) { again = false; setTimeout(refresh, 100); }
      });
  }

  if (window.EventSource) {
    var source = new EventSource("/events");
    source.addEventListener("change", refresh);
    source.onopen = function () { live.classList.add("on"); };
    source.onerror = function () { live.classList.remove("on"); };
  }

  // typing in the filter box narrows the table (the server filters and pages it)
  var timer = null;
  main.addEventListener("input", function (ev) {
    if (ev.target.id !== "q") { return; }
    clearTimeout(timer);
    timer = setTimeout(function () {
      var form = ev.target.form, params = new URLSearchParams(new FormData(form));
      params.delete("page");
      history.replaceState(null, "", "/?" + params.toString());
      busy = false;
      refreshKeepingFocus();
    }, 250);
  });
  main.addEventListener("change", function (ev) {
    if (ev.target.id === "only") { ev.target.form.submit(); }
  });

  function refreshKeepingFocus() {
    var box = document.getElementById("q"), caret = box ? box.selectionStart : 0;
    fetch(location.pathname + location.search, { headers: { "X-Fragment": "1" } })
      .then(function (r) { return r.text(); })
      .then(function (text) {
        var table = new DOMParser().parseFromString("<main>" + text + "</main>", "text/html");
        ["devices", "count"].forEach(function (id) {
          var fresh = table.getElementById(id), old = document.getElementById(id);
          if (fresh && old) { old.replaceWith(fresh); }
        });
        var pager = table.querySelector(".pager"), oldPager = main.querySelector(".pager");
        if (pager && oldPager) { oldPager.replaceWith(pager); }
        if (box) { box.focus(); box.setSelectionRange(caret, caret); }
      });
  }
})();
