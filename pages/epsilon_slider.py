"""The Attack page's epsilon slider, drawn in the browser. It holds every computed grid point's
numbers, so moving it repaints them in the same frame, with no round trip to the server (a
Streamlit slider waits for a rerun and its websocket frames: 240-470 ms here). The server hears
the new position afterwards and draws that epsilon's examples and the curve's marker."""
from __future__ import annotations

from streamlit.components.v2 import component

def range_css(scope: str) -> str:
    """The look of a Streamlit slider for the range input inside ``scope`` (a CSS class)."""
    return """
SCOPE input[type=range] { width: 100%; margin: 0.4rem 0; background: transparent;
  -webkit-appearance: none; appearance: none; }
SCOPE input[type=range]:focus { outline: none; }
SCOPE input[type=range]::-webkit-slider-runnable-track { height: 4px; border-radius: 2px;
  background: rgba(49, 51, 63, 0.2); }
SCOPE input[type=range]::-webkit-slider-thumb { -webkit-appearance: none; width: 14px;
  height: 14px; margin-top: -5px; border-radius: 50%; background: var(--st-primary-color, #ff4b4b); }
SCOPE input[type=range]:focus-visible::-webkit-slider-thumb { box-shadow: 0 0 0 4px rgba(0, 0, 0, 0.15); }
SCOPE input[type=range]::-moz-range-track { height: 4px; border-radius: 2px;
  background: rgba(49, 51, 63, 0.2); }
SCOPE input[type=range]::-moz-range-thumb { width: 14px; height: 14px; border: none;
  border-radius: 50%; background: var(--st-primary-color, #ff4b4b); }
""".replace("SCOPE", scope)


_CSS = range_css(".rl-eps") + """
.rl-eps { font-family: var(--st-font, "Source Sans Pro", sans-serif); color: var(--st-text-color, #31333f); }
.rl-eps-head { display: flex; justify-content: space-between; font-size: 0.875rem; margin-bottom: 0.25rem; }
.rl-eps-value { font-weight: 600; color: var(--st-primary-color, #ff4b4b); }
.rl-eps-ends { display: flex; justify-content: space-between; font-size: 0.75rem; opacity: 0.6; }
.rl-eps-model { margin-top: 0.75rem; }
.rl-eps-name { font-weight: 600; margin-bottom: 0.25rem; }
.rl-eps-metrics { display: grid; grid-template-columns: repeat(auto-fit, minmax(9rem, 1fr)); gap: 0.5rem 1rem; }
.rl-eps-label { font-size: 0.875rem; }
.rl-eps-number { font-size: 2.25rem; line-height: 1.2; }
.rl-eps-delta { font-size: 0.875rem; color: #d33; }
.rl-eps-note { font-size: 0.75rem; opacity: 0.7; }
.rl-eps-pending { font-style: italic; opacity: 0.7; padding: 0.5rem 0; }
"""

_JS = """
export default function (component) {
  const { data, parentElement, setStateValue } = component;
  let root = parentElement.querySelector('.rl-eps');
  if (!root) {  // built once: a rebuilt input would drop the keyboard focus between presses
    root = document.createElement('div');
    root.className = 'rl-eps';
    root.innerHTML = '<div class="rl-eps-head"><span class="rl-eps-title"></span>' +
      '<span class="rl-eps-value"></span></div><input type="range" min="0" step="1">' +
      '<div class="rl-eps-ends"><span></span><span></span></div><div class="rl-eps-models"></div>';
    parentElement.appendChild(root);
    const input = root.querySelector('input');
    input.value = String(data.index);
    input.addEventListener('input', () => root.paint(Number(input.value)));
    input.addEventListener('change', () => setStateValue('index', Number(input.value)));
  }
  const input = root.querySelector('input');
  const esc = (t) => String(t).replace(/[&<>"']/g, (c) => '&#' + c.charCodeAt(0) + ';');
  const pct = (v) => (100 * v).toFixed(2) + '%';
  const metric = (label, value, delta, note) =>
    '<div class="rl-eps-metric" data-testid="eps-metric"><div class="rl-eps-label">' + label +
    '</div><div class="rl-eps-number" data-testid="eps-metric-value">' + value + '</div>' +
    (delta ? '<div class="rl-eps-delta">' + delta + '</div>' : '') +
    (note ? '<div class="rl-eps-note" data-testid="eps-metric-interval">' + note + '</div>' : '') +
    '</div>';
  root.paint = (i) => {
    input.setAttribute('aria-valuetext', data.labels[i]);
    root.querySelector('.rl-eps-value').textContent = data.labels[i];
    root.querySelector('.rl-eps-models').innerHTML = data.models.map((m) => {
      const r = m.results[i];
      const name = m.name ? '<div class="rl-eps-name">' + esc(m.name) + '</div>' : '';
      if (!r) return '<div class="rl-eps-model">' + name +
        '<div class="rl-eps-pending">This epsilon is still being computed…</div></div>';
      const delta = r.adv_acc - r.clean_acc;
      return '<div class="rl-eps-model">' + name + '<div class="rl-eps-metrics">' +
        metric('Clean accuracy', pct(r.clean_acc)) +
        metric('Accuracy under attack', pct(r.adv_acc), (delta < 0 ? '−' : '+') + (100 * Math.abs(delta)).toFixed(1) + ' pp',
               r.adv_acc_ci ? '95%: ' + (100 * r.adv_acc_ci[0]).toFixed(1) + '–' +
               (100 * r.adv_acc_ci[1]).toFixed(1) + '% of ' + r.n + ' images' : '') +
        metric('Attack success rate', pct(r.success_rate), '',
               r.success_note ? '95%: ' + r.success_note : '') +
        metric('Median L2 of flips', r.l2_median == null ? '—' : r.l2_median.toFixed(3)) +
        '</div></div>';
    }).join('');
  };
  input.max = String(data.labels.length - 1);
  input.setAttribute('aria-label', data.label);
  root.querySelector('.rl-eps-title').textContent = data.label;
  const ends = root.querySelectorAll('.rl-eps-ends span');
  ends[0].textContent = data.labels[0];
  ends[1].textContent = data.labels[data.labels.length - 1];
  root.paint(Number(input.value));
}
"""

_slider = component("robustlab.epsilon_slider", css=_CSS, js=_JS, isolate_styles=False)


def epsilon_slider(label: str, labels: list[str], models: list[dict], index: int,
                   key: str) -> int:
    """Mount the slider over ``labels`` (one per grid point) with each model's results
    (``{"name", "results": [summary or None per point]}``); return the chosen point's index
    (``index`` until the user moves it)."""
    result = _slider(key=key, data={"label": label, "labels": labels, "models": models,
                                    "index": index},
                     default={"index": index}, on_index_change=lambda: None)
    chosen = result.index if isinstance(result.index, int) else index
    return min(max(chosen, 0), len(labels) - 1)
