"""How fast the dashboard answers, in a real browser (Debian's chromium driven by Playwright):
the time from navigation to each page's first content (opening its address, and clicking its
sidebar link), and from an epsilon-slider key press to the updated accuracy painted on the
Attack page once its grid is computed (measured in the page), on an idle machine and
again while a sweep runs in the background (its worker at lower priority). The server's very
first visit, while it still loads torch and the pages' libraries, is reported on its own; the
rest begins once the server is idle.

    python benchmarks/dashboard_speed.py [--repeats 5] [--moves 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request

from small_model import ROOT, small_mnist_model

CHROMIUM = "/usr/bin/chromium"


def serve(port: int) -> subprocess.Popen:
    """The dashboard as a user starts it, on ``port``; returns once it answers."""
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard.py",
                             "--server.port", str(port), "--server.headless", "true"],
                            cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL,
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


def main() -> None:
    """Print page-load and slider figures, idle and with a sweep running."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--moves", type=int, default=20)
    args = parser.parse_args()
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
