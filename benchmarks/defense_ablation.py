"""Why does adversarial training collapse? Ablations of IAT and FGSM-AT on real MNIST, every
choice judged on held-out *training* images (never on test images).

Each variant trains seed-resnet through the same runner as the CLI; after every epoch the
overfitting guard measures APGD-CE accuracy on ``--held-out`` training images held out of
training (``--guard-steps`` steps at the training epsilon). A variant *collapses* when, from
the epoch its held-out robust accuracy first peaks to the end, it falls more than
``--tolerance`` below that peak (issue 14's target: 5 pp). ``--audit N`` then audits each
variant's final model on N test images (``--audit-version``, fast by default), so that every
choice is also judged by the attack the field reports, with its 95% interval.

    python benchmarks/defense_ablation.py [--eps 0.3] [--images 2000] [--epochs 6]
        [--only iat:base,iat:train,...] [--audit 500] [--out table.md]

Runs go to a temporary artifacts folder (``--artifacts`` to keep them).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402  (sets ROBUSTLAB_DATA to the shared datasets)

# one change at a time from each defense's base; the last rows combine the changes that help
VARIANTS: dict[str, tuple[str, dict]] = {
    "iat:base": ("iat", {}),
    "iat:craft-train": ("iat", {"craft_mode": "train"}),
    "iat:steps-10": ("iat", {"steps": 10}),
    "iat:ramp-2": ("iat", {"eps_ramp_epochs": 2}),
    "iat:alpha-0.2": ("iat", {"alpha": 0.2}),
    "iat:alpha-1": ("iat", {"alpha": 1.0}),  # the seed's mixup
    "iat:loss-sum": ("iat", {"loss_factor": 1.0}),
    "iat:train+ramp": ("iat", {"craft_mode": "train", "eps_ramp_epochs": 2}),
    "iat:shared-bn": ("iat", {"batchnorm": "shared"}),
    "iat:recalibrate": ("iat", {"recalibrate": True}),
    "iat:train+shared": ("iat", {"craft_mode": "train", "batchnorm": "shared"}),
    # the reference at IAT's training cost (the same PGD steps), for issue 23's adoption rule
    "pgd-at:steps-5": ("pgd-at", {"steps": 5}),
    "fgsm-at:base": ("fgsm-at", {}),
    "fgsm-at:separate-bn": ("fgsm-at", {"batchnorm": "separate"}),
    "fgsm-at:ramp-2": ("fgsm-at", {"eps_ramp_epochs": 2}),
    "fgsm-at:separate+ramp": ("fgsm-at", {"batchnorm": "separate", "eps_ramp_epochs": 2}),
    "fgsm-at:random-start": ("fgsm-at", {"random_start": True, "alpha_ratio": 1.25}),
    "fgsm-at:random+separate": ("fgsm-at", {"random_start": True, "alpha_ratio": 1.25,
                                            "batchnorm": "separate"}),
    "fgsm-at:random-alpha-1": ("fgsm-at", {"random_start": True}),
    "fgsm-at:random+ramp-3": ("fgsm-at", {"random_start": True, "alpha_ratio": 1.25,
                                          "eps_ramp_epochs": 3}),
    "fgsm-at:n-fgsm": ("fgsm-at", {"random_start": True, "noise_ratio": 2.0,
                                   "project": False}),
    "fgsm-at:n-fgsm+ramp-3": ("fgsm-at", {"random_start": True, "noise_ratio": 2.0,
                                          "project": False, "eps_ramp_epochs": 3}),
    "fgsm-at:weight-1+n-fgsm": ("fgsm-at", {"random_start": True, "noise_ratio": 2.0,
                                            "project": False, "weight": 1.0}),
}


def run_variant(name: str, defense: str, extra: dict, args) -> dict:
    """Train one variant; return its held-out curve, clean test accuracy and wall time."""
    from core.jobs.runner import create, execute
    from core.jobs.specs import TrainSpec
    from core.jobs.store import RunStore

    store = RunStore()
    defense_args = {"eps": args.eps, **({"steps": args.steps} if defense == "iat" else {}),
                    **extra}
    spec = TrainSpec(dataset="mnist", epochs=args.epochs, batch_size=args.batch_size,
                     optimizer="nesterov", lr=args.lr, train_subset=args.images,
                     test_subset=args.test, defense=defense, defense_args=defense_args,
                     robust_eval={"eps": args.eps, "steps": args.guard_steps,
                                  "n": args.held_out}, seed=args.seed)
    run_id = create(store, spec, name=f"ablation {name}")
    start = time.perf_counter()
    execute(store, run_id, echo=False)
    wall = time.perf_counter() - start
    curve = [m["value"] for m in store.metrics(run_id, ["robust_acc"])]
    clean = [m["value"] for m in store.metrics(run_id, ["test_acc"])]
    audited = audit_final(store, run_id, args) if args.audit else None
    return {"variant": name, "run": run_id, "curve": curve, "clean": clean[-1], "wall": wall,
            "audited": audited, **collapse(curve, args.tolerance)}


def audit_final(store, run_id: str, args) -> dict:
    """The final model's audit at the training epsilon on ``args.audit`` test images."""
    from core.jobs.runner import create, execute
    from core.jobs.specs import AuditSpec

    spec = AuditSpec(model_run=run_id, eps=args.eps, version=args.audit_version, n=args.audit)
    audit_id = create(store, spec)
    execute(store, audit_id, echo=False)
    summary = store.get(audit_id).summary
    import json

    from core.paths import run_dir

    examples = json.loads((run_dir(audit_id) / "audit.json").read_text())["examples"]
    return {"robust_acc": summary["robust_acc"], "n": summary["n"],
            "verdict": summary["verdict"], "positions": [e["index"] for e in examples],
            "robust": [bool(e["robust"]) for e in examples]}


def paired_lines(rows: list[dict], reference: str = "pgd-at:steps-5") -> list[str]:
    """Each audited variant against the reference, paired on the same test images (McNemar,
    the lab's one rule for "as robust as"), with the clean accuracies beside."""
    from core.comparison import paired_models

    ref = next((r for r in rows if r["variant"] == reference and r.get("audited")), None)
    if ref is None:
        return []
    lines = []
    for r in rows:
        if r is ref or not r.get("audited") or \
                r["audited"]["positions"] != ref["audited"]["positions"]:
            continue
        verdict = paired_models(r["audited"]["robust"], ref["audited"]["robust"])
        lines.append(f"- {r['variant']} against {reference}: {verdict['status']} — "
                     f"{verdict['sentence']}; clean {r['clean']:.2%} vs {ref['clean']:.2%}")
    return lines


def collapse(curve: list[float], tolerance: float) -> dict:
    """Peak, the epoch it is first reached, the largest fall below it afterwards, the end."""
    from core.jobs.study import held_out_fall

    fall = held_out_fall(curve)
    return dict(fall, collapsed=fall["fall"] > tolerance)


def table(rows: list[dict]) -> str:
    """The ablation table as Markdown."""
    from core.confidence import text

    lines = ["| variant | held-out APGD-CE accuracy per epoch | peak (epoch) | largest fall "
             "after the peak | final | clean test | collapsed | audited (final model) | wall |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        curve = " ".join(f"{v:.1%}" for v in r["curve"])
        audited = (f"{text(r['audited']['robust_acc'], r['audited']['n'])} on "
                   f"{r['audited']['n']}: {r['audited']['verdict']}" if r.get("audited")
                   else "—")
        lines.append(f"| {r['variant']} | {curve} | {r['peak']:.1%} ({r['peak_epoch']}) | "
                     f"{r['fall'] * 100:.1f} pp | {r['final']:.1%} | {r['clean']:.2%} | "
                     f"{'**yes**' if r['collapsed'] else 'no'} | {audited} | "
                     f"{r['wall']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=5, help="IAT's PGD steps (base)")
    parser.add_argument("--images", type=int, default=2000, help="training images")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--held-out", type=int, default=500)
    parser.add_argument("--guard-steps", type=int, default=10)
    parser.add_argument("--test", type=int, default=1000, help="test images (clean only)")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=",".join(VARIANTS),
                        help=f"comma-separated variants of: {', '.join(VARIANTS)}")
    parser.add_argument("--audit", type=int, default=0, metavar="N",
                        help="audit each final model on N test images (default: no audit)")
    parser.add_argument("--audit-version", default="fast", choices=["fast", "standard"])
    parser.add_argument("--artifacts", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args()
    chosen = [v.strip() for v in args.only.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    folder = args.artifacts or tempfile.mkdtemp(prefix="ablation-")
    os.environ["ROBUSTLAB_ARTIFACTS"] = folder
    print(f"# {machine()}\n# MNIST, eps {args.eps}, {args.images} training images, "
          f"{args.epochs} epochs, batch {args.batch_size}, nesterov lr {args.lr} one-cycle; "
          f"guard: APGD-CE-{args.guard_steps} on {args.held_out} held-out training images; "
          f"runs in {folder}", flush=True)
    rows = []
    for name in chosen:
        defense, extra = VARIANTS[name]
        rows.append(run_variant(name, defense, extra, args))
        r = rows[-1]
        print(f"{name}: " + " ".join(f"{v:.3f}" for v in r["curve"])
              + f" | clean {r['clean']:.4f} | fall {r['fall']:.3f} | {r['wall']:.0f} s"
              + (f" | audited {r['audited']['robust_acc']:.4f} on {r['audited']['n']} "
                 f"({r['audited']['verdict']})" if r["audited"] else ""), flush=True)
    print(table(rows))
    for line in paired_lines(rows):
        print(line)
    if args.out:
        Path(args.out).write_text(table(rows) + "\n" + "\n".join(paired_lines(rows)) + "\n")


if __name__ == "__main__":
    main()
