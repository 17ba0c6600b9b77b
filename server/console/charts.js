// Charts: sparklines drawn straight on a small canvas (a thousand cards each draw five), and
// time-series charts with uPlot (vendor/uPlot.iife.min.js).

const COLORS = ['#1c7ed6', '#e8590c', '#2f9e44', '#9c36b5', '#f08c00', '#0b7285', '#c2255c', '#5c940d'];
export const color = (i) => COLORS[i % COLORS.length];

/** Draws `values` (numbers or null, oldest first) on `canvas`; `max` fixes the top (100 for %). */
export function sparkline(canvas, values, max) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 100;
  const hgt = canvas.clientHeight || 20;
  if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(hgt * dpr); }
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, hgt);
  const vs = values.filter((v) => v !== null && Number.isFinite(v));
  if (vs.length < 2) return;
  const top = max ?? (Math.max(...vs) * 1.1 || 1);
  const bottom = max === undefined ? Math.min(0, ...vs) : 0;
  const span = top - bottom || 1;
  const step = w / Math.max(1, values.length - 1);
  g.beginPath();
  let drawing = false;
  values.forEach((v, i) => {
    if (v === null || !Number.isFinite(v)) { drawing = false; return; }
    const x = i * step;
    const y = hgt - 1 - ((v - bottom) / span) * (hgt - 2);
    if (drawing) g.lineTo(x, y); else g.moveTo(x, y);
    drawing = true;
  });
  g.strokeStyle = '#1c7ed6';
  g.lineWidth = 1.2;
  g.stroke();
}

/**
 * Puts series of `[t_ms, value]` points on one x axis, as uPlot wants them: `[xs_seconds,
 * ys_1, ...]` with null where a series has no point.
 */
export function align(series) {
  const xs = [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const ys = series.map((s) => {
    const y = new Array(xs.length).fill(null);
    for (const [t, v] of s.points) y[at.get(t)] = v;
    return y;
  });
  return [xs.map((x) => x / 1000), ...ys];
}

/**
 * A time-series chart in `el`: `series` are `{label, points, dash, color}`; the chart fits the
 * element's width, and with `span` (seconds) its x axis is the last `span` seconds up to now.
 * `fmt` formats values in the legend, `axisFmt` (default: uPlot's own) on the y axis.
 * Returns `{update(series), destroy()}`.
 */
export function timeChart(el, title, series, fmt = (v) => v, span = null, axisFmt = null) {
  const x = span ? { time: true, range: () => { const now = Date.now() / 1000; return [now - span, now]; } } : { time: true };
  const opts = (ss) => ({
    title,
    width: Math.max(280, el.clientWidth || 480),
    height: 200,
    scales: { x },
    series: [{}, ...ss.map((s, i) => ({
      label: s.label,
      stroke: s.color || color(i),
      width: 1.5,
      dash: s.dash ? [5, 4] : undefined,
      spanGaps: true,
      value: (u, v) => (v === null ? '–' : fmt(v)),
    }))],
    axes: [{}, axisFmt ? { values: (u, vals) => vals.map(axisFmt), size: 60 } : { size: 60 }],
  });
  let plot = new window.uPlot(opts(series), align(series), el);
  let labels = series.map((s) => s.label).join('\n');
  return {
    update(ss) {
      const l = ss.map((s) => s.label).join('\n');
      if (l !== labels) {
        plot.destroy();
        plot = new window.uPlot(opts(ss), align(ss), el);
        labels = l;
      } else {
        plot.setData(align(ss));
      }
    },
    destroy() { plot.destroy(); },
  };
}

/** Per-second rates of a counter's points (a reset gives no point). */
export function rate(points) {
  const out = [];
  for (let i = 1; i < points.length; i += 1) {
    const dt = (points[i][0] - points[i - 1][0]) / 1000;
    const dv = points[i][1] - points[i - 1][1];
    out.push([points[i][0], dt > 0 && dv >= 0 ? dv / dt : null]);
  }
  return out;
}
