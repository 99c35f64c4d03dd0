"""The dashboard page: inline CSS and JS (no network: no CDN scripts, fonts or styles).

Data is loaded with ``<script src>`` (``fetch`` of ``file://`` URLs is blocked by browsers):
``data/index.js`` defines ``window.SAEDASH``; each ``data/latents/c<N>.js`` calls
``SAEDASH_CHUNK(N, rows)`` and is loaded on demand when a latent of that chunk is opened.
The view state lives in the URL hash (``#sort=ms&dir=desc&page=0``, ``#latent=12``; ``&heat=1``
shows the patch heatmaps, hidden by default), so views can be linked and tested; an unknown sort
key falls back to the default order. ``#status`` reports what the latent view loaded (images,
broken images, heatmaps, whether they are shown) in ``data-*`` attributes.
"""

CSS = r"""
body { font-family: system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { background: #234; color: #fff; padding: 8px 16px; }
header a { color: #cde; }
main { padding: 12px 16px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right; }
th { cursor: pointer; background: #eef; user-select: none; }
th.sorted-asc::after { content: " \25B2"; } th.sorted-desc::after { content: " \25BC"; }
tr:hover td { background: #f0f4ff; }
.controls { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin: 8px 0; }
.controls input { width: 80px; }
.grid { display: grid; grid-template-columns: repeat(4, 132px); gap: 6px; }
.cell { position: relative; width: 132px; font-size: 11px; text-align: center; }
.cell .frame { position: relative; width: 128px; height: 128px; background: #ddd; }
.cell img, .cell canvas { position: absolute; left: 0; top: 0; width: 128px; height: 128px;
  object-fit: cover; }
.cell canvas { opacity: 0.75; image-rendering: auto; pointer-events: none; }
.stats td:first-child { text-align: left; color: #555; }
.row { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
.muted { color: #777; }
td.label { text-align: left; }
.hist { width: 300px; }
.hist .bars { display: flex; align-items: flex-end; height: 110px; gap: 1px; border-bottom: 1px solid #999; }
.hist .bar { flex: 1; background: #4a7ab5; }
.hist .axis { display: flex; justify-content: space-between; font-size: 11px; }
"""

JS = r"""
(function () {
  "use strict";
  var D = window.SAEDASH, C = D.columns, N = C.latent.length;
  var rowOf = {}; for (var r = 0; r < N; r++) rowOf[C.latent[r]] = r;
  var chunks = {}, waiting = {};
  window.SAEDASH_CHUNK = function (n, rows) {
    chunks[n] = rows; (waiting[n] || []).forEach(function (f) { f(); }); delete waiting[n];
  };
  var main = document.getElementById("main"), status = document.getElementById("status");
  var COLS = [["latent", "latent"], ["ms", "MS"], ["support", "support"],
              ["density", "density"], ["max", "max act"]];
  if (C.group) COLS.push(["group", "group"]);
  if (C.label) COLS.push(["label", "top label"]);
  if (C.concept) COLS.push(["concept", "concept"], ["concept_score", "concept score"]);
  if (C.steer_score) COLS.push(["steer_score", "steers"]);
  function steersText(r) {
    if (C.steer_score[r] === null) return "-";
    return (C.steers[r] ? "\u2713 " : "") + C.steer_word[r] + " " + fmt(100 * C.steer_score[r], 0) + "%";
  }
  function fmt(v, d) { return v === null || v === undefined || isNaN(v) ? "-" : (+v).toFixed(d); }
  function parseHash() {
    var s = {}; location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      if (!kv) return; var p = kv.split("="); s[decodeURIComponent(p[0])] = decodeURIComponent(p[1] || "");
    }); return s;
  }
  function setHash(s) {
    location.hash = Object.keys(s).filter(function (k) { return s[k] !== "" && s[k] !== undefined; })
      .map(function (k) { return encodeURIComponent(k) + "=" + encodeURIComponent(s[k]); }).join("&");
  }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text; return e;
  }
  function missing(v) { return v === null || v === "" || (typeof v === "number" && isNaN(v)); }
  var order = null, orderKey = "";
  function sorted(key, dir) {
    var k = key + ":" + dir; if (orderKey === k) return order;
    var col = C[key], idx = new Array(N); for (var i = 0; i < N; i++) idx[i] = i;
    var sign = dir === "asc" ? 1 : -1;
    idx.sort(function (a, b) {
      var x = col[a], y = col[b], nx = missing(x), ny = missing(y);
      if (nx || ny) return nx === ny ? a - b : (nx ? 1 : -1);
      return x === y ? a - b : (x < y ? -sign : sign);
    });
    order = idx; orderKey = k; return idx;
  }
  function wordMatch(text, q) {
    var t = String(text).toLowerCase(); return t.indexOf(q) === 0 || t.indexOf(" " + q) >= 0;
  }
  function matches(r, q) {
    if (/^\d+$/.test(q)) return String(C.latent[r]).indexOf(q) === 0;
    var ql = q.toLowerCase();
    if (C.label && C.label[r].toLowerCase().indexOf(ql) >= 0) return true;
    return !!C.concepts && C.concepts[r].some(function (w) { return wordMatch(w, ql); });
  }
  function num(s, d) { var v = parseFloat(s); return isNaN(v) ? d : v; }
  function renderIndex(s) {
    // An unknown sort key or direction (a stale or mistyped link) falls back to the default.
    var key = COLS.some(function (c) { return c[0] === s.sort; }) ? s.sort : "latent";
    var dir = s.dir === "asc" || s.dir === "desc" ? s.dir : (key === "latent" ? "asc" : "desc");
    var pageSize = 50, page = parseInt(s.page || "0", 10) || 0;
    var msMin = num(s.ms_min, -Infinity), msMax = num(s.ms_max, Infinity);
    var dMin = num(s.density_min, -Infinity), dMax = num(s.density_max, Infinity);
    var aMin = num(s.max_min, -Infinity), q = (s.q || "").trim(), grp = s.group || "";
    var idx = sorted(key, dir), kept = [];
    for (var i = 0; i < idx.length; i++) {
      var r = idx[i], ms = C.ms[r];
      if ((msMin > -Infinity || msMax < Infinity) && (ms === null || ms < msMin || ms > msMax)) continue;
      if (C.density[r] < dMin || C.density[r] > dMax || C.max[r] < aMin) continue;
      if (grp !== "" && C.group && String(C.group[r]) !== grp) continue;
      if (q && !matches(r, q)) continue;
      kept.push(r);
    }
    var pages = Math.max(1, Math.ceil(kept.length / pageSize));
    page = Math.min(page, pages - 1);
    main.innerHTML = "";
    var top = el("div", {"class": "row"});
    var info = el("div");
    info.appendChild(el("h2", {}, D.meta.title));
    var st = el("table", {"class": "stats"});
    Object.keys(D.meta.setup).forEach(function (k) {
      var tr = el("tr"); tr.appendChild(el("td", {}, k)); tr.appendChild(el("td", {}, String(D.meta.setup[k]))); st.appendChild(tr);
    });
    info.appendChild(st); top.appendChild(info);
    if (D.meta.ms_plot) top.appendChild(el("img", {src: D.meta.ms_plot, alt: "MS distribution", width: "420"}));
    main.appendChild(top);
    var ctl = el("div", {"class": "controls"});
    function field(name, label, value) {
      var l = el("label", {}, label + " "), inp = el("input", {name: name, value: value === undefined ? "" : value});
      inp.addEventListener("change", function () { var t = parseHash(); t[name] = inp.value; t.page = 0; setHash(t); });
      l.appendChild(inp); ctl.appendChild(l);
    }
    field("q", "search latent" + (C.label ? " / label" : "") + (C.concepts ? " / concept" : ""), s.q); field("ms_min", "MS \u2265", s.ms_min); field("ms_max", "MS \u2264", s.ms_max);
    field("density_min", "density \u2265", s.density_min); field("density_max", "density \u2264", s.density_max);
    field("max_min", "max act \u2265", s.max_min);
    if (C.group) {
      var sel = el("select", {name: "group"}); sel.appendChild(el("option", {value: ""}, "all groups"));
      for (var g = 0; g < D.meta.n_groups; g++) { var o = el("option", {value: String(g)}, "group " + g); if (String(g) === grp) o.selected = true; sel.appendChild(o); }
      sel.addEventListener("change", function () { var t = parseHash(); t.group = sel.value; t.page = 0; setHash(t); });
      ctl.appendChild(sel);
    }
    function nav(label, p) {
      var b = el("button", {}, label); b.disabled = p < 0 || p >= pages;
      b.addEventListener("click", function () { var t = parseHash(); t.page = p; setHash(t); }); ctl.appendChild(b);
    }
    nav("\u25C0 prev", page - 1);
    ctl.appendChild(el("span", {id: "pageinfo"}, "page " + (page + 1) + " / " + pages + " \u2014 " + kept.length + " of " + N + " latents"));
    nav("next \u25B6", page + 1);
    main.appendChild(ctl);
    var table = el("table", {id: "latents"}), head = el("tr");
    COLS.forEach(function (c) {
      var th = el("th", {"data-key": c[0]}, c[1]);
      if (c[0] === key) th.className = "sorted-" + dir;
      th.addEventListener("click", function () {
        var t = parseHash(); t.dir = t.sort === c[0] && (t.dir || "desc") === "desc" ? "asc" : "desc";
        t.sort = c[0]; t.page = 0; setHash(t);
      });
      head.appendChild(th);
    });
    table.appendChild(head);
    kept.slice(page * pageSize, (page + 1) * pageSize).forEach(function (r) {
      var tr = el("tr", {"class": "latent-row", "data-latent": String(C.latent[r])});
      var a = el("a", {href: "#latent=" + C.latent[r]}, String(C.latent[r]));
      var td = el("td"); td.appendChild(a); tr.appendChild(td);
      tr.appendChild(el("td", {}, fmt(C.ms[r], 3))); tr.appendChild(el("td", {}, String(C.support[r])));
      tr.appendChild(el("td", {}, fmt(C.density[r], 4))); tr.appendChild(el("td", {}, fmt(C.max[r], 3)));
      if (C.group) tr.appendChild(el("td", {}, String(C.group[r])));
      if (C.label) tr.appendChild(el("td", {"class": "label"}, C.label[r]));
      if (C.concept) {
        tr.appendChild(el("td", {"class": "label concept", title: C.concepts[r].join(", ")}, C.concept[r]));
        tr.appendChild(el("td", {}, fmt(C.concept_score[r], 3)));
      }
      if (C.steer_score) tr.appendChild(el("td", {"class": "label steers"}, steersText(r)));
      table.appendChild(tr);
    });
    main.appendChild(table);
    status.setAttribute("data-view", "index"); status.setAttribute("data-rows", String(Math.min(pageSize, kept.length - page * pageSize)));
  }
  function withChunk(r, f) {
    var n = Math.floor(r / D.meta.chunk_size);
    if (chunks[n]) return f(chunks[n]);
    (waiting[n] = waiting[n] || []).push(function () { f(chunks[n]); });
    if (waiting[n].length === 1) {
      var sc = document.createElement("script"); sc.src = "data/latents/c" + n + ".js";
      sc.onerror = function () { main.textContent = "missing data file " + sc.src; };
      document.head.appendChild(sc);
    }
  }
  function histogram(counts, max) {
    var h = 110, peak = Math.max.apply(null, counts.concat([1]));
    var box = el("div", {id: "histogram", "class": "hist"}), bars = el("div", {"class": "bars"});
    counts.forEach(function (c, i) {
      var b = el("div", {"class": "bar", title: c + " images in [" + fmt(i * max / counts.length, 3) + ", " + fmt((i + 1) * max / counts.length, 3) + ")"});
      b.style.height = Math.round(c / peak * h) + "px"; bars.appendChild(b);
    });
    box.appendChild(bars);
    var axis = el("div", {"class": "axis"}); axis.appendChild(el("span", {}, "0")); axis.appendChild(el("span", {}, fmt(max, 3)));
    box.appendChild(axis); return box;
  }
  function drawHeat(canvas, b64, side) {
    var bytes = atob(b64), ctx = canvas.getContext("2d"), img = ctx.createImageData(side, side);
    for (var i = 0; i < side * side; i++) {
      var v = bytes.charCodeAt(i) / 255;
      img.data[4 * i] = 0; img.data[4 * i + 1] = 255; img.data[4 * i + 2] = 255;
      img.data[4 * i + 3] = Math.round(230 * v);
    }
    ctx.putImageData(img, 0, 0);
  }
  function renderLatent(id) {
    var r = rowOf[id];
    main.innerHTML = "";
    status.setAttribute("data-view", "latent"); status.setAttribute("data-latent", String(id));
    ["data-images", "data-images-loaded", "data-images-broken", "data-heatmaps"].forEach(function (a) { status.setAttribute(a, "0"); });
    status.setAttribute("data-ready", "0");
    if (r === undefined) { main.appendChild(el("p", {id: "error"}, "latent " + id + " is not in this dashboard")); return; }
    main.appendChild(el("p", {}, "")).appendChild(el("a", {href: "#"}, "\u2190 all latents"));
    main.appendChild(el("h2", {}, "Latent " + id));
    withChunk(r, function (rows) {
      var L = rows[String(id)], row = el("div", {"class": "row"}), left = el("div"), right = el("div");
      var st = el("table", {"class": "stats"});
      [["MS", fmt(C.ms[r], 4)], ["support (images)", C.support[r]], ["density", fmt(C.density[r], 5)],
       ["max activation", fmt(C.max[r], 4)]].concat(C.group ? [["Matryoshka group", C.group[r]]] : [])
        .concat(C.label ? [["top label", C.label[r]]] : [])
        .concat(C.concept ? [["concept", C.concept[r] ? C.concept[r] + " (" + fmt(C.concept_score[r], 3) + ")" : "-"]] : [])
        .forEach(function (p) { var tr = el("tr"); tr.appendChild(el("td", {}, p[0])); tr.appendChild(el("td", {}, String(p[1]))); st.appendChild(tr); });
      right.appendChild(st);
      if (L.concepts) {
        right.appendChild(el("h3", {}, "Concept labels (text-tower cosine)"));
        var cl = el("ol", {id: "concepts"});
        L.concepts.forEach(function (p) { cl.appendChild(el("li", {}, p[0] + " \u00B7 " + fmt(p[1], 3))); });
        if (!L.concepts.length) cl.appendChild(el("li", {"class": "muted"}, "none: the latent never fires"));
        right.appendChild(cl);
      }
      if (L.steering) {
        var S = L.steering;
        right.appendChild(el("h3", {}, "Steering (clamped in LLaVA's vision tower)"));
        if (S.note) right.appendChild(el("p", {"class": "muted"}, "not clamped: " + S.note));
        else {
          right.appendChild(el("p", {id: "steering-summary"}, (S.steers ? "steers: " : "does not steer: ") +
            (S.word ? "'" + S.word + "' gained in " + fmt(100 * S.score, 0) + "% of answers at " + S.multiple + "x (p " + fmt(S.p, 3) + " against random directions)" : "no concept gained") +
            "; repeats itself in " + fmt(100 * S.degenerate, 0) + "%" + (S.one_word ? "; one-word answer: " + S.one_word : "") +
            (S.label ? "; answers moved towards its label '" + S.label + "' by " + fmt(S.label_gain, 3) + " (text-tower cosine)" : "")));
          var sl = el("ul", {id: "steering-answers"});
          S.answers.forEach(function (a) { sl.appendChild(el("li", {}, a[0] + ": " + a[1] + " \u2192 " + a[2])); });
          right.appendChild(sl);
        }
      }
      right.appendChild(el("h3", {}, "Activation histogram (images where it fires)"));
      right.appendChild(histogram(L.hist, C.max[r]));
      if (L.sim) {
        right.appendChild(el("h3", {}, "Most similar latents (decoder cosine)"));
        var ul = el("ul", {id: "similar"});
        L.sim.forEach(function (p) { var li = el("li"); li.appendChild(el("a", {href: "#latent=" + p[0]}, "latent " + p[0])); li.appendChild(document.createTextNode(" cos " + fmt(p[1], 3))); ul.appendChild(li); });
        right.appendChild(ul);
      }
      left.appendChild(el("h3", {}, "Top " + L.top.length + " images"));
      // Heatmaps tint the thumbnails, so they start hidden (``#latent=N&heat=1`` shows them).
      var showHeat = parseHash().heat === "1";
      status.setAttribute("data-heatmaps-shown", showHeat ? "1" : "0");
      if (L.heat) {
        var lab = el("label", {}, " show patch heatmap (cyan = activation)"), box = el("input", {type: "checkbox", id: "heat-toggle"});
        box.checked = showHeat; lab.insertBefore(box, lab.firstChild);
        box.addEventListener("change", function () {
          showHeat = box.checked; status.setAttribute("data-heatmaps-shown", showHeat ? "1" : "0");
          Array.prototype.forEach.call(document.querySelectorAll("canvas.heatmap"), function (c) { c.style.display = showHeat ? "" : "none"; });
        });
        left.appendChild(lab);
      }
      var grid = el("div", {"class": "grid", id: "topgrid"}), done = 0, ok = 0, bad = 0, heats = 0;
      status.setAttribute("data-images", String(L.top.length));
      function report() {
        status.setAttribute("data-images-loaded", String(ok)); status.setAttribute("data-images-broken", String(bad));
        status.setAttribute("data-heatmaps", String(heats)); status.setAttribute("data-ready", done === L.top.length ? "1" : "0");
      }
      L.top.forEach(function (t, j) {
        var cell = el("div", {"class": "cell"}), frame = el("div", {"class": "frame"});
        var im = el("img", {src: D.thumbs[t[0]], alt: D.imageIds[t[0]], title: D.imageIds[t[0]]});
        im.addEventListener("load", function () { done++; if (im.naturalWidth > 0) ok++; else bad++; report(); });
        im.addEventListener("error", function () { done++; bad++; report(); });
        frame.appendChild(im);
        if (L.heat && L.heat[j]) {
          var cv = el("canvas", {width: D.meta.heatmap_side, height: D.meta.heatmap_side, "class": "heatmap"});
          drawHeat(cv, L.heat[j], D.meta.heatmap_side); cv.style.display = showHeat ? "" : "none";
          frame.appendChild(cv); heats++;
        }
        cell.appendChild(frame);
        cell.appendChild(el("div", {"class": "act"}, fmt(t[1], 3) + " \u00B7 " + D.imageIds[t[0]]));
        grid.appendChild(cell);
      });
      left.appendChild(grid); row.appendChild(left); row.appendChild(right); main.appendChild(row);
      report();
    });
  }
  function route() {
    var s = parseHash();
    if (s.latent !== undefined) renderLatent(parseInt(s.latent, 10)); else renderIndex(s);
  }
  window.addEventListener("hashchange", route);
  route();
})();
"""
