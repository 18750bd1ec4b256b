// Kylon admin: the charts, phone cards, folded filters, copy buttons and confirmations. Hand-written,
// no library; loaded from /static because the pages' CSP forbids inline script.
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";

  function el(name, attrs, parent, text) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    if (parent) { parent.appendChild(node); }
    return node;
  }

  // A round axis maximum: 1, 2, 5 × 10^n.
  function niceMax(value) {
    if (value <= 0) { return 1; }
    var power = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (value <= steps[i] * power) { return steps[i] * power; }
    }
    return 10 * power;
  }

  function short(n) {
    if (n === 0) { return "0"; }
    if (n >= 1000) { return (n / 1000).toFixed(n >= 10000 ? 0 : 1) + "k"; }
    if (n >= 1) { return String(Math.round(n * 100) / 100); }
    return n.toPrecision(2);
  }

  function bucketLabel(iso, bucket) {
    // "2025-01-02T03:00:00Z" -> "03:00" per hour, "01-02" per day
    return bucket === "hour" ? iso.slice(11, 16) : iso.slice(5, 10);
  }

  // The chart's size, plot area and empty SVG, from its box's width.
  function frame(box, pad) {
    var width = Math.max(280, box.clientWidth || 600);
    var height = width < 500 ? 200 : 240;
    return { width: width, height: height, pad: pad, plotW: width - pad.left - pad.right, plotH: height - pad.top - pad.bottom,
             svg: el("svg", { viewBox: "0 0 " + width + " " + height, width: width, height: height }) };
  }

  // Three grid lines (0, half, top) with the axis labels each side gives.
  function gridLines(f, leftLabel, rightLabel) {
    [0, 0.5, 1].forEach(function (share) {
      var y = f.pad.top + f.plotH * (1 - share);
      el("line", { "class": "grid-line", x1: f.pad.left, x2: f.width - f.pad.right, y1: y, y2: y }, f.svg);
      el("text", { x: f.pad.left - 6, y: y + 4, "text-anchor": "end" }, f.svg, leftLabel(share));
      if (rightLabel) {
        el("text", { x: f.width - f.pad.right + 6, y: y + 4, "text-anchor": "start" }, f.svg, rightLabel(share));
      }
    });
  }

  // The time labels under the bars, and the drawn chart in place of the box's content.
  function finish(box, f, series, bucket) {
    var slot = f.plotW / series.length;
    var labels = Math.max(2, Math.min(series.length, Math.floor(f.plotW / 60)));
    var every = Math.ceil(series.length / labels);
    series.forEach(function (p, i) {
      if ((series.length - 1 - i) % every === 0) {
        el("text", { x: f.pad.left + i * slot + slot / 2, y: f.height - 8, "text-anchor": "middle" }, f.svg, bucketLabel(p.start, bucket));
      }
    });
    while (box.firstChild) { box.removeChild(box.firstChild); }
    box.appendChild(f.svg);
    box.setAttribute("data-drawn", "1");
  }

  function drawChart(box) {
    var data = JSON.parse(box.getAttribute("data-series"));
    var series = data.series;
    var f = frame(box, { left: 40, right: 52, top: 14, bottom: 26 });
    var width = f.width, pad = f.pad, plotW = f.plotW, plotH = f.plotH, svg = f.svg;
    var requests = series.map(function (p) { return p.requests; });
    var credits = series.map(function (p) { return parseFloat(p.credits); });
    var maxRequests = niceMax(Math.max.apply(null, requests));
    var maxCredits = niceMax(Math.max.apply(null, credits));
    var slot = plotW / series.length;
    var barW = Math.max(1, slot * 0.7);

    gridLines(f, function (share) { return short(maxRequests * share); }, function (share) { return short(maxCredits * share); });

    var points = [];
    series.forEach(function (p, i) {
      var h = plotH * p.requests / maxRequests;
      var x = pad.left + i * slot;
      var bar = el("rect", {
        "class": "bar", x: x + (slot - barW) / 2, y: pad.top + plotH - h, width: barW, height: h,
        "data-requests": p.requests, "data-credits": p.credits
      }, svg);
      el("title", {}, bar, p.start.replace("T", " ").slice(0, 16) + " UTC: " + p.requests + " requests, " + p.credits + " credits");
      points.push([x + slot / 2, pad.top + plotH * (1 - credits[i] / maxCredits)]);
    });
    el("polyline", { "class": "line", points: points.map(function (pt) { return pt.join(","); }).join(" ") }, svg);
    if (series.length <= 31) {
      points.forEach(function (pt, i) {
        if (credits[i] > 0) { el("circle", { "class": "dot", cx: pt[0], cy: pt[1], r: 2.5 }, svg); }
      });
    }

    if (Math.max.apply(null, requests) === 0) {
      el("text", { "class": "empty", x: pad.left + plotW / 2, y: pad.top + plotH / 2, "text-anchor": "middle" }, svg, "No requests in this period");
    }
    finish(box, f, series, data.bucket);
  }

  // Bars stacked by group (provider or model): data-stack holds, per bucket,
  // one figure per group for the measure named in data-metric.
  function drawStacked(box) {
    var data = JSON.parse(box.getAttribute("data-stack"));
    var metric = box.getAttribute("data-metric");
    var series = data.series;
    var f = frame(box, { left: 46, right: 10, top: 14, bottom: 26 });
    var width = f.width, pad = f.pad, plotW = f.plotW, plotH = f.plotH, svg = f.svg;
    var values = series.map(function (p) { return p[metric].map(parseFloat); });
    var totals = values.map(function (v) { return v.reduce(function (a, b) { return a + b; }, 0); });
    var top = niceMax(Math.max.apply(null, totals));
    var slot = plotW / series.length;
    var barW = Math.max(1, slot * 0.7);
    gridLines(f, function (share) { return (metric === "credits" ? "$" : "") + short(top * share); });
    series.forEach(function (p, i) {
      var y = pad.top + plotH;
      values[i].forEach(function (v, g) {
        if (v <= 0) { return; }
        var h = plotH * v / top;
        y -= h;
        var seg = el("rect", { "class": "seg s" + g, x: pad.left + i * slot + (slot - barW) / 2, y: y, width: barW, height: h,
                               "data-group": data.groups[g], "data-value": p[metric][g] }, svg);
        el("title", {}, seg, p.start.replace("T", " ").slice(0, 16) + " UTC, " + (data.groups[g] || "(no model)") + ": " +
           (metric === "credits" ? "$" + p.credits[g] : p.requests[g] + " requests"));
      });
    });
    finish(box, f, series, data.bucket);
  }

  function setUpCharts() {
    var charts = [];
    document.querySelectorAll("[data-series]").forEach(function (box) { charts.push([drawChart, box]); });
    document.querySelectorAll("[data-stack]").forEach(function (box) { charts.push([drawStacked, box]); });
    if (!charts.length) { return; }
    function drawAll() { charts.forEach(function (c) { c[0](c[1]); }); }
    drawAll();
    var timer = null;
    window.addEventListener("resize", function () {
      clearTimeout(timer);
      timer = setTimeout(drawAll, 150);
    });
  }

  // Cards on a phone: each cell is labelled with its column's heading.
  function labelCells() {
    document.querySelectorAll("table").forEach(function (table) {
      var heads = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) { return th.textContent.trim(); });
      table.querySelectorAll("tbody tr").forEach(function (row) {
        Array.prototype.forEach.call(row.children, function (cell, i) {
          if (heads[i] && !cell.hasAttribute("data-label")) { cell.setAttribute("data-label", heads[i]); }
        });
      });
    });
  }

  // Filters fold away behind their button on a narrow screen.
  function foldFilters() {
    if (window.matchMedia("(max-width: 40rem)").matches) {
      document.querySelectorAll("details[data-fold]").forEach(function (d) { d.open = false; });
    }
  }

  function selectAndCopy(field) {
    if (!field.select) { return false; }
    field.focus();
    field.select();
    try { return document.execCommand("copy"); } catch (e) { return false; }
  }

  function setUpCopyButtons() {
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var field = document.getElementById(button.getAttribute("data-copy"));
        var text = field.value !== undefined ? field.value : field.textContent;
        var label = button.textContent;
        function done(ok) {
          button.textContent = ok ? "Copied" : "Press Ctrl+C";
          setTimeout(function () { button.textContent = label; }, 2000);
        }
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(function () { done(true); }, function () { done(selectAndCopy(field)); });
        } else {
          done(selectAndCopy(field));
        }
      });
    });
  }

  function setUpConfirmations() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
      });
    });
  }

  labelCells();
  foldFilters();
  setUpCharts();
  setUpCopyButtons();
  setUpConfirmations();
}());
