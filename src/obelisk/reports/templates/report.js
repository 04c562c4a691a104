"use strict";
(function () {
  var form = document.getElementById("filters");
  var items = Array.prototype.slice.call(document.querySelectorAll("#finding-list > .finding"));
  var shown = document.getElementById("shown");
  var none = document.getElementById("none-shown");
  function checked(name) {
    var out = {};
    Array.prototype.forEach.call(form.querySelectorAll("input[name=" + name + "]"), function (el) { if (el.checked) out[el.value] = true; });
    return out;
  }
  function apply() {
    var statuses = checked("status"), severities = checked("severity");
    var benchmark = form.elements.benchmark.value, section = form.elements.section.value;
    var q = form.elements.q.value.trim().toLowerCase();
    var n = 0;
    items.forEach(function (el) {
      var d = el.dataset;
      var ok = statuses[d.status] && severities[d.severity] && (!benchmark || d.benchmark.split(" ").indexOf(benchmark) >= 0) &&
        (!section || d.section === section) && (!q || el.textContent.toLowerCase().indexOf(q) >= 0);
      el.hidden = !ok;
      if (ok) n++;
    });
    shown.textContent = n + " of " + items.length + " shown";
    none.hidden = n !== 0;
  }
  form.addEventListener("change", apply);
  form.addEventListener("input", apply);
  Array.prototype.forEach.call(document.querySelectorAll(".tile[data-status]"), function (tile) {
    if (tile.tagName !== "BUTTON") return;
    tile.addEventListener("click", function () {
      var want = tile.dataset.status;
      Array.prototype.forEach.call(form.querySelectorAll("input[name=status]"), function (el) { el.checked = el.value === want; });
      apply();
      form.scrollIntoView({ behavior: "smooth" });
    });
  });
  var expand = document.getElementById("expand");
  expand.addEventListener("click", function () {
    var open = expand.textContent === "Expand all";
    items.forEach(function (el) { if (!el.hidden) el.open = open; });
    expand.textContent = open ? "Collapse all" : "Expand all";
  });
  // Printing shows every finding that passes the filters with its evidence.
  window.addEventListener("beforeprint", function () { items.forEach(function (el) { if (!el.hidden) el.open = true; }); });
  // Filters can be preset from the address: report.html#status=fail,error&severity=high&section=worker
  function fromHash() {
    var params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    ["status", "severity"].forEach(function (name) {
      if (!params.has(name)) return;
      var want = params.get(name).split(",");
      Array.prototype.forEach.call(form.querySelectorAll("input[name=" + name + "]"), function (el) {
        el.checked = want.indexOf(el.value) >= 0;
      });
    });
    ["benchmark", "section", "q"].forEach(function (name) {
      if (params.has(name)) form.elements[name].value = params.get(name);
    });
  }
  window.addEventListener("hashchange", function () { fromHash(); apply(); });
  fromHash();
  apply();
  // A live page (the fleet dashboard) reloads itself, keeping the address and so the filters;
  // the operator can pause it while reading.
  var period = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
  var live = document.getElementById("auto-refresh");
  if (period > 0 && live) {
    var timer = null;
    var arm = function () {
      window.clearTimeout(timer);
      if (live.checked) timer = window.setTimeout(function () { window.location.reload(); }, period * 1000);
    };
    live.addEventListener("change", arm);
    arm();
  }
  document.documentElement.setAttribute("data-ready", "1");
})();
