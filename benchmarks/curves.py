"""Robustness curves checked and timed (issue 25): correctness against a PGD-40 grid and
Foolbox's FMN, speed against the grid and Foolbox, side by side in one run.

For each model (MNIST and CIFAR-10, undefended, and one defended MNIST model) it trains the
model through the runner, then on the same ``-n`` test images:

- the curve job (``python -m core curve``: FMN + FAB, L-inf), timed;
- for the undefended two: the default 6-point PGD-40 sweep (``python -m core sweep --attack
  pgd``), timed; at each of its epsilons the curve's robust accuracy beside PGD-40's (the
  curve may be lower, it must not be higher by more than 1 pp); and FMN alone (ours, float32)
  against Foolbox's ``LInfFMNAttack`` and ``L2FMNAttack`` with the same steps on the first
  ``--reference`` images: median smallest norms and seconds.

- against the fast audit (issue 37): at each model's audited budgets (MNIST 0.1, CIFAR-10
  8/255 and 2/255), the curve without its check (FMN + FAB only, on a model with no other
  runs), the curve with its check (``--at EPS``: the fast audit's APGD-CE and APGD-T on the
  images the search left unbroken there), then the fast audit itself, all on the same images:
  robust accuracy, the gap, and the seconds of each;
- the L2 search against a correct L2 minimum-norm reference: Foolbox's DDN (Rony et al.
  2019), with the success counts beside the medians (Foolbox's own L2 FMN is shown too: it
  never projects, so it misses most points and validates nothing).

    python benchmarks/curves.py [-n 1000] [--reference 500] [--only mnist,cifar10,mnist-pgd-at]
        [--no-grid]

Foolbox is a dev-only reference (``pip install foolbox``), never imported by the library.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import machine  # noqa: E402  (sets ROBUSTLAB_DATA like the others)

MODELS = {
    "mnist": dict(dataset="mnist", train_subset=10000, epochs=2),
    "cifar10": dict(dataset="cifar10", train_subset=10000, epochs=3),
    "mnist-pgd-at": dict(dataset="mnist", train_subset=10000, epochs=3, defense="pgd-at",
                         defense_args={"eps": 0.3, "steps": 5}),
}
CHECKED = ("mnist", "cifar10")  # the defended model gets its curve only (the README's table)
AUDITED = {"mnist": [0.1], "cifar10": [8 / 255, 2 / 255], "mnist-pgd-at": [0.1]}
GRIDS = {"mnist": [0.0, 0.01, 0.05, 0.1, 0.2, 0.3],  # the sweep's default budgets
         "cifar10": [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255]}


def job(store, spec) -> tuple[str, float]:
    """Run a spec through the runner, as the CLI does; its run id and seconds."""
    from core.jobs.runner import create, execute

    run_id = create(store, spec)
    began = time.perf_counter()
    execute(store, run_id, echo=False)
    return run_id, time.perf_counter() - began


def median(values) -> float:
    import statistics

    return statistics.median(values)


def foolbox_rows(model, x, y, steps: int) -> list[str]:
    """Ours and Foolbox's FMN on the same images and steps: median norms and seconds."""
    import foolbox
    import torch

    from core.attacks import FMN

    lines = []
    fmodel = foolbox.PyTorchModel(model.eval(), bounds=(0, 1))
    with torch.no_grad():
        right = model(x).argmax(1) == y  # medians over these (the others have norm 0)
    for norm, reference in (("linf", foolbox.attacks.LInfFMNAttack),
                            ("l2", foolbox.attacks.DDNAttack),
                            ("l2", foolbox.attacks.L2FMNAttack)):
        began = time.perf_counter()
        _, adv, _ = reference(steps=steps)(fmodel, x, y, epsilons=None)
        theirs_s = time.perf_counter() - began
        with torch.no_grad():
            fooled = model(adv).argmax(1) != y
        d = (adv - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        theirs = torch.where(fooled, size, torch.full_like(size, math.inf))
        ours = {}
        for label, search in (("fp32", model),):
            attack = FMN(norm=norm, steps=steps)
            began = time.perf_counter()
            x_adv = attack(search, x, y)
            seconds = time.perf_counter() - began
            with torch.no_grad():
                ok = model(x_adv).argmax(1) != y
            dd = (x_adv - x).flatten(1)
            sz = dd.abs().amax(1) if norm == "linf" else dd.norm(dim=1)
            ours[label] = (torch.where(ok, sz, torch.full_like(sz, math.inf)), seconds)
        m_theirs = float(theirs[right].median())
        for label, (norms, seconds) in ours.items():
            m_ours = float(norms[right].median())
            lines.append(f"  FMN {norm} {label}: median {m_ours:.4f} vs Foolbox "
                         f"{reference.__name__} {m_theirs:.4f} "
                         f"({(m_ours / m_theirs - 1) * 100:+.1f}%), found {int(norms[right].isfinite().sum())}"
                         f" vs {int(theirs[right].isfinite().sum())} of {int(right.sum())} "
                         f"classified correctly; {seconds:.1f} s vs "
                         f"Foolbox {theirs_s:.1f} s = {theirs_s / seconds:.2f}x")
    return lines


def _checked(store, model_run: str, curve, curve_run: str, curve_s: float, settings: dict,
             opts) -> float:
    """The 6-point PGD-40 sweep on the same images, timed beside the curve; the curve's
    largest excess over PGD-40 at the sweep's epsilons."""
    from core import confidence
    from core.jobs.specs import SweepSpec

    grid = GRIDS[settings["dataset"]]
    sweep_run, sweep_s = job(store, SweepSpec(model_run=model_run, n=opts.n, budgets=grid,
                                              attacks=[{"name": "pgd", "params": {"steps": 40}}]))
    found = store.get(sweep_run).summary["rows"]
    print(f"  curve {curve_s:.0f} s (FMN + FAB, search in "
          f"{store.get(curve_run).summary['search_precision']}) vs 6-point PGD-40 grid "
          f"{sweep_s:.0f} s: the curve costs {curve_s / sweep_s:.2f}x the grid", flush=True)
    worst = -math.inf
    for eps in grid:
        row = next(r for r in found if math.isclose(r["budget"], eps, abs_tol=1e-9))
        mine = curve.accuracy(eps)
        worst = max(worst, mine - row["adv_acc"])
        print(f"  eps {eps:.4f}: curve {confidence.text(mine, curve.n)} vs PGD-40 "
              f"{confidence.text(row['adv_acc'], row['n'])} "
              f"({(mine - row['adv_acc']) * 100:+.1f} pp)")
    return worst


def against_audit(store, model_run: str, budgets: list[float], opts) -> None:
    """The checked curve at ``budgets`` and the fast audit at each, on the curve's images (the
    unchecked curve ran before, on a model with no other runs)."""
    from core import confidence
    from core.app.curves import curve_of
    from core.jobs.specs import AuditSpec, CurveSpec

    checked_run, checked_s = job(store, CurveSpec(model_run=model_run, n=opts.n,
                                                  steps=opts.steps, at=budgets))
    checked = curve_of(store.get(checked_run))
    print(f"  checked curve (--at {','.join(f'{b:.4g}' for b in budgets)}): {checked_s:.0f} s",
          flush=True)
    for eps in budgets:
        audit_run, audit_s = job(store, AuditSpec(model_run=model_run, eps=eps, n=opts.n,
                                                  version="fast"))
        a = store.get(audit_run).summary
        gap = checked.accuracy(eps) - a["robust_acc"]
        print(f"  eps {eps:.4g}: checked curve {confidence.text(checked.accuracy(eps), opts.n)} "
              f"vs fast audit {confidence.text(a['robust_acc'], a['n'])} ({gap * 100:+.1f} pp; "
              f"within 1 pp: {'met' if gap <= 0.01 + 1e-9 else 'NOT met'}); audit {audit_s:.0f} s",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="test images (default 1000)")
    parser.add_argument("--reference", type=int, default=500,
                        help="images for the Foolbox comparison (default 500)")
    parser.add_argument("--steps", type=int, default=100, help="FMN's steps (default 100)")
    parser.add_argument("--only", default=",".join(MODELS))
    parser.add_argument("--train-subset", type=int, help="training images (default: each "
                        "model's own; small values for a quick check of the script)")
    parser.add_argument("--no-grid", action="store_true", help="skip the PGD-40 grid")
    opts = parser.parse_args()
    os.environ.setdefault("ROBUSTLAB_ARTIFACTS", tempfile.mkdtemp(prefix="robustlab-curves-"))
    from core import confidence, data
    from core.app.curves import curve_of
    from core.jobs.specs import CurveSpec, TrainSpec
    from core.jobs.store import RunStore
    from core.prediction import load_model, run_model_path

    print(f"# robustness curves, n={opts.n}; {machine()}; runs in "
          f"{os.environ['ROBUSTLAB_ARTIFACTS']}", flush=True)
    store = RunStore()
    for name in [m.strip() for m in opts.only.split(",") if m.strip()]:
        settings = dict(MODELS[name], **({"train_subset": opts.train_subset}
                                          if opts.train_subset else {}))
        model_run, trained = job(store, TrainSpec(seed=0, test_subset=1000, **settings))
        print(f"{name}: trained in {trained:.0f} s ({model_run})", flush=True)
        curve_run, curve_s = job(store, CurveSpec(model_run=model_run, n=opts.n,
                                                  steps=opts.steps, check=False))
        curve = curve_of(store.get(curve_run))
        worst = _checked(store, model_run, curve, curve_run, curve_s, settings, opts) \
            if name in CHECKED and not opts.no_grid else None
        m = curve.median()
        print(f"  curve {curve_s:.0f} s; median smallest L-inf norm {m:.4f}; clean "
              f"{curve.clean_accuracy():.1%}; never broken "
              f"{sum(1 for v in curve.norms if math.isinf(v))}; robust accuracy at "
              + ", ".join(f"{e:g}: {confidence.text(curve.accuracy(e), curve.n)}"
                          for e in GRIDS[settings["dataset"]][1:]), flush=True)
        for eps in AUDITED[name]:
            print(f"  unchecked curve at {eps:.4g}: {confidence.text(curve.accuracy(eps), curve.n)}",
                  flush=True)
        against_audit(store, model_run, AUDITED[name], opts)
        if worst is not None:
            print(f"  largest excess over PGD-40 {worst * 100:+.1f} pp (at most +1 pp: "
                  f"{'met' if worst <= 0.01 + 1e-9 else 'NOT met'})", flush=True)
        model, meta = load_model(run_model_path(model_run))
        split = data.load(meta["dataset"], "test").subset(opts.reference, 0)
        for line in foolbox_rows(model, split.floats(), split.labels, opts.steps):
            print(line, flush=True)


if __name__ == "__main__":
    main()
