// Kylon admin: the usage chart, the copy button and confirmations. Hand-written,
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

  function drawChart(box) {
    var data = JSON.parse(box.getAttribute("data-series"));
    var series = data.series;
    var width = Math.max(280, box.clientWidth || 600);
    var height = width < 500 ? 200 : 240;
    var pad = { left: 40, right: 52, top: 14, bottom: 26 };
    var plotW = width - pad.left - pad.right;
    var plotH = height - pad.top - pad.bottom;
    var requests = series.map(function (p) { return p.requests; });
    var credits = series.map(function (p) { return parseFloat(p.credits); });
    var maxRequests = niceMax(Math.max.apply(null, requests));
    var maxCredits = niceMax(Math.max.apply(null, credits));
    var slot = plotW / series.length;
    var barW = Math.max(1, slot * 0.7);

    var svg = el("svg", { viewBox: "0 0 " + width + " " + height, width: width, height: height });
    [0, 0.5, 1].forEach(function (f) {
      var y = pad.top + plotH * (1 - f);
      el("line", { "class": "grid-line", x1: pad.left, x2: width - pad.right, y1: y, y2: y }, svg);
      el("text", { x: pad.left - 6, y: y + 4, "text-anchor": "end" }, svg, short(maxRequests * f));
      el("text", { x: width - pad.right + 6, y: y + 4, "text-anchor": "start" }, svg, short(maxCredits * f));
    });

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

    var labels = Math.max(2, Math.min(series.length, Math.floor(plotW / 60)));
    var every = Math.ceil(series.length / labels);
    series.forEach(function (p, i) {
      if ((series.length - 1 - i) % every === 0) {
        el("text", { x: pad.left + i * slot + slot / 2, y: height - 8, "text-anchor": "middle" }, svg, bucketLabel(p.start, data.bucket));
      }
    });
    if (Math.max.apply(null, requests) === 0) {
      el("text", { "class": "empty", x: pad.left + plotW / 2, y: pad.top + plotH / 2, "text-anchor": "middle" }, svg, "No requests in this period");
    }
    while (box.firstChild) { box.removeChild(box.firstChild); }
    box.appendChild(svg);
    box.setAttribute("data-drawn", "1");
  }

  function setUpCharts() {
    var boxes = document.querySelectorAll("[data-series]");
    if (!boxes.length) { return; }
    boxes.forEach(drawChart);
    var timer = null;
    window.addEventListener("resize", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { boxes.forEach(drawChart); }, 150);
    });
  }

  function selectAndCopy(field) {
    field.focus();
    field.select();
    try { return document.execCommand("copy"); } catch (e) { return false; }
  }

  function setUpCopyButtons() {
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var field = document.getElementById(button.getAttribute("data-copy"));
        var label = button.textContent;
        function done(ok) {
          button.textContent = ok ? "Copied" : "Press Ctrl+C";
          setTimeout(function () { button.textContent = label; }, 2000);
        }
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(field.value).then(function () { done(true); }, function () { done(selectAndCopy(field)); });
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

  setUpCharts();
  setUpCopyButtons();
  setUpConfirmations();
}());
