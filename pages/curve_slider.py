"""The Attack page's curve mode drawn in the browser: the continuous epsilon slider, the four
numbers under it and the curve's chart with its marker. The browser holds the curve's sorted
smallest norms, so a move counts the images broken at or below epsilon, computes the Wilson
intervals and moves the marker in the same frame, with no round trip to the server (a
Streamlit slider and a Plotly chart wait for a rerun: 118-155 ms here on an idle machine,
200-260 ms beside a training). The server hears the new epsilon afterwards and draws that
epsilon's examples."""
from __future__ import annotations

import math

from streamlit.components.v2 import component

from core.curve import FLOAT32_ROUNDING, RobustnessCurve
from core.confidence import Z95
from core.figures import PALETTE, faded
from pages.epsilon_slider import range_css

_CSS = range_css(".rl-curve") + """
.rl-curve { font-family: var(--st-font, "Source Sans Pro", sans-serif); color: var(--st-text-color, #31333f); }
.rl-curve-head { display: flex; justify-content: space-between; font-size: 0.875rem; margin-bottom: 0.25rem; }
.rl-curve-value { font-weight: 600; color: var(--st-primary-color, #ff4b4b); }
.rl-curve-ends { display: flex; justify-content: space-between; font-size: 0.75rem; opacity: 0.6; }
.rl-curve-metrics { display: grid; grid-template-columns: repeat(auto-fit, minmax(9rem, 1fr));
  gap: 0.5rem 1rem; margin-top: 0.75rem; }
.rl-curve-label { font-size: 0.875rem; }
.rl-curve-number { font-size: 2.25rem; line-height: 1.2; }
.rl-curve-delta { display: inline-block; font-size: 0.875rem; color: #d33; background: rgba(255, 43, 43, 0.09);
  border-radius: 0.75rem; padding: 0 0.5rem; }
.rl-curve-note { font-size: 0.875rem; opacity: 0.6; margin-top: 0.25rem; }
.rl-curve-caption { font-size: 0.875rem; opacity: 0.6; margin: 0.75rem 0 0.25rem; }
.rl-curve svg { width: 100%; height: 320px; display: block; overflow: visible; }
.rl-curve svg text { font-size: 11px; fill: currentColor; opacity: 0.7; }
.rl-curve-grid { stroke: rgba(49, 51, 63, 0.1); }
"""

_JS = """
export default function (component) {
  const { data, parentElement, setStateValue } = component;
  const STEPS = data.steps;
  let root = parentElement.querySelector('.rl-curve');
  if (!root) {  // built once: a rebuilt input would drop the keyboard focus between presses
    root = document.createElement('div');
    root.className = 'rl-curve';
    root.innerHTML = '<div class="rl-curve-head"><span class="rl-curve-title"></span>' +
      '<span class="rl-curve-value"></span></div><input type="range" min="0" step="1">' +
      '<div class="rl-curve-ends"><span></span><span></span></div>' +
      '<div class="rl-curve-metrics"></div><div class="rl-curve-caption"></div>' +
      '<svg data-testid="curve-chart" preserveAspectRatio="none"></svg>';
    parentElement.appendChild(root);
    const input = root.querySelector('input');
    input.max = String(STEPS);  // before the value: a range input clamps it to its max (100)
    input.value = String(data.index);
    input.addEventListener('input', () => root.paint(Number(input.value)));
    input.addEventListener('change', () => setStateValue('index', Number(input.value)));
    new ResizeObserver(() => root.draw && root.draw()).observe(root);
  }
  const input = root.querySelector('input');
  const svg = root.querySelector('svg');
  const norms = data.finite;  // sorted finite smallest norms above 0
  const n = data.n, correct = n - data.zeros;
  const epsAt = (i) => data.top * i / STEPS;
  // images broken at or below eps: misclassified (norm 0) and finite norms within float32
  // rounding of eps (as core.curve.RobustnessCurve.robust counts them)
  const brokenAt = (eps) => {
    const t = eps * (1 + data.rounding);
    let lo = 0, hi = norms.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (norms[mid] <= t) lo = mid + 1; else hi = mid; }
    return data.zeros + lo;
  };
  const wilson = (k, m) => {
    if (m <= 0) return [0, 1];
    const z = data.z, p = k / m, d = 1 + z * z / m;
    const centre = (p + z * z / (2 * m)) / d;
    const half = z * Math.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / d;
    return [Math.min(Math.max(centre - half, 0), 1), Math.min(Math.max(centre + half, 0), 1)];
  };
  // as Python formats: the exact binary value rounded, an exact tie to the even digit
  // (toFixed takes the larger one: 28.125 would read 28.13 here and 28.12 in core's text)
  const fixed = (x, d) => {
    const t = x * Math.pow(10, d);
    if (Number.isInteger(2 * t) && !Number.isInteger(t)) {
      const down = Math.floor(t);
      return ((down % 2 === 0 ? down : down + 1) / Math.pow(10, d)).toFixed(d);
    }
    return x.toFixed(d);
  };
  const pct = (v) => fixed(100 * v, 2) + '%';
  const ci = (k, m) => { const [a, b] = wilson(k, m); return fixed(100 * a, 1) + '-' + fixed(100 * b, 1) + '%'; };
  const esc = (t) => String(t).replace(/[&<>"']/g, (c) => '&#' + c.charCodeAt(0) + ';');
  const label = (eps) => eps.toFixed(4);
  const metric = (name, value, delta, note, id) =>
    '<div class="rl-curve-metric" data-testid="' + id + '"><div class="rl-curve-label">' + name +
    '</div><div class="rl-curve-number" data-testid="curve-metric-value">' + value + '</div>' +
    (delta ? '<div class="rl-curve-delta">' + delta + '</div>' : '') +
    (note ? '<div class="rl-curve-note">' + note + '</div>' : '') + '</div>';
  // the chart: margins in pixels, the plot area scaled to the element's width
  const M = { l: 50, r: 10, t: 12, b: 36 };
  const nice = (top) => {
    const raw = top / 5, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((s) => s * mag).find((s) => s >= raw) || raw;
    const ticks = []; for (let v = 0; v <= top + 1e-12; v += step) ticks.push(v);
    return ticks;
  };
  root.draw = () => {
    const W = Math.max(svg.clientWidth, 200), H = 320;
    const x = (e) => M.l + (W - M.l - M.r) * e / data.top;
    const y = (a) => M.t + (H - M.t - M.b) * (1 - a / 1.02);
    svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
    const d = data.drawn;
    // a step after each point ("hv"): the value holds until the next point's epsilon
    const steps = (col) => d.map((p, k) => (k ? 'H' + x(p[0]).toFixed(1) + 'V' : 'M' + x(p[0]).toFixed(1) + ',') + y(p[col]).toFixed(1)).join('');
    // the band: its upper edge stepping left to right, then its lower edge stepping back
    let band = steps(3) + 'V' + y(d[d.length - 1][2]).toFixed(1);
    for (let k = d.length - 2; k >= 0; k--) band += 'V' + y(d[k][2]).toFixed(1) + 'H' + x(d[k][0]).toFixed(1);
    band += 'Z';
    let grid = '';
    for (const a of [0, 0.2, 0.4, 0.6, 0.8, 1]) grid += '<line class="rl-curve-grid" x1="' + M.l + '" x2="' + (W - M.r) + '" y1="' + y(a) + '" y2="' + y(a) + '"/>' +
      '<text x="' + (M.l - 6) + '" y="' + (y(a) + 4) + '" text-anchor="end">' + Math.round(a * 100) + '%</text>';
    for (const e of nice(data.top)) grid += '<text x="' + x(e) + '" y="' + (H - M.b + 16) + '" text-anchor="middle">' + +e.toPrecision(4) + '</text>';
    grid += '<text x="' + (M.l + (W - M.l - M.r) / 2) + '" y="' + (H - 4) + '" text-anchor="middle">' + esc(data.axis) + '</text>';
    grid += '<text transform="translate(12,' + (M.t + (H - M.t - M.b) / 2) + ') rotate(-90)" text-anchor="middle">robust accuracy</text>';
    const marks = data.marks.map((m) => '<g data-testid="curve-mark"><title>' + esc(m.label) + ': ' + pct(m.acc) + ' at ε ' + label(m.eps) + '</title>' +
      '<path d="M' + (x(m.eps) - 5) + ',' + (y(m.acc) - 5) + 'l10,10m0,-10l-10,10" stroke="#111827" stroke-width="2.5"/></g>').join('');
    svg.innerHTML = grid + '<path d="' + band + '" fill="' + data.band + '" stroke="none"/>' +
      '<path d="' + steps(1) + '" fill="none" stroke="' + data.colour + '" stroke-width="2"/>' + marks +
      '<line data-testid="curve-marker" y1="' + M.t + '" y2="' + (H - M.b) + '" stroke="#6b7280" stroke-width="1.5" stroke-dasharray="5,4"/>';
    root.marker = svg.querySelector('[data-testid=curve-marker]');
    root.xOf = x;
    root.paint(Number(input.value));
  };
  root.paint = (i) => {
    const eps = epsAt(i), shown = label(eps);
    input.setAttribute('aria-valuetext', shown);
    input.setAttribute('data-eps', String(eps));
    root.querySelector('.rl-curve-value').textContent = shown + (data.norm === 'linf' ? ' = ' + (eps * 255).toFixed(1) + '/255' : '');
    const robust = n - brokenAt(eps), broken = correct - robust;
    const acc = n ? robust / n : 0, clean = n ? correct / n : 0;
    const delta = 100 * (acc - clean);
    root.querySelector('.rl-curve-metrics').innerHTML =
      metric('Clean accuracy', pct(clean), '', '95% interval ' + ci(correct, n) + ' of ' + n.toLocaleString('en-US') + ' images', 'curve-clean') +
      metric('Robust accuracy', pct(acc), (delta < 0 ? '-' : '+') + fixed(Math.abs(delta), 1) + ' pp',
             '95% interval ' + ci(robust, n) + ' of ' + n.toLocaleString('en-US') + ' images', 'curve-robust') +
      metric('Attack success rate', correct ? pct(broken / correct) : '—', '',
             correct ? '95% interval ' + ci(broken, correct) + ' of ' + correct.toLocaleString('en-US') + ' correct images' : '', 'curve-success') +
      metric('Median smallest norm', data.median, '', '', 'curve-median');
    if (root.marker) {
      const px = root.xOf(eps).toFixed(1);
      root.marker.setAttribute('x1', px); root.marker.setAttribute('x2', px);
      root.marker.setAttribute('data-eps', shown);
    }
  };
  input.max = String(STEPS);
  input.setAttribute('aria-label', data.label);
  root.querySelector('.rl-curve-title').textContent = data.label;
  const ends = root.querySelectorAll('.rl-curve-ends span');
  ends[0].textContent = label(0);
  ends[1].textContent = label(data.top);
  root.querySelector('.rl-curve-caption').textContent = data.caption;
  root.draw();
}
"""

_slider = component("robustlab.curve_slider", css=_CSS, js=_JS, isolate_styles=False)
STEPS = 1000  # slider positions from 0 to the top of the chart


def curve_slider(curve: RobustnessCurve, top: float, start: float, caption: str,
                 marks: list[dict], key: str, colour: str = PALETTE[0]) -> float:
    """Mount the slider, numbers and chart of ``curve`` from 0 to ``top`` (``marks``:
    fixed-budget figures, ``eps``, ``acc`` and ``label``, drawn as ✕); return the chosen
    epsilon (``start`` until the user moves it)."""
    index = min(max(round(start / top * STEPS), 0), STEPS) if top > 0 else 0
    norms = sorted(curve.norms)
    median = curve.median()
    data = {"label": f"ε ({'L∞' if curve.norm == 'linf' else 'L2'}, pixel units; continuous)",
            "norm": curve.norm, "n": curve.n, "zeros": sum(1 for v in norms if v == 0),
            "finite": [v for v in norms if 0 < v < math.inf], "top": top, "steps": STEPS,
            "index": index, "rounding": FLOAT32_ROUNDING, "z": Z95,
            "drawn": [list(p) for p in curve.drawn(top)], "marks": marks,
            "median": "above every norm found" if math.isinf(median) else
            ("—" if math.isnan(median) else f"{median:.4f}"),
            "axis": f"ε ({'L∞' if curve.norm == 'linf' else 'L2'}, pixel units)",
            "caption": caption, "colour": colour, "band": faded(colour)}
    result = _slider(key=key, data=data, default={"index": index}, on_index_change=lambda: None)
    chosen = result.index if isinstance(result.index, int) else index
    return top * min(max(chosen, 0), STEPS) / STEPS
