"""How fast the dashboard answers, in a real browser (Debian's chromium driven by Playwright):
the time from navigation to each page's first content (opening its address, and clicking its
sidebar link), and from an epsilon-slider key press to the updated accuracy painted on the
Attack page once its grid is computed (measured in the page), on an idle machine and
again while a sweep runs in the background (its worker at lower priority). The server's very
first visit, while it still loads torch and the pages' libraries, is reported on its own; the
rest begins once the server is idle.

    python benchmarks/dashboard_speed.py [--repeats 5] [--moves 20]

With ``--curves 1000,10000`` it measures the Attack page's curve mode instead: for a curve of
each size (its smallest norms drawn at random, written by the curve job's own writer: drawing
does not depend on how the norms were found), the time from an arrow key on the continuous
slider to the robust accuracy, the chart's ε marker and the examples painted (measured in the
page). ``--root`` serves another checkout of the project (a ``git worktree`` of an earlier
commit) with the same artifacts, for a before-and-after in one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from small_model import ROOT, small_mnist_model

sys.path.insert(0, str(ROOT))
from benchmarks.common import machine  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def serve(port: int, root: Path = ROOT) -> subprocess.Popen:
    """The dashboard as a user starts it (from ``root``), on ``port``; returns once it
    answers."""
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard.py",
                             "--server.port", str(port), "--server.headless", "true"],
                            cwd=root, env=dict(os.environ), stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.25)
    raise RuntimeError("the dashboard did not start")


def wait_until_idle(pid: int, timeout: float = 120.0) -> float:
    """Wait until process ``pid`` uses under 5% of a core for a whole second (the dashboard has
    finished loading its libraries after its first visit); returns the seconds waited."""
    def cpu() -> float:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        before = cpu()
        time.sleep(1.0)
        if cpu() - before < 0.05:
            break
    return time.perf_counter() - began


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


FIRST_CONTENT = {"train": "Train a model", "evaluate": "Accuracy",
                 "attack": "Accuracy under attack", "robustness": "Audit a model",
                 "compare": "Compare runs"}


# An element whose own text reads exactly ``text`` and is rendered, looked up by the browser's
# native XPath on every animation frame: Playwright's `expect` polls at 0, 20, 70, 170, 270,
# 770, 1270 ms ... and would round a load time up to its next poll.
SHOWS = """(text) => {
  const found = document.evaluate(`//*[text()[normalize-space(.)=${JSON.stringify(text)}]]`,
                                   document.body, null, XPathResult.ORDERED_NODE_SNAPSHOT_TYPE);
  for (let i = 0; i < found.snapshotLength; i++) {
    if (found.snapshotItem(i).getClientRects().length) return true;
  }
  return false;
}"""


def wait_for_text(page, text: str) -> None:
    """Return once ``text`` is on screen (checked every frame)."""
    page.wait_for_function(SHOWS, arg=text, polling="raf", timeout=60_000)


def sidebar_loads(page, url: str, repeats: int) -> dict[str, list[float]]:
    """Seconds from a click on a page's link in the sidebar (how a user moves between pages:
    the app stays loaded) to the page's first real content. With one model in the lab every
    page shows it without a ?model= link."""
    page.goto(url)
    wait_for_text(page, FIRST_CONTENT["train"])
    times: dict[str, list[float]] = {name: [] for name in FIRST_CONTENT}
    for _ in range(repeats):
        for name in ("evaluate", "attack", "robustness", "compare", "train"):
            began = time.perf_counter()
            page.get_by_role("link", name=name.capitalize(), exact=True).click()
            wait_for_text(page, FIRST_CONTENT[name])
            times[name].append(time.perf_counter() - began)
            page.wait_for_timeout(500)
    return times


def page_loads(page, url: str, run_id: str, repeats: int) -> dict[str, list[float]]:
    """Seconds from opening a page's address (a full load of the app) to its first real
    content."""
    targets = {"train": ("", "Train a model"), "evaluate": (f"/evaluate?model={run_id}",
                                                            "Accuracy"),
               "attack": (f"/attack?model={run_id}", "Accuracy under attack"),
               "robustness": ("/robustness", "Audit a model"),
               "compare": ("/compare", "Compare runs")}
    times: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(repeats):
        for name, (path, text) in targets.items():
            began = time.perf_counter()
            page.goto(f"{url}{path}")
            wait_for_text(page, text)
            times[name].append(time.perf_counter() - began)
    return times


# Installed before each key press: the page notes when the key arrives and when the accuracy
# shown changes (a MutationObserver, then the next animation frame: the paint that shows it).
# Measured in the page because Playwright's own `expect` polls at 0, 20, 70, 170, 270, 770 ms
# and so rounds every latency up to its next poll.
WATCH = """(before) => {
  window.__pressed = null; window.__shown = null;
  document.addEventListener('keydown', () => { window.__pressed = performance.now(); },
                            {once: true, capture: true});
  const read = () => {
    const m = [...document.querySelectorAll('[data-testid="eps-metric"]')]
      .find(e => e.textContent.includes('Accuracy under attack'));
    const v = m && m.querySelector('[data-testid="eps-metric-value"]');
    return v ? v.textContent : null;
  };
  const seen = new MutationObserver(() => {
    const now = read();
    if (now !== null && now !== before) {
      seen.disconnect();
      requestAnimationFrame(() => { window.__shown = performance.now(); });
    }
  });
  seen.observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def slider_moves(page, url: str, run_id: str, moves: int) -> tuple[list[float], list[float]]:
    """Seconds from each arrow key on the epsilon slider to the changed accuracy painted, as
    the page measures it, and as Playwright's polling ``expect`` sees it (older figures)."""
    from playwright.sync_api import expect

    page.goto(f"{url}/attack?model={run_id}")
    metric = page.get_by_test_id("eps-metric").filter(has_text="Accuracy under attack")
    value = metric.get_by_test_id("eps-metric-value")
    expect(value).to_be_visible(timeout=120_000)
    slider = page.get_by_role("slider", name="eps (pixel units)")
    in_page, polled = [], []
    for k in range(moves):
        before = value.inner_text()
        slider.focus()
        page.evaluate(WATCH, before)
        began = time.perf_counter()
        page.keyboard.press("ArrowRight" if (k // 3) % 2 == 0 else "ArrowLeft")
        expect(value).not_to_have_text(before, timeout=30_000)
        polled.append(time.perf_counter() - began)
        page.wait_for_function("window.__shown !== null", timeout=30_000)
        in_page.append(page.evaluate("window.__shown - window.__pressed") / 1000)
    return in_page, polled


def synthetic_curve(store, run_id: str, n: int, seed: int = 0) -> str:
    """A completed L-inf curve of ``run_id`` on ``n`` MNIST test images whose smallest norms
    are drawn at random (5% misclassified, 10% never broken), each example at its norm."""
    import torch

    from core import data, reports
    from core.jobs.specs import CurveSpec

    spec = CurveSpec(model_run=run_id, n=n)
    curve_id = store.create_run("curve", spec.to_dict())
    split = data.load("mnist", "test").subset(n, 0)
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g)
    norm = torch.where(u < 0.05, torch.zeros(n), torch.where(
        u > 0.9, torch.full((n,), float("inf")), torch.rand(n, generator=g) * 0.3))
    x = split.floats()
    step = torch.where(torch.isfinite(norm), norm, torch.zeros(n)).view(-1, 1, 1, 1)
    x_adv = (x + step * torch.sign(torch.randn(x.shape, generator=g))).clamp(0, 1)
    from core.prediction import load_model, run_model_path

    model, _ = load_model(run_model_path(run_id))
    with torch.no_grad():
        pred = torch.cat([model(part).argmax(1) for part in x_adv.split(500)])
    found = {"norm": norm, "by": torch.randint(0, 2, (n,), generator=g), "x_adv": x_adv,
             "adv_pred": pred}
    from core.paths import run_dir

    folder = run_dir(curve_id)
    folder.mkdir(parents=True, exist_ok=True)
    summary = reports.write_curve(folder, spec, split, found, ["fmn", "fab", "clean"])
    summary.update(model_run=run_id, source=split.source, search_precision="fp32")
    store.set_summary(curve_id, summary)
    store.set_status(curve_id, "completed")
    return curve_id


# The robust accuracy and the chart's ε marker, in either version of the page: the curve
# slider component drawn in the browser (pages/curve_slider.py), or Streamlit's metric and
# Plotly's layout.shapes (before it).
READERS = """
  const metric = () => { const c = document.querySelector(
        '[data-testid="curve-robust"] [data-testid="curve-metric-value"]');
      if (c) return c.textContent;
      const m = [...document.querySelectorAll('[data-testid="stMetric"]')]
      .find(e => e.textContent.includes('Robust accuracy'));
      const v = m && m.querySelector('[data-testid="stMetricValue"]');
      return v ? v.textContent : null; };
  const marker = () => { const c = document.querySelector('[data-testid="curve-marker"]');
      if (c) return c.getAttribute('data-eps');
      const gd = document.querySelector('.js-plotly-plot');
      return gd && gd.layout && gd.layout.shapes && gd.layout.shapes.length ?
        String(gd.layout.shapes[0].x0) : null; };"""
# Installed before each key press on the curve's slider: when the key arrives, and when the
# robust accuracy, the chart's ε marker and the first example's caption each change (the next
# animation frame after: the paint that shows it).
CURVE_WATCH = """() => {""" + READERS + """
  const example = () => { const c = [...document.querySelectorAll('[data-testid="stImageCaption"]')]
      .map(e => e.textContent).join('|'); return c || null; };
  const before = {metric: metric(), marker: marker(), example: example()};
  window.__t = {pressed: null, metric: null, marker: null, example: null};
  document.addEventListener('keydown', () => { window.__t.pressed = performance.now(); },
                            {once: true, capture: true});
  const look = () => {
    const now = {metric: metric(), marker: marker(), example: example()};
    for (const k of ['metric', 'marker', 'example']) {
      if (window.__t[k] === null && now[k] !== null && now[k] !== before[k]) {
        requestAnimationFrame(() => { if (window.__t[k] === null)
                                        window.__t[k] = performance.now(); });
      }
    }
    if (window.__t.metric === null || window.__t.marker === null ||
        window.__t.example === null) requestAnimationFrame(look);
  };
  requestAnimationFrame(look);
}"""


def curve_moves(page, url: str, run_id: str, moves: int) -> dict[str, list[float]]:
    """Seconds from each arrow key on the curve's slider to the robust accuracy, the marker
    and (when the set broken changed) the examples painted."""
    from playwright.sync_api import expect

    page.goto(f"{url}/attack?model={run_id}")
    box = page.get_by_test_id("stSelectbox").filter(has_text="Attack")
    for _ in range(10):
        box.click()
        try:
            page.get_by_role("option", name="curve (every ε)").click(timeout=5_000)
            break
        except Exception:  # a rerun closed the drop-down: open it again
            page.keyboard.press("Escape")
    slider = page.get_by_role("slider", name="continuous", exact=False)
    expect(slider).to_be_visible(timeout=120_000)
    page.wait_for_selector('.js-plotly-plot, [data-testid="curve-marker"]', state="attached",
                           timeout=120_000)
    # the page's first run ends with the examples; a key pressed before it ends is one a
    # fragment rerun can miss (measured apart: the load, not the move)
    wait_for_text(page, "Broken at or below this ε")
    page.wait_for_timeout(2000)
    out: dict[str, list[float]] = {"metric": [], "marker": [], "example": []}
    at = "(v) => {" + READERS + " const m = marker(); return m !== null && " \
        "Math.abs(Number(m) - v) < 6e-5; }"
    for k in range(moves):
        # settled first: the marker shows the slider's value (a slow page may still be
        # drawing the previous move, whose arrival would pass for this one's)
        page.wait_for_function(at, arg=float(slider.get_attribute("aria-valuetext")),
                               timeout=60_000)
        page.wait_for_timeout(500)
        slider.focus()
        page.evaluate(CURVE_WATCH)
        page.keyboard.press("ArrowRight" if (k // 3) % 2 == 0 else "ArrowLeft")
        value = float(slider.get_attribute("aria-valuetext"))
        page.wait_for_function(at, arg=value, timeout=60_000)
        # the number and the examples change only when the step crossed an image's norm;
        # they come with the same rerun as the marker
        page.wait_for_timeout(300)
        t = page.evaluate("window.__t")
        for key in out:
            if t[key] is not None:
                out[key].append((t[key] - t["pressed"]) / 1000)
    return out


def curve_main(args) -> None:
    """The curve mode's slider on curves of each size, in this checkout and ``--root``."""
    from playwright.sync_api import sync_playwright

    store, run_id, _ = small_mnist_model("robustlab-curve-dash-")
    roots = [("this checkout", ROOT)] + ([("--root " + args.root, Path(args.root))]
                                         if args.root else [])
    print(f"# {machine()}; curve slider, {args.moves} moves per curve")
    print("| code | curve | robust accuracy (moves that changed it): median / p95 | marker: "
          "median / p95 | examples (moves that changed them): median / p95 |")
    print("|---|---|---|---|---|")
    for size in [int(v) for v in args.curves.split(",")]:
        curve_id = synthetic_curve(store, run_id, size)
        for label, root in roots:
            server = serve(8651, root)
            try:
                with sync_playwright() as p:
                    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                args=["--headless", "--no-sandbox"])
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto(f"http://127.0.0.1:8651")
                    wait_for_text(page, FIRST_CONTENT["train"])
                    wait_until_idle(server.pid)
                    t = curve_moves(page, "http://127.0.0.1:8651", run_id, args.moves)
                    browser.close()
            finally:
                server.terminate()
                server.wait()
            cells = [f"{statistics.median(v) * 1000:.0f} / {percentile(v, 95) * 1000:.0f} ms"
                     + (f" ({len(v)})" if key != "marker" else "") if v else "—"
                     for key, v in t.items()]
            print(f"| {label} | {size:,} images ({curve_id[-6:]}) | " + " | ".join(cells) + " |",
                  flush=True)


def main() -> None:
    """Print page-load and slider figures, idle and with a sweep running."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--curves", help="curve sizes, e.g. 1000,10000: measure the curve "
                        "mode's slider instead")
    parser.add_argument("--root", help="also serve this checkout (before-and-after)")
    args = parser.parse_args()
    if args.curves:
        curve_main(args)
        return
    store, run_id, _ = small_mnist_model("robustlab-dash-")
    from playwright.sync_api import sync_playwright

    from core.app.attack import grid_spec, launch_grid
    from core.app.evaluate import cached_evaluation
    from core.app.robustness import launch_sweep

    jobs = [cached_evaluation(store, run_id).id,
            launch_grid(store, grid_spec(run_id, "pgd", {"steps": 40, "norm": "linf",
                                                           "restarts": 1}, 200)).id]
    while any(store.get(j).status in ("queued", "running") for j in jobs):
        time.sleep(1)
    port = 8650
    server = serve(port)
    url = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--headless", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # the server's first visit loads torch and the pages' libraries (in the background
            # after the first page is drawn); measured once, then the rest waits for it to end
            began = time.perf_counter()
            page.goto(url)
            wait_for_text(page, FIRST_CONTENT["train"])
            cold = time.perf_counter() - began
            settled = wait_until_idle(server.pid)
            loads = page_loads(page, url, run_id, args.repeats)
            clicks = sidebar_loads(page, url, args.repeats)
            idle, idle_polled = slider_moves(page, url, run_id, args.moves)
            sweep = launch_sweep(store, run_id, ["fgsm", "pgd"], [0.05, 0.1, 0.2, 0.3], 1000)
            while store.get(sweep).status == "queued":
                time.sleep(0.5)
            busy, busy_polled = slider_moves(page, url, run_id, args.moves)
            sweep_state = store.get(sweep).status
            store.request_cancel(sweep)
            browser.close()
    finally:
        server.terminate()
    print(f"the server's first visit (cold: Train page, libraries still loading): {cold:.2f} s "
          f"to first content; the server was idle {settled:.1f} s after it")
    print(f"seconds to first content ({args.repeats} visits each), opening the page's address "
          "(full load) and clicking its sidebar link:")
    print("| page | address: median | address: max | address: each visit, in order | "
          "sidebar: median | sidebar: max |")
    print("|---|---|---|---|---|---|")
    for name, values in loads.items():
        each = " ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {statistics.median(values):.2f} | {max(values):.2f} | {each} | "
              f"{statistics.median(clicks[name]):.2f} | {max(clicks[name]):.2f} |")
    busy_label = f"a sweep running ({sweep_state} at the end)"
    for label, values in (("idle, key to paint in the page", idle),
                          ("idle, as Playwright's polling expect sees it", idle_polled),
                          (f"{busy_label}, key to paint in the page", busy),
                          (f"{busy_label}, as Playwright's polling expect sees it", busy_polled)):
        print(f"slider, {label}: {len(values)} moves; median {statistics.median(values) * 1000:.0f}"
              f" ms, p95 {percentile(values, 95) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
