/* bmsgw web page: the charts (uPlot, shipped with the package) and nothing else. No inline script: CSP. */
(function () {
  "use strict";

  var COLORS = { normal: "#2e8b57", warning: "#e6a100", critical: "#d0312d", unknown: "#4a90c8", stale: "#a0a6ae" };
  var LEVELS = ["normal", "warning", "critical", "unknown", "stale"];
  var STRING_COLORS = ["#1f5fa8", "#d0312d", "#2e8b57", "#8e44ad"];
  window.bmsgw = { charts: {} };

  function getJSON(url) {
    return fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" }).then(function (r) {
      if (r.status === 401) {
        location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
        throw new Error("login needed");
      }
      return r.json().then(function (body) {
        if (!r.ok) throw new Error(body && body.message ? body.message : "HTTP " + r.status);
        return body;
      });
    });
  }

  function chartWidth(el) { return Math.max(260, Math.floor(el.getBoundingClientRect().width) || 320); }
  function fmt(v, digits) { return v == null ? "–" : Number(v).toFixed(digits); }
  function dateText(ts) { return ts == null ? "–" : new Date(ts * 1000).toISOString().slice(0, 10); }

  function onResize(fn) {
    var t = null;
    window.addEventListener("resize", function () { clearTimeout(t); t = setTimeout(fn, 150); });
  }

  /* ---- string page: bar charts of every battery, coloured by alarm state ---- */
  function levelOf(cell, point) {
    var p = cell.points[point];
    if (!p || p.value == null || p.quality !== "GOOD") return "stale";
    var a = cell.points.alarm_level;
    if (!a || a.value == null) return "unknown";
    return a.value >= 2 ? "critical" : a.value >= 1 ? "warning" : "normal";
  }

  function barData(cells, point, factor) {
    var xs = [], cols = LEVELS.map(function () { return []; });
    cells.forEach(function (c) {
      xs.push(c.cell);
      var lvl = levelOf(c, point), p = c.points[point];
      var v = p && p.value != null ? p.value * factor : null;
      LEVELS.forEach(function (l, k) { cols[k].push(l === lvl ? v : null); });
    });
    return [xs].concat(cols);
  }

  function yRange(data) {
    var lo = Infinity, hi = -Infinity;
    for (var k = 1; k < data.length; k++) data[k].forEach(function (v) {
      if (v != null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    });
    if (!isFinite(lo)) return [0, 1];
    var pad = (hi - lo) * 0.15 || Math.abs(hi) * 0.02 || 1;
    return [lo - pad, hi + pad];
  }

  function initBars(root) {
    var sid = root.dataset.string, api = root.dataset.api, trendUrl = root.dataset.trend;
    var readout = document.getElementById("readout");
    var charts = [], last = null;
    var bars = uPlot.paths.bars({ size: [0.8, 40], align: 0 });

    function build(el, cells) {
      var point = el.dataset.point, unit = el.dataset.unit, factor = Number(el.dataset.factor || 1);
      var digits = point === "voltage" ? 3 : point === "ohmic" ? 2 : 1;
      var data = barData(cells, point, factor);
      var n = cells.length;
      var opts = {
        width: chartWidth(el), height: 220,
        legend: { show: false },
        cursor: { drag: { x: false, y: false }, points: { show: false } },
        scales: { x: { time: false, range: function () { return [0.5, n + 0.5]; } },
                  y: { range: function (u) { return yRange(u.data); } } },
        axes: [{ size: 30, space: 40, values: function (u, vals) { return vals.map(function (v) { return Number.isInteger(v) ? v : ""; }); } },
               { size: 56, values: function (u, vals) { return vals.map(function (v) { return fmt(v, digits); }); } }],
        series: [{ label: "battery" }].concat(LEVELS.map(function (l) {
          return { label: l, fill: COLORS[l], stroke: COLORS[l], width: 0, paths: bars, points: { show: false },
                   fillTo: function (u) { return u.scales.y.min; } };
        })),
        hooks: {
          setCursor: [function (u) {
            var i = u.cursor.idx;
            if (i == null || !last) return;
            var c = last[i], p = c && c.points[point];
            readout.textContent = c ? "Battery " + c.cell + ": " + (p && p.value != null ? fmt(p.value * factor, digits) + " " + unit : "not read") +
              " (" + levelOf(c, point) + ")" : "";
          }],
        },
      };
      var u = new uPlot(opts, data, el);
      u.over.addEventListener("click", function () {
        var i = u.cursor.idx;
        if (i != null && last && last[i]) {
          location.href = trendUrl + "?point=cell." + point + "&string=" + sid + "&cell=" + last[i].cell;
        }
      });
      el.dataset.drawn = String(cells.filter(function (c) { return c.points[point] && c.points[point].value != null; }).length);
      window.bmsgw.charts[point] = u;
      return u;
    }

    function refresh(first) {
      return getJSON(api).then(function (body) {
        last = body.cells;
        var els = root.querySelectorAll(".chart.bar");
        els.forEach(function (el, k) {
          if (first) { charts[k] = build(el, last); return; }
          var point = el.dataset.point;
          charts[k].setData(barData(last, point, Number(el.dataset.factor || 1)));
          el.dataset.drawn = String(last.filter(function (c) { return c.points[point] && c.points[point].value != null; }).length);
        });
      }).catch(function (e) { readout.textContent = "Could not load the batteries: " + e.message; });
    }

    refresh(true).then(function () { setInterval(function () { refresh(false); }, 10000); });
    onResize(function () {
      root.querySelectorAll(".chart.bar").forEach(function (el, k) { if (charts[k]) charts[k].setSize({ width: chartWidth(el), height: 220 }); });
    });
  }

  /* ---- trends: one point over a chosen range, with zoom ---- */
  function initTrend(form) {
    var el = document.getElementById("trend"), info = document.getElementById("t-info");
    var title = document.getElementById("t-title");
    var sel = { point: document.getElementById("t-point"), string: document.getElementById("t-string"),
                cell: document.getElementById("t-cell"), range: document.getElementById("t-range") };
    var u = null, full = null, unit = "";
    var params = new URLSearchParams(location.search);
    ["point", "string", "cell", "range"].forEach(function (k) {
      if (params.get(k)) sel[k].value = params.get(k);
    });

    function scope() {
      var opt = sel.point.options[sel.point.selectedIndex];
      return opt ? opt.dataset.scope : "cell";
    }

    function showFields() {
      var s = scope();
      sel.cell.closest("label").style.display = s === "cell" ? "" : "none";
      sel.string.closest("label").style.display = s === "bank" ? "none" : "";
    }

    function query(from, to) {
      var q = new URLSearchParams({ point: sel.point.value, from: from.toFixed(3), to: to.toFixed(3),
                                    max_points: String(Math.min(2000, Math.max(100, chartWidth(el)))) });
      if (scope() !== "bank") q.set("string", sel.string.value);
      if (scope() === "cell") q.set("cell", sel.cell.value);
      return form.dataset.api + "?" + q.toString();
    }

    function draw(body, from, to) {
      var xs = body.samples.map(function (s) { return s.t; });
      var ys = body.samples.map(function (s) { return s.v; });
      // the in-memory buffer starts when the gateway did: show the part of the range that has samples
      if (body.source === "memory" && xs.length > 1 && xs[0] > from) from = xs[0];
      unit = body.unit;
      var where = body.cell ? "string " + body.string + " battery " + body.cell : body.string ? "string " + body.string : "";
      title.textContent = sel.point.options[sel.point.selectedIndex].text + (where ? " — " + where : "");
      info.textContent = body.samples.length + " samples" + (body.source === "memory" ? " (kept in memory since the gateway started)" : "") +
        ", " + new Date(from * 1000).toLocaleString() + " – " + new Date(to * 1000).toLocaleString();
      var data = [xs, ys];
      if (u) { u.destroy(); }
      u = new uPlot({
        width: chartWidth(el), height: 320,
        cursor: { drag: { x: true, y: false, setScale: false } },
        scales: { x: { time: true, range: function () { return [from, to]; } } },
        axes: [{}, { size: 86, values: function (uu, vals) { return vals.map(function (v) { return v + " " + unit; }); } }],
        series: [{}, { label: body.point, stroke: "#1f5fa8", width: 2, spanGaps: false, points: { show: xs.length < 80 } }],
        hooks: {
          setSelect: [function (uu) {
            if (uu.select.width < 5) return;
            var a = uu.posToVal(uu.select.left, "x"), b = uu.posToVal(uu.select.left + uu.select.width, "x");
            uu.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
            load(a, b);
          }],
        },
      }, data, el);
      u.over.addEventListener("dblclick", function () { if (full) load(full[0], full[1]); });
      el.dataset.points = String(xs.length);
      window.bmsgw.trend = u;
    }

    function load(from, to) {
      el.dataset.loading = "1";
      return getJSON(query(from, to)).then(function (body) { draw(body, from, to); })
        .catch(function (e) { info.textContent = "Could not load: " + e.message; })
        .then(function () { delete el.dataset.loading; });
    }

    function show() {
      showFields();
      var to = Date.now() / 1000, from = to - Number(sel.range.value);
      full = [from, to];
      var q = new URLSearchParams({ point: sel.point.value, string: sel.string.value, cell: sel.cell.value, range: sel.range.value });
      history.replaceState(null, "", location.pathname + "?" + q.toString());
      return load(from, to);
    }

    function zoom(f) {
      if (!u) return;
      var a = u.scales.x.min, b = u.scales.x.max, mid = (a + b) / 2, half = (b - a) / 2 * f;
      var now = Date.now() / 1000;
      load(mid - half, Math.min(now, mid + half));
    }

    form.addEventListener("submit", function (ev) { ev.preventDefault(); show(); });
    sel.point.addEventListener("change", showFields);
    document.getElementById("t-zoomin").addEventListener("click", function () { zoom(0.5); });
    document.getElementById("t-zoomout").addEventListener("click", function () { zoom(2); });
    document.getElementById("t-reset").addEventListener("click", function () { if (full) load(full[0], full[1]); });
    onResize(function () { if (u) u.setSize({ width: chartWidth(el), height: 320 }); });
    show();
  }

  /* ---- forecast: predicted replacement date of every battery ---- */
  function initForecast(el) {
    var ids = el.dataset.strings ? el.dataset.strings.split(",") : [];
    var info = document.getElementById("f-info"), table = document.getElementById("f-table");
    Promise.all(ids.map(function (s) { return getJSON(el.dataset.api + "/" + s + "/cells"); })).then(function (bodies) {
      var n = 0, rows = [];
      bodies.forEach(function (b) { n = Math.max(n, b.cells.length); });
      var xs = [];
      for (var i = 1; i <= n; i++) xs.push(i);
      var data = [xs], count = 0;
      bodies.forEach(function (b) {
        var ys = xs.map(function () { return null; });
        b.cells.forEach(function (c) {
          var p = c.points.eol_date;
          if (p && p.value != null) {
            ys[c.cell - 1] = p.value; count++;
            rows.push({ string: b.string, cell: c.cell, date: p.value,
                        early: c.points.eol_date_early ? c.points.eol_date_early.value : null,
                        late: c.points.eol_date_late ? c.points.eol_date_late.value : null });
          }
        });
        data.push(ys);
      });
      el.dataset.points = String(count);
      if (!count) {
        info.textContent = "No forecast yet: the analytics module publishes one per battery once it has enough ohmic history.";
        el.style.display = "none";
        return;
      }
      var u = new uPlot({
        width: chartWidth(el), height: 340,
        scales: { x: { time: false, range: function () { return [0.5, n + 0.5]; } }, y: { time: false } },
        cursor: { drag: { x: false, y: false } },
        axes: [{ label: "battery" }, { size: 90, values: function (uu, vals) { return vals.map(dateText); } }],
        series: [{ label: "battery" }].concat(bodies.map(function (b, k) {
          return { label: "string " + b.string, stroke: STRING_COLORS[k % 4], fill: STRING_COLORS[k % 4],
                   paths: function () { return null; }, points: { show: true, size: 7, fill: STRING_COLORS[k % 4] },
                   value: function (uu, v) { return dateText(v); } };
        })),
      }, data, el);
      window.bmsgw.charts.forecast = u;
      onResize(function () { u.setSize({ width: chartWidth(el), height: 340 }); });
      rows.sort(function (a, b) { return a.date - b.date; });
      info.textContent = count + " batteries have a forecast. Earliest:";
      var head = "<thead><tr><th>String</th><th>Battery</th><th>Replace by</th><th>Range</th></tr></thead>";
      table.innerHTML = head + "<tbody>" + rows.slice(0, 10).map(function (r) {
        return "<tr><td>" + r.string + "</td><td>" + r.cell + "</td><td>" + dateText(r.date) + "</td><td>" +
          (r.early != null ? dateText(r.early) + " – " + dateText(r.late) : "") + "</td></tr>";
      }).join("") + "</tbody>";
    }).catch(function (e) { info.textContent = "Could not load: " + e.message; });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var bars = document.getElementById("bars");
    if (bars) initBars(bars);
    var trend = document.getElementById("trendform");
    if (trend) initTrend(trend);
    var fc = document.getElementById("forecast");
    if (fc) initForecast(fc);
  });
})();
