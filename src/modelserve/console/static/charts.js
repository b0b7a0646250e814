// Small hand-drawn <canvas> charts and histogram math for the console (no chart library).

export const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea'];

// histogram_quantile: q-quantile of per-bucket counts (last bucket is +Inf), linear within a bucket.
export function quantile(counts, bounds, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!total) return null;
  const rank = q * total;
  let acc = 0;
  for (let i = 0; i < counts.length; i++) {
    const prev = acc;
    acc += counts[i];
    if (counts[i] > 0 && acc >= rank) {
      if (i >= bounds.length) return bounds[bounds.length - 1];
      const lo = i === 0 ? 0 : bounds[i - 1];
      return lo + (bounds[i] - lo) * ((rank - prev) / counts[i]);
    }
  }
  return bounds[bounds.length - 1];
}

// Per-bucket counts of b minus a; a counter that went down (the version was re-registered) restarts at b.
export function delta(b, a) {
  if (!a) return b.slice();
  const d = b.map((v, i) => v - (a[i] || 0));
  return d.some((v) => v < 0) ? b.slice() : d;
}

function setup(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 240;
  const h = canvas.clientHeight || 120;
  if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
  if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = '10px system-ui, sans-serif';
  return { ctx, w, h };
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function fmt(v) {
  if (v === 0) return '0';
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1).replace(/\.0$/, '');
  return v.toPrecision(2).replace(/\.?0+$/, '');
}

function axes(ctx, box, max) {
  ctx.strokeStyle = '#e5e7eb';
  ctx.fillStyle = '#6b7280';
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (let i = 0; i <= 2; i++) {
    const y = box.y + box.h - (box.h * i) / 2;
    ctx.beginPath();
    ctx.moveTo(box.x, y);
    ctx.lineTo(box.x + box.w, y);
    ctx.stroke();
    ctx.fillText(fmt((max * i) / 2), box.x - 4, y);
  }
}

function empty(ctx, w, h, text) {
  ctx.fillStyle = '#9ca3af';
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.fillText(text, w / 2, h / 2);
}

// series: [{label, values}] aligned with times (seconds); null values leave a gap.
export function lineChart(canvas, times, series, span) {
  const { ctx, w, h } = setup(canvas);
  const box = { x: 40, y: 16, w: w - 48, h: h - 34 };
  const all = series.flatMap((s) => s.values).filter((v) => v != null);
  const max = niceMax(Math.max(0, ...all));
  axes(ctx, box, max);
  const t1 = times.length ? times[times.length - 1] : 0;
  const t0 = t1 - span;
  ctx.fillStyle = '#6b7280';
  ctx.textBaseline = 'top';
  ctx.textAlign = 'left';
  ctx.fillText(span < 120 ? `-${Math.round(span)} s` : `-${Math.round(span / 60)} min`, box.x, box.y + box.h + 4);
  ctx.textAlign = 'right';
  ctx.fillText('now', box.x + box.w, box.y + box.h + 4);
  let lx = box.x;
  series.forEach((s, k) => {
    const color = COLORS[k % COLORS.length];
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let pen = false;
    times.forEach((t, i) => {
      const v = s.values[i];
      if (v == null || t < t0) { pen = false; return; }
      const x = box.x + ((t - t0) / span) * box.w;
      const y = box.y + box.h - (Math.min(v, max) / max) * box.h;
      if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      pen = true;
    });
    ctx.stroke();
    ctx.fillStyle = color;
    ctx.textAlign = 'left';
    ctx.textBaseline = 'alphabetic';
    ctx.fillText(s.label, lx, 11);
    lx += ctx.measureText(s.label).width + 12;
  });
  if (!all.length) empty(ctx, w, h, 'no data yet');
}

export function barChart(canvas, labels, values) {
  const { ctx, w, h } = setup(canvas);
  const box = { x: 40, y: 16, w: w - 48, h: h - 34 };
  const total = values.reduce((a, b) => a + b, 0);
  const max = niceMax(Math.max(0, ...values));
  axes(ctx, box, max);
  const bw = box.w / values.length;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  values.forEach((v, i) => {
    const bh = (v / max) * box.h;
    ctx.fillStyle = COLORS[0];
    ctx.fillRect(box.x + i * bw + 2, box.y + box.h - bh, Math.max(1, bw - 4), bh);
    ctx.fillStyle = '#6b7280';
    ctx.fillText(labels[i], box.x + i * bw + bw / 2, box.y + box.h + 4);
  });
  ctx.textAlign = 'left';
  ctx.textBaseline = 'alphabetic';
  ctx.fillText(`${total} batches`, box.x, 11);
  if (!total) empty(ctx, w, h, 'no batches yet');
}
