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

  /* ---- SVG charts drawn here (no library): the forecast scatter and a battery's predicted curve ---- */
  var SVGNS = "http://www.w3.org/2000/svg";
  var VERDICT_COLORS = { good: "#2e8b57", warning: "#e6a100", replace: "#e0661b", critical: "#d0312d", "no baseline": "#4a90c8" };
  var YEAR_S = 365.25 * 86400;

  function svg(tag, attrs, parent, text) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) if (attrs[k] != null) e.setAttribute(k, attrs[k]);
    if (text != null) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }

  function batteryUrl(tpl, s, c) { return tpl.replace(/\/0\/batteries\/0$/, "/" + s + "/batteries/" + c); }

  /* about n round steps across [lo, hi] */
  function niceTicks(lo, hi, n) {
    var span = hi - lo || 1, step = Math.pow(10, Math.floor(Math.log10(span / n)));
    [1, 2, 5, 10].some(function (m) { if (span / (step * m) <= n) { step *= m; return true; } return false; });
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.round(v / step) * step);
    return out;
  }

  /* month or year starts across a time range (Unix seconds), at most about n */
  function timeTicks(lo, hi, n) {
    var months = (hi - lo) / (YEAR_S / 12), every = [1, 2, 3, 6, 12, 24, 60].find(function (m) { return months / m <= n; }) || 120;
    var d = new Date(lo * 1000), out = [];
    d = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() - (d.getUTCMonth() % Math.min(every, 12)) + 1, 1));
    if (every >= 12) d = new Date(Date.UTC(d.getUTCFullYear() + 1, 0, 1));
    for (var i = 0; i < 200 && d.getTime() / 1000 <= hi; i++) {
      out.push(d.getTime() / 1000);
      d = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + every, 1));
    }
    return { ticks: out, label: every >= 12 ? function (t) { return new Date(t * 1000).toISOString().slice(0, 4); }
                                           : function (t) { return new Date(t * 1000).toISOString().slice(0, 7); } };
  }

  /* a plot frame: scales, grid and axes; returns {g, x, y} with x/y mapping data to pixels */
  function frame(el, xr, yr, opts) {
    el.textContent = "";
    var W = Math.max(280, Math.floor(el.getBoundingClientRect().width) || 320), H = opts.height || 340;
    var m = { l: opts.left || 64, r: 14, t: 12, b: 44 };
    var root = svg("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": opts.label }, el);
    var x = function (v) { return m.l + (v - xr[0]) / (xr[1] - xr[0] || 1) * (W - m.l - m.r); };
    var y = function (v) { return H - m.b - (v - yr[0]) / (yr[1] - yr[0] || 1) * (H - m.t - m.b); };
    var axes = svg("g", { "class": "axes" }, root);
    var xt = opts.xTime ? timeTicks(xr[0], xr[1], Math.max(3, Math.floor(W / 90))) : { ticks: niceTicks(xr[0], xr[1], Math.max(3, Math.floor(W / 80))), label: opts.xLabel };
    var yt = opts.yTime ? timeTicks(yr[0], yr[1], 7) : { ticks: niceTicks(yr[0], yr[1], 6), label: opts.yLabel };
    xt.ticks.forEach(function (v) {
      if (v < xr[0] || v > xr[1]) return;
      svg("line", { x1: x(v), x2: x(v), y1: m.t, y2: H - m.b, "class": "grid" }, axes);
      svg("text", { x: x(v), y: H - m.b + 16, "text-anchor": "middle" }, axes, xt.label(v));
    });
    yt.ticks.forEach(function (v) {
      if (v < yr[0] || v > yr[1]) return;
      svg("line", { x1: m.l, x2: W - m.r, y1: y(v), y2: y(v), "class": "grid" }, axes);
      svg("text", { x: m.l - 6, y: y(v) + 4, "text-anchor": "end" }, axes, yt.label(v));
    });
    svg("rect", { x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b, "class": "plotarea" }, axes);
    svg("text", { x: m.l + (W - m.l - m.r) / 2, y: H - 6, "text-anchor": "middle", "class": "axislabel" }, axes, opts.xTitle);
    svg("text", { x: 12, y: m.t + (H - m.t - m.b) / 2, "text-anchor": "middle", "class": "axislabel",
                  transform: "rotate(-90 12 " + (m.t + (H - m.t - m.b) / 2) + ")" }, axes, opts.yTitle);
    return { root: root, g: svg("g", {}, root), x: x, y: y, W: W, H: H, m: m };
  }

  /* ---- a string's data table: sortable by any column, filterable, refreshed every 30 s ---- */
  function initTable(table) {
    var tbody = table.querySelector("tbody"), filter = document.getElementById("bt-filter");
    var count = document.getElementById("bt-count"), rows = [], sortKey = "cell", sortDir = 1;
    var heads = table.querySelectorAll("thead th");

    function cellText(r, key) {
      var v = r[key];
      if (key === "alarm_level") return r.alarm || "–";
      if (key === "diagnosis") return v || "–";
      if (v == null) return "–";
      if (key === "voltage") return fmt(v, 3);
      if (key === "temperature") return fmt(v, 1);
      if (key === "ohmic") return fmt(v * 1000, 3);
      if (key === "ohmic_baseline_deviation" || key === "ohmic_average_deviation") return (v >= 0 ? "+" : "") + fmt(v, 1);
      if (key === "soh") return fmt(v, 1);
      if (key === "eol_date") return dateText(v);
      return String(v);
    }

    function render() {
      var shown = rows.filter(function (r) { return !filter.checked || (r.alarm_level != null && r.alarm_level >= 1); });
      shown.sort(function (a, b) {
        var x = a[sortKey], y = b[sortKey];
        if (x == null && y == null) return a.cell - b.cell;
        if (x == null) return 1;  // no value: last, whichever the direction
        if (y == null) return -1;
        var d = typeof x === "string" ? x.localeCompare(y) : x - y;
        return d * sortDir || a.cell - b.cell;
      });
      var keys = Array.prototype.map.call(heads, function (th) { return th.dataset.key; });
      var html = shown.map(function (r) {
        var lvl = r.alarm_level == null ? "unknown" : r.alarm_level >= 2 ? "critical" : r.alarm_level >= 1 ? "warning" : "normal";
        return "<tr data-cell=\"" + r.cell + "\" class=\"lvl-" + lvl + (r.stale ? " stale" : "") + "\">" + keys.map(function (k) {
          var t = cellText(r, k);
          if (k === "cell") return "<td><a href=\"" + batteryUrl(table.dataset.battery, table.dataset.string, r.cell) + "\">" + t + "</a></td>";
          if (k === "ohmic_baseline_deviation") return "<td class=\"num\"><span class=\"verdict v-" + r.verdict.replace(" ", "-") + "\">" + t + "</span></td>";
          if (k === "eol_date" && r.eol_date_early != null) return "<td title=\"" + dateText(r.eol_date_early) + " – " + dateText(r.eol_date_late) + "\">" + t + "</td>";
          return "<td" + (k === "diagnosis" || k === "alarm_level" ? "" : " class=\"num\"") + ">" + t.replace(/&/g, "&amp;").replace(/</g, "&lt;") + "</td>";
        }).join("") + "</tr>";
      }).join("");
      tbody.innerHTML = html || "<tr><td colspan=\"" + keys.length + "\" class=\"empty\">No battery in warning or worse.</td></tr>";
      heads.forEach(function (th) {
        th.setAttribute("aria-sort", th.dataset.key === sortKey ? (sortDir > 0 ? "ascending" : "descending") : "none");
      });
      count.textContent = shown.length + " of " + rows.length + " batteries";
      table.dataset.rows = String(shown.length);
    }

    heads.forEach(function (th) {
      th.querySelector("button").addEventListener("click", function () {
        if (sortKey === th.dataset.key) sortDir = -sortDir; else { sortKey = th.dataset.key; sortDir = 1; }
        render();
      });
    });
    filter.addEventListener("change", render);

    function load() {
      return getJSON(table.dataset.api).then(function (body) {
        table.dataset.string = String(body.string);
        rows = body.batteries;
        render();
      }).catch(function (e) { count.textContent = "Could not load the table: " + e.message; });
    }
    load().then(function () { setInterval(load, 30000); });
  }

  /* ---- forecast scatter: replacement date against the ohmic rise, coloured by verdict, early–late bars ---- */
  function initScatter(el) {
    var apis = el.dataset.apis ? el.dataset.apis.split(",") : [], info = document.getElementById("scatter-info");
    var pick = document.getElementById("scatter-string"), across = document.getElementById("scatter-x"), bodies = [];

    function draw() {
      var want = pick ? pick.value : "", age = across && across.value === "age";
      var pts = [], noDate = 0, noBase = 0, th = null;
      bodies.forEach(function (b) {
        if (want && String(b.string) !== want) return;
        th = th || b.thresholds;
        b.batteries.forEach(function (r) {
          if (r.eol_date == null) { noDate++; return; }
          var x = age ? r.age_years : r.ohmic_baseline_deviation;
          if (x == null) { noBase++; return; }
          pts.push({ s: b.string, c: r.cell, x: x, y: r.eol_date, lo: r.eol_date_early, hi: r.eol_date_late, v: r.verdict,
                     rise: r.ohmic_baseline_deviation });
        });
      });
      el.dataset.across = age ? "age" : "rise";
      el.dataset.points = String(pts.length);
      if (!pts.length) {
        el.textContent = "";
        info.textContent = noBase && !age ? noBase + " batteries have a replacement date but no ohmic baseline yet: show them " +
          "across their years in service." : "No forecast yet: the analytics module publishes one per battery once it has enough " +
          "ohmic history since the battery's baseline.";
        return;
      }
      var now = Date.now() / 1000;
      var xs = pts.map(function (p) { return p.x; }), ys = [];
      pts.forEach(function (p) { ys.push(p.y); if (p.lo != null) ys.push(p.lo); if (p.hi != null) ys.push(p.hi); });
      var xlo = Math.min(0, Math.min.apply(null, xs)), xhi = Math.max(age ? 1 : th.replace_pct * 1.1, Math.max.apply(null, xs));
      var pad = (xhi - xlo) * 0.05;
      var ylo = Math.min(now, Math.min.apply(null, ys)), yhi = Math.max.apply(null, ys);
      var ypad = Math.max((yhi - ylo) * 0.05, 30 * 86400);
      var f = frame(el, [xlo - pad, xhi + pad], [ylo - ypad, yhi + ypad], {
        yTime: true, left: 70, yTitle: "predicted replacement", label: "forecast scatter", height: 380,
        xLabel: age ? function (v) { return v + " y"; } : function (v) { return (v > 0 ? "+" : "") + v + " %"; },
        xTitle: age ? "years in service" : "ohmic value over its baseline" });
      (age ? [] : [["warning_pct", "warning"], ["replace_pct", "replace"], ["critical_pct", "critical"]]).forEach(function (t) {
        var v = th[t[0]];
        if (v < xlo - pad || v > xhi + pad) return;
        svg("line", { x1: f.x(v), x2: f.x(v), y1: f.m.t, y2: f.H - f.m.b, "class": "limit", stroke: VERDICT_COLORS[t[1]] }, f.g);
      });
      svg("line", { x1: f.m.l, x2: f.W - f.m.r, y1: f.y(now), y2: f.y(now), "class": "now" }, f.g);
      svg("text", { x: f.W - f.m.r - 4, y: f.y(now) - 4, "text-anchor": "end", "class": "linelabel" }, f.g, "today");
      // the worse verdicts drawn last, on top: the batteries that matter stay clickable where points crowd
      var rank = { "no baseline": 0, good: 1, warning: 2, replace: 3, critical: 4 };
      pts.sort(function (a, b) { return (rank[a.v] || 0) - (rank[b.v] || 0) || b.y - a.y; });
      pts.forEach(function (p) {
        var col = VERDICT_COLORS[p.v] || "#555", cx = f.x(p.x);
        var g = svg("g", { "class": "pt", "data-string": p.s, "data-cell": p.c, "data-verdict": p.v, tabindex: 0, role: "link" }, f.g);
        if (p.lo != null && p.hi != null) {
          svg("line", { x1: cx, x2: cx, y1: f.y(p.lo), y2: f.y(p.hi), stroke: col, "class": "errbar" }, g);
          [p.lo, p.hi].forEach(function (t) { svg("line", { x1: cx - 4, x2: cx + 4, y1: f.y(t), y2: f.y(t), stroke: col, "class": "errbar" }, g); });
        }
        svg("circle", { cx: cx, cy: f.y(p.y), r: 6, fill: col }, g);
        svg("title", {}, g, "String " + p.s + " battery " + p.c + ": " + (p.rise == null ? "no baseline" : (p.rise >= 0 ? "+" : "") + fmt(p.rise, 1) + " % over the baseline") +
            (age ? ", " + fmt(p.x, 1) + " years in service" : "") + ", replace by " +
            dateText(p.y) + (p.lo != null ? " (" + dateText(p.lo) + " – " + dateText(p.hi) + ")" : "") + ", " + p.v);
        var open = function () { location.href = batteryUrl(el.dataset.battery, p.s, p.c); };
        g.addEventListener("click", open);
        g.addEventListener("keydown", function (ev) { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); open(); } });
      });
      info.textContent = pts.length + " batteries with a forecast" +
        (noBase ? ", " + noBase + (age ? " whose time in service is not known" : " dated without a baseline (from the temperature life budget)") : "") +
        (noDate ? ", " + noDate + " with no replacement date within the forecast horizon" : "") + ".";
    }

    Promise.all(apis.map(function (u) { return getJSON(u); })).then(function (bs) {
      bodies = bs;
      draw();
    }).catch(function (e) { info.textContent = "Could not load: " + e.message; });
    if (pick) pick.addEventListener("change", draw);
    if (across) across.addEventListener("change", draw);
    onResize(function () { if (bodies.length) draw(); });
  }

  /* ---- one battery's predicted curve: measured ohmic values, the fit, the extrapolation and its range ---- */
  function initCurve(el) {
    var info = document.getElementById("curve-info"), body = null;

    function draw() {
      var b = body, mohm = function (v) { return v * 1000; };
      var meas = b.measured.filter(function (p) { return p.v != null; });
      el.dataset.measured = String(meas.length);
      el.dataset.fit = String(b.fit.length + b.extrapolation.length);
      if (!meas.length && !b.fit.length) {
        el.textContent = "";
        info.textContent = "No ohmic values recorded for this battery yet.";
        return;
      }
      var ts = [], vs = [];
      meas.concat(b.fit, b.extrapolation).forEach(function (p) { ts.push(p.t); vs.push(mohm(p.v)); });
      [b.eol, b.early, b.late, b.now].forEach(function (t) { if (t != null) ts.push(t); });
      [b.baseline, b.replace_level].forEach(function (v) { if (v != null) vs.push(mohm(v)); });
      var tlo = Math.min.apply(null, ts), thi = Math.max.apply(null, ts);
      var vlo = Math.min.apply(null, vs), vhi = Math.max.apply(null, vs), vpad = (vhi - vlo) * 0.08 || vhi * 0.05 || 1;
      var f = frame(el, [tlo, thi + (thi - tlo) * 0.02], [vlo - vpad, vhi + vpad], {
        xTime: true, yLabel: function (v) { return Number(v.toPrecision(4)) + ""; }, left: 64,
        xTitle: "date", yTitle: "ohmic value (mΩ)", label: "predicted curve", height: 340 });
      function line(pts, cls) {
        if (pts.length < 2) return null;
        return svg("polyline", { points: pts.map(function (p) { return f.x(p.t).toFixed(1) + "," + f.y(mohm(p.v)).toFixed(1); }).join(" "), "class": cls }, f.g);
      }
      function hline(v, cls, label) {
        if (v == null) return;
        svg("line", { x1: f.m.l, x2: f.W - f.m.r, y1: f.y(mohm(v)), y2: f.y(mohm(v)), "class": cls }, f.g);
        svg("text", { x: f.m.l + 4, y: f.y(mohm(v)) - 4, "class": "linelabel" }, f.g, label);
      }
      hline(b.baseline, "baseline", "baseline " + fmt(mohm(b.baseline), 3) + " mΩ");
      hline(b.replace_level, "limit-line", "replace: +" + b.thresholds.replace_pct + " % (" + fmt(mohm(b.replace_level), 3) + " mΩ)");
      // the range: from the fitted value today to the threshold at the early and at the late date
      var start = b.extrapolation.length ? b.extrapolation[0] : null;
      if (start && b.replace_level != null && b.early != null && b.late != null) {
        var yr = f.y(mohm(b.replace_level));
        svg("polygon", { points: [[f.x(start.t), f.y(mohm(start.v))], [f.x(b.early), yr], [f.x(b.late), yr]]
          .map(function (p) { return p[0].toFixed(1) + "," + p[1].toFixed(1); }).join(" "), "class": "range" }, f.g);
        svg("line", { x1: f.x(b.early), x2: f.x(b.late), y1: yr, y2: yr, "class": "rangebar" }, f.g);
      }
      svg("line", { x1: f.x(b.now), x2: f.x(b.now), y1: f.m.t, y2: f.H - f.m.b, "class": "now" }, f.g);
      var dots = svg("g", { "class": "measured" }, f.g);
      var step = Math.max(1, Math.floor(meas.length / 400));
      for (var i = 0; i < meas.length; i += step) svg("circle", { cx: f.x(meas[i].t).toFixed(1), cy: f.y(mohm(meas[i].v)).toFixed(1), r: 2 }, dots);
      line(b.fit, "fitline");
      line(b.extrapolation, "extraline");
      if (b.eol != null && b.replace_level != null) {
        svg("circle", { cx: f.x(b.eol), cy: f.y(mohm(b.replace_level)), r: 5, "class": "eolmark" }, f.g);
        svg("text", { x: f.x(b.eol), y: f.y(mohm(b.replace_level)) - 10, "text-anchor": "middle", "class": "linelabel" }, f.g, "replace by " + dateText(b.eol));
      }
      var parts = [meas.length + " measured values" + (b.history_source === "memory" ? " (kept in memory since the gateway started)" : "")];
      if (b.fit.length) parts.push("fitted (" + b.model + ") " + (b.fitted ? "on " + dateText(b.fitted) : ""));
      else parts.push(b.source ? "the date comes from the " + (b.source === "life" ? "temperature life budget" : b.source + " trend") + ", no ohmic fit"
                               : "no fitted trend yet: the analytics need weeks of ohmic values after the baseline");
      if (b.eol != null) parts.push("replace by " + dateText(b.eol) + (b.early != null ? " (" + dateText(b.early) + " – " + dateText(b.late) + ")" : ""));
      info.textContent = parts.join("; ") + ".";
    }

    getJSON(el.dataset.api).then(function (bd) { body = bd; draw(); })
      .catch(function (e) { info.textContent = "Could not load: " + e.message; });
    onResize(function () { if (body) draw(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var table = document.getElementById("batteries");
    if (table) initTable(table);
    var scatter = document.getElementById("scatter");
    if (scatter) initScatter(scatter);
    var curve = document.getElementById("curve");
    if (curve) initCurve(curve);
    var bars = document.getElementById("bars");
    if (bars) initBars(bars);
    var trend = document.getElementById("trendform");
    if (trend) initTrend(trend);
    var fc = document.getElementById("forecast");
    if (fc) initForecast(fc);
  });
})();
