// The lms-pipeline dashboard: plain JavaScript, charts drawn as SVG, no external resources.
//
// The page reads the analytics endpoints with the bearer token given in the URL fragment
// (#token=...; kept in sessionStorage, removed from the address bar) and /metrics for the
// pipeline's health, and refreshes every few seconds (?refresh=<seconds>, default 5).
// Every chart states what it shows in the DOM: `data-points` (buckets or bars with data),
// `data-total` (sum of the values) and one <title> per bar or point, so tests and screen
// readers can read the figures without pixels.
'use strict';
(function () {
  // The SVG namespace, from the page's own charts (the HTML parser puts inline <svg> in it).
  const NS = document.querySelector('svg.chart').namespaceURI;
  const TOKEN_KEY = 'lms.dashboard.token';
  const W = 600, H = 220, PAD = { l: 48, r: 12, t: 14, b: 30 };
  const params = new URLSearchParams(location.search);
  const REFRESH_S = Math.max(1, Number(params.get('refresh')) || 5);
  const state = { token: null, claims: null, hints: null, authError: null, metrics: [], timer: null };

  const $ = (sel) => document.querySelector(sel);

  // ---------- token ----------
  function takeToken() {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      history.replaceState(null, '', location.pathname + location.search);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function decodeClaims(token) {
    try {
      let p = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      p += '='.repeat((4 - (p.length % 4)) % 4);
      return JSON.parse(atob(p));
    } catch (e) {
      return null;
    }
  }

  function message(text, isError) {
    const box = $('#message');
    if (!text) {
      box.hidden = true;
      box.textContent = '';
      return;
    }
    box.hidden = false;
    box.className = isError ? 'message error' : 'message';
    box.textContent = text;
  }

  class AuthError extends Error {}

  async function getJson(path, auth) {
    const headers = auth ? { Authorization: 'Bearer ' + state.token } : {};
    const r = await fetch(path, { headers, cache: 'no-store' });
    if (r.status === 401) {
      throw new AuthError('The token was refused (expired, or signed with another secret). ' +
        'Open the dashboard link that `lms demo` prints again, or add #token=<JWT with scope analytics:read> to the address.');
    }
    if (r.status === 403) {
      throw new AuthError('The token may not read analytics: it needs the scope analytics:read (or admin).');
    }
    if (!r.ok) {
      let detail = '';
      try { detail = (await r.json()).detail || ''; } catch (e) { /* not JSON */ }
      throw new Error(path.split('?')[0] + ' answered ' + r.status + (detail ? ': ' + detail : ''));
    }
    return r.json();
  }

  // ---------- dates and buckets ----------
  const iso = (d) => d.toISOString().slice(0, 10);
  const addDays = (d, n) => new Date(d.getTime() + n * 86400000);
  function bucketStart(d, g) {
    if (g === 'week') return addDays(d, -((d.getUTCDay() + 6) % 7));
    if (g === 'month') return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1));
    return d;
  }
  function buckets(from, to, g) {
    const out = [];
    let d = bucketStart(from, g);
    while (d <= to && out.length < 2000) {
      out.push(iso(d));
      d = g === 'month' ? new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1)) : addDays(d, g === 'week' ? 7 : 1);
    }
    return out;
  }
  function range() {
    const days = Number($('#range').value) || 60;
    const g = $('#granularity').value;
    const to = new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate()));
    const from = addDays(to, -(days - 1));
    return { from, to, g, query: 'from=' + iso(from) + '&to=' + iso(to) + '&granularity=' + g };
  }

  // ---------- formatting ----------
  const fmt = (n) => (Math.round(n * 100) / 100).toLocaleString('en');
  function money(minor, cur) {
    const v = minor / 100;
    return (Math.abs(v) >= 10000 ? Math.round(v).toLocaleString('en') : v.toFixed(2)) + ' ' + (cur || '');
  }

  // ---------- SVG ----------
  function el(name, attrs, parent, title) {
    const e = document.createElementNS(NS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (title !== undefined) {
      const t = document.createElementNS(NS, 'title');
      t.textContent = title;
      e.appendChild(t);
    }
    if (parent) parent.appendChild(e);
    return e;
  }
  function clear(svg) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
  }
  function finish(svg, points, total) {
    svg.setAttribute('data-points', String(points));
    svg.setAttribute('data-total', String(Math.round(total * 100) / 100));
  }
  function empty(svg, text) {
    clear(svg);
    el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty' }, svg).textContent = text;
    finish(svg, 0, 0);
  }
  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // A time (or category) chart: optional bars (`bar`, with `neg` drawn below the axis) and
  // an optional line (`line`). items: [{label, bar?, neg?, line?, title}].
  function xyChart(svg, items, spec) {
    clear(svg);
    const n = items.length;
    if (!n) return empty(svg, spec.emptyText || 'no data yet');
    const fmtV = spec.format || fmt;
    const top = niceMax(Math.max(0, ...items.map((i) => Math.max(i.bar || 0, i.line || 0))));
    const bottom = spec.neg ? niceMax(Math.max(0, ...items.map((i) => i.neg || 0))) : 0;
    const pw = W - PAD.l - PAD.r, ph = H - PAD.t - PAD.b;
    const y = (v) => PAD.t + ((top - v) / (top + bottom)) * ph;
    const slot = pw / n;
    const x = (i) => PAD.l + slot * (i + 0.5);
    // axes and grid
    el('line', { x1: PAD.l, x2: W - PAD.r, y1: y(0), y2: y(0), class: 'axis' }, svg);
    el('line', { x1: PAD.l, x2: W - PAD.r, y1: y(top), y2: y(top), class: 'grid' }, svg);
    el('text', { x: PAD.l - 6, y: y(top) + 4, 'text-anchor': 'end', class: 'tick' }, svg).textContent = fmtV(top);
    el('text', { x: PAD.l - 6, y: y(0) + 4, 'text-anchor': 'end', class: 'tick' }, svg).textContent = '0';
    if (bottom) {
      el('line', { x1: PAD.l, x2: W - PAD.r, y1: y(-bottom), y2: y(-bottom), class: 'grid' }, svg);
      el('text', { x: PAD.l - 6, y: y(-bottom) + 4, 'text-anchor': 'end', class: 'tick' }, svg).textContent = '−' + fmtV(bottom);
    }
    const labelAt = new Set([0, Math.floor((n - 1) / 2), n - 1]);
    items.forEach((it, i) => {
      if (labelAt.has(i)) {
        // The outer labels align with the plot's edges so that they are never cut off.
        const anchor = n > 2 && i === 0 ? 'start' : n > 2 && i === n - 1 ? 'end' : 'middle';
        const lx = anchor === 'start' ? PAD.l : anchor === 'end' ? W - PAD.r : x(i);
        el('text', { x: lx, y: H - 10, 'text-anchor': anchor, class: 'tick' }, svg).textContent = it.label;
      }
    });
    let points = 0, total = 0;
    const bw = Math.max(1, slot * 0.72);
    if (spec.bar) {
      items.forEach((it, i) => {
        const v = it.bar || 0, nv = it.neg || 0;
        if (v > 0 || nv > 0) points += 1;
        total += v + nv;
        el('rect', { x: x(i) - bw / 2, y: y(v), width: bw, height: Math.max(0, y(0) - y(v)), class: 'bar ' + spec.bar }, svg, it.title);
        if (spec.neg && nv > 0) {
          el('rect', { x: x(i) - bw / 2, y: y(0), width: bw, height: Math.max(0, y(-nv) - y(0)), class: 'bar ' + spec.neg }, svg, it.title);
        }
      });
    }
    if (spec.line) {
      const d = items.map((it, i) => (i ? 'L' : 'M') + x(i).toFixed(1) + ' ' + y(it.line || 0).toFixed(1)).join(' ');
      if (spec.area) {
        el('path', { d: d + ' L' + x(n - 1).toFixed(1) + ' ' + y(0) + ' L' + x(0).toFixed(1) + ' ' + y(0) + ' Z', class: 'area ' + spec.line }, svg);
      }
      el('path', { d, class: 'line ' + spec.line }, svg);
      items.forEach((it, i) => {
        const v = it.line || 0;
        if (!spec.bar) {
          if (v > 0) points += 1;
          total += v;
        }
        el('circle', { cx: x(i), cy: y(v), r: n > 60 ? 1.5 : 3, class: 'dot ' + spec.line }, svg, it.title);
      });
    }
    finish(svg, points, total);
  }

  // Horizontal bars, one per category: items [{label, value, title}].
  function hbarChart(svg, items, spec) {
    clear(svg);
    const max = Math.max(0, ...items.map((i) => i.value));
    if (!items.length || max <= 0) return empty(svg, spec.emptyText || 'no data yet');
    const rowH = (H - 10) / items.length, left = 110, pw = W - left - 120;
    let points = 0, total = 0;
    items.forEach((it, i) => {
      const yy = 5 + i * rowH;
      const w = (it.value / max) * pw;
      if (it.value > 0) points += 1;
      total += it.value;
      el('text', { x: left - 8, y: yy + rowH * 0.6, 'text-anchor': 'end', class: 'label' }, svg).textContent = it.label;
      el('rect', { x: left, y: yy + rowH * 0.15, width: Math.max(1, w), height: rowH * 0.7, class: 'bar ' + (it.cls || spec.cls || 's0') }, svg, it.title);
      el('text', { x: left + w + 6, y: yy + rowH * 0.6, class: 'tick' }, svg).textContent = it.note || fmt(it.value);
    });
    finish(svg, points, total);
  }

  function figure(panel, text) {
    $(panel + ' [data-figure]').textContent = text;
  }

  // ---------- panels ----------
  function series(rows, r, pick) {
    const by = new Map(rows.map((row) => [row.bucket, row]));
    return buckets(r.from, r.to, r.g).map((b) => pick(b, by.get(b)));
  }

  async function activeLearners(r) {
    const rows = await getJson('/v1/analytics/active-learners?' + r.query, true);
    const items = series(rows, r, (b, row) => {
      const v = row ? row.active_learners : 0;
      return { label: b, line: v, title: b + ': ' + fmt(v) + ' active learners' };
    });
    xyChart($('#chart-active-learners'), items, { line: 's0', area: true });
    const last = items.length ? items[items.length - 1].line : 0;
    const peak = Math.max(0, ...items.map((i) => i.line));
    figure('#panel-active-learners', fmt(last) + ' in the latest bucket, peak ' + fmt(peak));
  }

  async function enrollments(r) {
    const rows = await getJson('/v1/analytics/enrollments?' + r.query, true);
    let e = 0, d = 0;
    const items = series(rows, r, (b, row) => {
      const v = row ? row.enrollments : 0, nv = row ? row.drops : 0;
      e += v; d += nv;
      return { label: b, bar: v, neg: nv, title: b + ': ' + fmt(v) + ' enrollments, ' + fmt(nv) + ' drops' };
    });
    xyChart($('#chart-enrollments'), items, { bar: 's0', neg: 's1' });
    figure('#panel-enrollments', fmt(e) + ' in, ' + fmt(d) + ' dropped');
  }

  async function completions(r) {
    const rows = await getJson('/v1/analytics/completions?' + r.query, true);
    let c = 0;
    const items = series(rows, r, (b, row) => {
      const v = row ? row.completions : 0;
      c += v;
      return { label: b, bar: v, title: b + ': ' + fmt(v) + ' completions' };
    });
    xyChart($('#chart-completions'), items, { bar: 's2' });
    figure('#panel-completions', fmt(c) + ' in the period');
  }

  async function revenue(r) {
    const rows = await getJson('/v1/analytics/revenue?' + r.query, true);
    const select = $('#currency');
    const gross = new Map();
    for (const row of rows) gross.set(row.currency, (gross.get(row.currency) || 0) + row.gross_minor);
    const currencies = [...gross.keys()].sort((a, b) => gross.get(b) - gross.get(a));
    const chosen = currencies.includes(select.value) ? select.value : currencies[0];
    syncOptions(select, currencies.map((c) => [c, c]), chosen);
    const mine = rows.filter((row) => row.currency === chosen);
    let net = 0, refunds = 0;
    const items = series(mine, r, (b, row) => {
      const g = row ? row.gross_minor : 0, f = row ? row.refunds_minor : 0, n = row ? row.net_minor : 0;
      net += n; refunds += f;
      return { label: b, bar: Math.max(0, n), line: g, title: b + ': gross ' + money(g, chosen) + ', refunds ' + money(f, chosen) + ', net ' + money(n, chosen) };
    });
    xyChart($('#chart-revenue'), chosen ? items : [], { bar: 's0', line: 's3', format: (v) => fmt(Math.round(v / 100)), emptyText: 'no payments yet' });
    figure('#panel-revenue', chosen ? money(net, chosen) + ' net (' + money(refunds, chosen) + ' refunded)' : '');
  }

  async function funnel() {
    const course = $('#course').value;
    const svg = $('#chart-funnel');
    if (!course) return empty(svg, 'no course known yet: type a course id');
    const f = await getJson('/v1/analytics/courses/' + encodeURIComponent(course) + '/funnel', true);
    const stages = [['enrolled', 'enrolled'], ['started', 'started'], ['reached_25', '≥ 25 %'], ['reached_50', '≥ 50 %'], ['reached_75', '≥ 75 %'], ['completed', 'completed']];
    const base = f.enrolled || 0;
    hbarChart(svg, stages.map(([k, label], i) => ({
      label,
      value: f[k] || 0,
      note: fmt(f[k] || 0) + (base ? ' (' + Math.round((100 * (f[k] || 0)) / base) + ' %)' : ''),
      title: label + ': ' + fmt(f[k] || 0) + ' learners',
      cls: 's' + (i % 4),
    })), { cls: 's2', emptyText: 'nobody enrolled in ' + course + ' yet' });
  }

  async function scores() {
    const a = $('#assessment').value;
    const svg = $('#chart-scores');
    if (!a) {
      figure('#panel-scores', '');
      return empty(svg, 'no assessment known yet: type an assessment id');
    }
    const s = await getJson('/v1/analytics/assessments/' + encodeURIComponent(a) + '/scores', true);
    const items = (s.histogram || []).map((h) => ({
      label: h.from_pct + '–' + h.to_pct,
      bar: h.count,
      title: h.from_pct + '–' + h.to_pct + ' %: ' + fmt(h.count) + ' learners',
    }));
    xyChart(svg, s.learners ? items : [], { bar: 's3', emptyText: 'no graded attempt of ' + a + ' yet' });
    figure('#panel-scores', s.learners ? 'mean ' + fmt(s.mean_pct) + ' %, median ' + fmt(s.p50_pct) + ' %, ' + fmt(s.learners) + ' learners' : '');
  }

  // ---------- pipeline health from /metrics ----------
  function parseMetrics(text) {
    const out = [];
    for (const line of text.split('\n')) {
      if (!line || line[0] === '#') continue;
      const m = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
      if (!m) continue;
      const labels = {};
      if (m[2]) for (const p of m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[p[1]] = p[2];
      out.push({ name: m[1], labels, value: parseFloat(m[3]) });
    }
    return out;
  }
  const sum = (samples, name, keep) => samples.filter((s) => s.name === name && (!keep || keep(s.labels))).reduce((a, s) => a + s.value, 0);

  async function health() {
    const r = await fetch('/metrics', { cache: 'no-store' });
    if (!r.ok) throw new Error('/metrics answered ' + r.status);
    const samples = parseMetrics(await r.text());
    const now = Date.now() / 1000;
    const snap = {
      t: now,
      accepted: sum(samples, 'lms_api_events_total', (l) => l.outcome === 'accepted'),
      produced: sum(samples, 'lms_bus_produced_records_total'),
      processed: sum(samples, 'lms_bus_processed_events_total'),
      dead: sum(samples, 'lms_bus_dead_lettered_records_total'),
    };
    state.metrics.push(snap);
    if (state.metrics.length > 61) state.metrics.shift();
    const rates = [];
    for (let i = 1; i < state.metrics.length; i++) {
      const a = state.metrics[i - 1], b = state.metrics[i], dt = Math.max(0.001, b.t - a.t);
      const label = new Date(b.t * 1000).toISOString().slice(11, 19);
      const produced = Math.max(0, (b.produced - a.produced) / dt), accepted = Math.max(0, (b.accepted - a.accepted) / dt);
      const processed = Math.max(0, (b.processed - a.processed) / dt);
      rates.push({ label, bar: produced, line: accepted, title: label + ': ' + fmt(produced) + ' records produced/s, ' + fmt(accepted) + ' events accepted/s, ' + fmt(processed) + ' processed/s' });
    }
    xyChart($('#health-rates'), rates, { bar: 's0', line: 's2', emptyText: 'measuring rates…' });
    // Every measurement is a data point, even a rate of zero.
    $('#health-rates').setAttribute('data-points', String(rates.length));
    const lag = new Map();
    for (const s of samples.filter((s) => s.name === 'lms_bus_consumer_lag_records')) {
      const g = s.labels.group || '?';
      lag.set(g, (lag.get(g) || 0) + Math.max(0, s.value));
    }
    const groups = [...lag.keys()].sort();
    const lagSvg = $('#health-lag');
    if (groups.length) {
      xyChart(lagSvg, groups.map((g) => ({ label: g, bar: lag.get(g), title: g + ': lag ' + fmt(lag.get(g)) + ' records' })), { bar: 's1' });
      // Every group reporting is a data point, even at zero lag.
      lagSvg.setAttribute('data-points', String(groups.length));
    } else {
      empty(lagSvg, 'no consumer group reports lag in this process');
    }
    const last = rates.length ? rates[rates.length - 1] : null;
    figure('#panel-health', last ? fmt(last.bar) + ' records/s, total lag ' + fmt([...lag.values()].reduce((a, b) => a + b, 0)) : '');
    const rows = [
      ['events accepted by the API', snap.accepted],
      ['records produced', snap.produced],
      ['events processed (durable)', snap.processed],
      ['records dead-lettered', snap.dead],
    ];
    const body = $('#health-table tbody');
    while (body.firstChild) body.removeChild(body.firstChild);
    for (const [k, v] of rows) {
      const tr = document.createElement('tr');
      const a = document.createElement('td'), b = document.createElement('td');
      a.textContent = k;
      b.textContent = fmt(v);
      b.className = 'num';
      tr.append(a, b);
      body.appendChild(tr);
    }
  }

  // ---------- selectors ----------
  function syncOptions(select, pairs, chosen) {
    const want = pairs.map((p) => p[0]).join('\n');
    if (select.dataset.options !== want) {
      while (select.firstChild) select.removeChild(select.firstChild);
      for (const [value, text] of pairs) {
        const o = document.createElement('option');
        o.value = value;
        o.textContent = text;
        select.appendChild(o);
      }
      select.dataset.options = want;
    }
    if (chosen !== undefined) select.value = chosen;
  }

  function fillSelectors() {
    const tenant = state.claims && state.claims.tenant;
    const known = (state.hints && state.hints.tenants && state.hints.tenants[tenant]) || { courses: [] };
    const courses = [], assessments = [];
    for (const c of params.getAll('course')) courses.push([c, c]);
    for (const a of params.getAll('assessment')) assessments.push([a, a]);
    for (const c of known.courses || []) {
      courses.push([c.course_id, c.title ? c.title + ' (' + c.course_id + ')' : c.course_id]);
      for (const a of c.assessments || []) assessments.push([a, a]);
    }
    const course = $('#course'), assessment = $('#assessment');
    syncOptions(course, dedupe(courses), course.value || (courses[0] || [])[0]);
    syncOptions(assessment, dedupe(assessments), assessment.value || (assessments[0] || [])[0]);
  }
  function dedupe(pairs) {
    const seen = new Set();
    return pairs.filter((p) => !seen.has(p[0]) && seen.add(p[0]));
  }
  function typed(input, select) {
    input.addEventListener('change', () => {
      const v = input.value.trim();
      if (!v) return;
      const pairs = [...select.options].map((o) => [o.value, o.textContent]);
      if (!pairs.some((p) => p[0] === v)) pairs.unshift([v, v]);
      syncOptions(select, pairs, v);
      input.value = '';
      refresh();
    });
  }

  // ---------- refresh loop ----------
  async function refresh() {
    clearTimeout(state.timer);
    const errors = [];
    const run = async (f) => {
      try { await f(); } catch (e) { errors.push(e); }
    };
    const tasks = [run(health)];
    if (state.token && !state.authError) {
      const r = range();
      tasks.push(run(() => activeLearners(r)), run(() => enrollments(r)), run(() => completions(r)), run(() => revenue(r)), run(funnel), run(scores));
    }
    await Promise.all(tasks);
    const auth = errors.find((e) => e instanceof AuthError);
    if (auth) state.authError = auth.message;
    if (!state.token) {
      message('No token: open this page as /dashboard#token=<JWT with scope analytics:read>. `lms demo` prints such a link. Pipeline health needs no token and is shown below.', true);
    } else if (state.authError) {
      message(state.authError, true);
    } else if (errors.length) {
      message('Some panels could not be refreshed: ' + errors.map((e) => e.message).join('; '), false);
    } else {
      message('');
    }
    $('#updated').textContent = 'updated ' + new Date().toLocaleTimeString('en-GB') + ', every ' + REFRESH_S + ' s';
    // A quick second look at /metrics gives the first rates sooner.
    const next = state.metrics.length < 2 ? 1000 : REFRESH_S * 1000;
    state.timer = setTimeout(refresh, next);
  }

  async function start() {
    state.token = takeToken();
    state.claims = state.token ? decodeClaims(state.token) : null;
    if (state.token && !state.claims) state.authError = 'The token in #token=… is not a JWT.';
    if (state.claims && state.claims.exp && state.claims.exp * 1000 < Date.now()) {
      state.authError = 'The token expired at ' + new Date(state.claims.exp * 1000).toISOString() + '. Open the link `lms demo` prints again, or give a fresh #token=….';
    }
    if (state.claims) $('#tenant').textContent = 'tenant ' + state.claims.tenant;
    // The hints name the tenant's courses: they take the same token as the analytics.
    if (state.token && !state.authError) {
      try {
        state.hints = await getJson('/dashboard/hints.json', true);
      } catch (e) {
        state.hints = null;
      }
    }
    fillSelectors();
    for (const id of ['#range', '#granularity', '#currency', '#course', '#assessment']) $(id).addEventListener('change', refresh);
    typed($('#course-input'), $('#course'));
    typed($('#assessment-input'), $('#assessment'));
    window.addEventListener('hashchange', () => {
      const t = takeToken();
      if (t && t !== state.token) location.reload();
    });
    refresh();
  }

  document.addEventListener('DOMContentLoaded', start);
})();
