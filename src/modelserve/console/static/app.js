// modelserve console: models and workers, live charts, a prediction form and the API docs.
// Plain ES module, no build step; talks to the management port it was served from.
import { barChart, delta, lineChart, quantile } from './charts.js';

const POLL_MS = 2000;
const HISTORY = 150; // samples kept per model version: 5 minutes at one every 2 s
const WINDOW = 3; // rates and percentiles over the last 3 intervals (about 6 s)
const SPAN = 300; // seconds shown on the charts, at most
const KEY = 'modelserve.managementKey';

const $ = (sel, root = document) => root.querySelector(sel);
const state = { stats: null, history: new Map(), timer: null, gen: 0, file: null, apiLoaded: false };

// -- helpers --------------------------------------------------------------------------------------
function h(tag, attrs = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of kids.flat()) if (c != null && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}
const enc = encodeURIComponent;
const mib = (b) => (b ? `${(b / 1048576).toFixed(0)} MiB` : '–');
const quote = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

async function api(path, opts = {}) {
  const headers = new Headers(opts.headers || {});
  const key = sessionStorage.getItem(KEY);
  if (key) headers.set('Authorization', `Bearer ${key}`);
  const resp = await fetch(path, { ...opts, headers });
  if (resp.status === 401) showLogin(await message(resp.clone()));
  return resp;
}

async function message(resp) {
  const text = await resp.text();
  try { return JSON.parse(text).message || JSON.parse(text).status || text; } catch { return text; }
}

function showLogin(text) {
  $('#login').hidden = false;
  $('#login-error').textContent = sessionStorage.getItem(KEY) ? text : '';
  setConn(false, 'key needed');
}

function setConn(ok, text) {
  const el = $('#conn');
  el.textContent = text;
  el.className = `conn ${ok ? 'ok' : 'bad'}`;
}

// -- tabs -----------------------------------------------------------------------------------------
function showTab() {
  const tab = (location.hash || '#models').slice(1);
  for (const s of document.querySelectorAll('[data-view]')) s.hidden = s.dataset.view !== tab;
  for (const a of document.querySelectorAll('#tabs a')) a.classList.toggle('active', a.dataset.tab === tab);
  if (tab === 'api' && !state.apiLoaded) loadApiDocs();
  if (tab === 'models') renderModels();
}

// -- polling --------------------------------------------------------------------------------------
async function poll() {
  clearTimeout(state.timer);
  const gen = ++state.gen; // a poll started meanwhile (after an action) takes over the schedule
  let again = true;
  try {
    const resp = await api('/console/api/stats');
    if (resp.ok) {
      ingest(await resp.json());
      $('#login').hidden = true;
      $('#forget').hidden = !state.stats.auth;
      setConn(true, `live · ${new Date().toLocaleTimeString()}`);
    } else if (resp.status === 401) {
      again = false; // wait for a key
    } else {
      setConn(false, `stats: HTTP ${resp.status}`);
    }
  } catch {
    setConn(false, 'server unreachable');
  }
  if (again && gen === state.gen) state.timer = setTimeout(poll, POLL_MS);
}

function ingest(stats) {
  state.stats = stats;
  const seen = new Set();
  for (const m of stats.models) {
    const id = `${m.modelName}/${m.modelVersion}`;
    seen.add(id);
    const hist = state.history.get(id) || [];
    hist.push({ t: stats.time, s: m.stats });
    if (hist.length > HISTORY) hist.shift();
    state.history.set(id, hist);
  }
  for (const id of state.history.keys()) if (!seen.has(id)) state.history.delete(id);
  renderModels();
  renderModelChoice();
}

// -- models view ----------------------------------------------------------------------------------
function renderModels() {
  const root = $('#models');
  const stats = state.stats;
  if (!stats || root.closest('[data-view]').hidden) return;
  if (!stats.models.length) {
    root.replaceChildren(h('p', { class: 'muted' }, 'No models are registered.'));
    return;
  }
  const cards = new Map([...root.querySelectorAll('.card')].map((c) => [c.dataset.key, c]));
  const order = [];
  for (const m of stats.models) {
    const id = `${m.modelName}/${m.modelVersion}`;
    const card = cards.get(id) || makeCard(m);
    cards.delete(id);
    updateCard(card, m);
    order.push(card);
  }
  const now = [...root.children];
  if (now.length !== order.length || order.some((c, i) => now[i] !== c)) root.replaceChildren(...order);
  for (const card of order) drawCharts(card, state.history.get(card.dataset.key) || []);
}

function makeCard(m) {
  const input = h('input', { type: 'number', min: '0', max: '64', class: 'scale-n', 'aria-label': 'workers',
    value: String(m.minWorkers), oninput: () => { input.dataset.dirty = '1'; } });
  const button = (label, cls, fn) => h('button', { type: 'button', class: cls, onclick: () => fn(card, m) }, label);
  const card = h('article', { class: 'card', 'data-key': `${m.modelName}/${m.modelVersion}` },
    h('header', {},
      h('h2', {}, m.modelName, ' ', h('span', { class: 'ver' }, `v${m.modelVersion}`), ' ',
        h('span', { class: 'badge' }, 'default')),
      h('div', { class: 'actions' },
        h('label', {}, 'workers ', input), button('Scale', 'scale', scale),
        button('Make default', 'set-default', setDefault), button('Unregister', 'danger unregister', unregister))),
    h('p', { class: 'msg' }),
    h('dl', { class: 'facts' }),
    h('table', { class: 'workers' },
      h('thead', {}, h('tr', {}, ['worker', 'state', 'pid', 'memory', 'restarts', 'device'].map((t) => h('th', {}, t)))),
      h('tbody')),
    h('div', { class: 'charts' },
      ['Requests / s', 'Latency (ms)', 'Queue wait (ms)', 'Batch size'].map((t, i) =>
        h('figure', {}, h('figcaption', {}, t), h('canvas', { 'data-chart': String(i) })))));
  return card;
}

function updateCard(card, m) {
  $('.badge', card).hidden = !m.isDefault;
  $('.set-default', card).hidden = m.isDefault;
  const input = $('.scale-n', card);
  if (document.activeElement !== input && !input.dataset.dirty) input.value = String(m.minWorkers);
  const ready = m.workers.filter((w) => w.status === 'READY').length;
  const facts = {
    workers: `${ready} ready / ${m.workers.length} (min ${m.minWorkers}, max ${m.maxWorkers})`,
    queue: `${m.queue.pending} pending / ${m.queue.capacity}`,
    batch: `size ${m.batchSize}, max delay ${m.maxBatchDelay} ms`,
    requests: `${m.stats.requests} (${m.stats.failed} failed)`,
  };
  $('.facts', card).replaceChildren(...Object.entries(facts).flatMap(([k, v]) =>
    [h('dt', {}, k), h('dd', { 'data-fact': k }, v)]));
  $('tbody', card).replaceChildren(...m.workers.map((w) => h('tr', { title: w.lastError || '' },
    h('td', {}, w.id), h('td', {}, h('span', { class: `state ${w.status.toLowerCase()}` }, w.status)),
    h('td', {}, w.pid ?? '–'), h('td', {}, mib(w.memoryUsage)), h('td', {}, w.restarts),
    h('td', {}, w.gpu == null ? 'cpu' : `gpu ${w.gpu}`))));
}

function drawCharts(card, hist) {
  const { latencyBuckets: lb, batchBuckets: bb } = state.stats;
  const times = [], rate = [], failed = [], p50 = [], p99 = [], q50 = [], q99 = [];
  hist.forEach((p, i) => {
    times.push(p.t);
    const prev = i ? hist[Math.max(0, i - WINDOW)] : null;
    const dt = prev ? p.t - prev.t : 0;
    const reset = prev && p.s.requests < prev.s.requests;
    const base = reset ? null : prev;
    rate.push(dt > 0 ? (p.s.requests - (base ? base.s.requests : 0)) / dt : null);
    failed.push(dt > 0 ? (p.s.failed - (base ? base.s.failed : 0)) / dt : null);
    const lat = prev ? delta(p.s.latency.counts, base && base.s.latency.counts) : [];
    const qw = prev ? delta(p.s.queueWait.counts, base && base.s.queueWait.counts) : [];
    const ms = (v) => (v == null ? null : v * 1000);
    p50.push(ms(quantile(lat, lb, 0.5)));
    p99.push(ms(quantile(lat, lb, 0.99)));
    q50.push(ms(quantile(qw, lb, 0.5)));
    q99.push(ms(quantile(qw, lb, 0.99)));
  });
  const [c0, c1, c2, c3] = card.querySelectorAll('canvas');
  const span = Math.min(SPAN, Math.max(30, times.length ? times[times.length - 1] - times[0] : 0));
  lineChart(c0, times, [{ label: 'requests/s', values: rate }, { label: 'failed/s', values: failed }], span);
  lineChart(c1, times, [{ label: 'p50', values: p50 }, { label: 'p99', values: p99 }], span);
  lineChart(c2, times, [{ label: 'p50', values: q50 }, { label: 'p99', values: q99 }], span);
  const first = hist[0], last = hist[hist.length - 1];
  const counts = last ? (hist.length > 1 ? delta(last.s.batchSize.counts, first.s.batchSize.counts)
    : last.s.batchSize.counts) : bb.map(() => 0).concat(0);
  const labels = bb.map((b, i) => (i && bb[i - 1] + 1 < b ? `${bb[i - 1] + 1}–${b}` : String(b)))
    .concat(`>${bb[bb.length - 1]}`);
  const top = Math.max(1, counts.findLastIndex((v) => v > 0) + 1, 4); // hide the empty large buckets
  barChart(c3, labels.slice(0, top), counts.slice(0, top));
}

// -- actions --------------------------------------------------------------------------------------
async function act(card, method, path, confirmText) {
  if (confirmText && !window.confirm(confirmText)) return;
  const msg = $('.msg', card);
  msg.className = 'msg';
  msg.textContent = `${method} ${path} …`;
  card.querySelectorAll('button').forEach((b) => { b.disabled = true; });
  try {
    const resp = await api(path, { method });
    msg.textContent = `${resp.status}: ${await message(resp)}`;
    msg.className = `msg ${resp.ok ? 'ok' : 'err'}`;
    return resp.ok;
  } catch (e) {
    msg.textContent = String(e);
    msg.className = 'msg err';
  } finally {
    card.querySelectorAll('button').forEach((b) => { b.disabled = false; });
    poll();
  }
}

const modelPath = (m) => `/models/${enc(m.modelName)}/${enc(m.modelVersion)}`;

async function scale(card, m) {
  const input = $('.scale-n', card);
  const n = Number.parseInt(input.value, 10);
  if (!(n >= 0)) return;
  if (await act(card, 'PUT', `${modelPath(m)}?min_worker=${n}&max_worker=${n}&synchronous=true`)) delete input.dataset.dirty;
}
const setDefault = (card, m) => act(card, 'PUT', `${modelPath(m)}/set-default`);
const unregister = (card, m) => act(card, 'DELETE', modelPath(m),
  `Unregister ${m.modelName} version ${m.modelVersion}? Its queued requests are answered, then its workers stop.`);

// -- try it ---------------------------------------------------------------------------------------
function renderModelChoice() {
  const sel = $('#try-model');
  const current = sel.value;
  const opts = [];
  for (const m of state.stats.models) {
    if (m.isDefault) opts.push([m.modelName, `${m.modelName} (default: ${m.modelVersion})`]);
  }
  for (const m of state.stats.models) opts.push([`${m.modelName}/${m.modelVersion}`, `${m.modelName} / ${m.modelVersion}`]);
  const sig = opts.map((o) => o[0]).join('\n');
  if (sel.dataset.sig === sig) return;
  sel.dataset.sig = sig;
  sel.replaceChildren(...opts.map(([v, t]) => h('option', { value: v }, t)));
  if (opts.some((o) => o[0] === current)) sel.value = current;
}

function mode() { return $('input[name=mode]:checked').value; }

function showMode() {
  for (const el of document.querySelectorAll('[data-mode]')) el.hidden = !el.dataset.mode.split(' ').includes(mode());
}

function inferenceBase() {
  const addr = state.stats ? state.stats.inferenceAddress : 'http://127.0.0.1:8080';
  const url = new URL(addr.includes('://') ? addr : `http://${addr}`);
  if (['0.0.0.0', '[::]', ''].includes(url.hostname)) url.hostname = location.hostname;
  return url.origin;
}

function curlFor(target, m, ct, body) {
  const parts = ['curl', '-X', 'POST', quote(`${inferenceBase()}/predictions/${target}`)];
  if (state.stats && state.stats.auth) parts.push('-H', '"Authorization: Bearer $INFERENCE_KEY"');
  if (m === 'file') {
    if (ct !== 'application/octet-stream') parts.push('-H', quote(`Content-Type: ${ct}`));
    parts.push('-T', quote(state.file.name));
  } else {
    parts.push('-H', quote(`Content-Type: ${ct}`), '--data-binary', quote(body));
  }
  return parts.join(' ');
}

async function send(ev) {
  ev.preventDefault();
  const choice = $('#try-model').value;
  if (!choice) return;
  const target = choice.split('/').map(enc).join('/');
  const m = mode();
  let body, ct;
  if (m === 'file') {
    if (!state.file) { $('#drop-label').textContent = 'Choose a file first:'; return; }
    body = state.file;
    ct = state.file.type || 'application/octet-stream';
  } else {
    body = $('#try-text').value;
    ct = m === 'json' ? 'application/json' : 'text/plain';
    if (m === 'json') {
      try { JSON.parse(body); } catch (e) { return showResult({ error: `Invalid JSON: ${e.message}` }); }
    }
  }
  const started = performance.now();
  $('#try-send').disabled = true;
  try {
    const resp = await api(`/console/api/predict/${target}`, { method: 'POST', body, headers: { 'Content-Type': ct } });
    if (!resp.ok) return showResult({ error: `console API: HTTP ${resp.status}: ${await message(resp)}` });
    showResult({ answer: await resp.json(), rtt: performance.now() - started, curl: curlFor(target, m, ct, body) });
  } catch (e) {
    showResult({ error: String(e) });
  } finally {
    $('#try-send').disabled = false;
  }
}

function showResult({ answer, rtt, curl, error }) {
  $('#try-result').hidden = false;
  const img = $('#try-image');
  img.hidden = true;
  if (error) {
    $('#try-status').textContent = 'Error';
    $('#try-status').className = 'err';
    $('#try-meta').textContent = '';
    $('#try-body').textContent = error;
    $('#try-curl').textContent = '';
    return;
  }
  const a = answer;
  $('#try-status').textContent = `HTTP ${a.status}`;
  $('#try-status').className = a.status < 400 ? 'ok' : 'err';
  $('#try-meta').textContent = `${a.latencyMs.toFixed(1)} ms in the server, ${rtt.toFixed(1)} ms round trip · `
    + `${a.contentType} · ${a.bytes} bytes · x-request-id ${a.requestId}`;
  let text = a.body;
  if (a.bodyEncoding === 'base64' && a.contentType.startsWith('image/')) {
    img.src = `data:${a.contentType};base64,${a.body}`;
    img.hidden = false;
    text = '';
  } else if (a.bodyEncoding === 'base64') {
    text = `(binary, base64) ${a.body.slice(0, 2000)}`;
  } else {
    try { text = JSON.stringify(JSON.parse(a.body), null, 2); } catch { /* not JSON: as is */ }
  }
  $('#try-body').textContent = text;
  $('#try-curl').textContent = curl;
}

function pickFile(file) {
  state.file = file || null;
  $('#drop-label').textContent = file ? `${file.name} (${file.size} bytes) — or another:` : 'Drop a file here, or';
}

// -- API docs -------------------------------------------------------------------------------------
async function loadApiDocs() {
  state.apiLoaded = true;
  const root = $('#api-docs');
  const docs = [
    ['Management API', '/api-description', (p) => p, location.origin],
    ['Inference API', '/console/api/inference?path=%2Fapi-description',
      (p) => `/console/api/inference?path=${enc(p)}`, inferenceBase()],
  ];
  const out = [];
  for (const [title, url, via, origin] of docs) {
    try {
      const resp = await api(url);
      if (!resp.ok) throw new Error(`HTTP ${resp.status}: ${await message(resp)}`);
      out.push(renderDoc(title, await resp.json(), via, origin));
    } catch (e) {
      state.apiLoaded = false;
      out.push(h('section', { class: 'doc' }, h('h2', {}, title), h('p', { class: 'err' }, String(e))));
    }
  }
  root.replaceChildren(...out);
}

function renderDoc(title, doc, via, origin) {
  const ops = [];
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      if (!['get', 'put', 'post', 'delete', 'options', 'patch', 'head'].includes(method)) continue;
      ops.push(renderOp(path, method, op, via));
    }
  }
  return h('section', { class: 'doc' },
    h('h2', {}, title, ' ', h('span', { class: 'muted' }, `${origin} · OpenAPI ${doc.openapi} · ${doc.info?.version ?? ''}`)),
    ops);
}

function renderOp(path, method, op, via) {
  const params = op.parameters || [];
  const kids = [];
  if (params.length) {
    kids.push(h('table', { class: 'params' },
      h('thead', {}, h('tr', {}, ['name', 'in', 'type', 'required', 'description'].map((t) => h('th', {}, t)))),
      h('tbody', {}, params.map((p) => h('tr', {}, h('td', {}, h('code', {}, p.name)), h('td', {}, p.in),
        h('td', {}, p.schema?.type ?? ''), h('td', {}, p.required ? 'yes' : ''), h('td', {}, p.description ?? ''))))));
  }
  if (method === 'get') {
    const inputs = params.map((p) => h('input', { name: p.name, placeholder: p.name, 'data-in': p.in,
      'aria-label': p.name, required: p.in === 'path' }));
    const out = h('pre', { class: 'try-out', hidden: true });
    const form = h('form', { class: 'try-get' }, inputs, h('button', { type: 'submit' }, 'Try'), out);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      let p = path;
      const q = new URLSearchParams();
      for (const i of inputs) {
        if (i.dataset.in === 'path') p = p.replace(`{${i.name}}`, enc(i.value));
        else if (i.value) q.set(i.name, i.value);
      }
      if ([...q].length) p += `?${q}`;
      out.hidden = false;
      out.textContent = `GET ${p} …`;
      try {
        const resp = await api(via(p));
        let text = await resp.text();
        try { text = JSON.stringify(JSON.parse(text), null, 2); } catch { /* as is */ }
        out.textContent = `GET ${p} → HTTP ${resp.status}\n${text}`;
      } catch (e) {
        out.textContent = String(e);
      }
    });
    kids.push(form);
  }
  return h('details', { class: 'op' },
    h('summary', {}, h('span', { class: `method ${method}` }, method.toUpperCase()), ' ', h('code', {}, path), ' ',
      h('span', { class: 'muted' }, op.summary || op.operationId || '')),
    kids);
}

// -- start ----------------------------------------------------------------------------------------
function start() {
  window.addEventListener('hashchange', showTab);
  $('#login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $('#key').value.trim());
    $('#key').value = '';
    state.apiLoaded = false;
    poll();
    showTab();
  });
  $('#forget').addEventListener('click', () => { sessionStorage.removeItem(KEY); location.reload(); });
  $('#try-form').addEventListener('submit', send);
  for (const r of document.querySelectorAll('input[name=mode]')) r.addEventListener('change', showMode);
  $('#try-file').addEventListener('change', (ev) => pickFile(ev.target.files[0]));
  const drop = $('#drop');
  drop.addEventListener('dragover', (ev) => { ev.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (ev) => {
    ev.preventDefault();
    drop.classList.remove('over');
    if (ev.dataTransfer.files.length) pickFile(ev.dataTransfer.files[0]);
  });
  window.addEventListener('resize', () => renderModels());
  showMode();
  showTab();
  poll();
}

start();
