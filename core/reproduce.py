"""``python -m core reproduce``: the whole seed study, regenerated into one report folder.

Part (a): seed-resnet on CIFAR-10. Part (b): seed-resnet on MNIST and its attack table.
Part (c): adversarial training (FGSM-AT at eps 0.2, as the seed did) beside fast-AT, PGD-AT,
TRADES and IAT, each evaluated with PGD at 0.01/0.1/0.2 and Carlini-Wagner.
Every model is a training run of its own (parent: the reproduce run), so the dashboard shows
them all.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from . import checkpoint, figures
from .attacks import build_attack
from .evaluation import clean_report, misclassified, run_attack, sweep
from .paths import reports_dir, run_dir
from .store import RunStore
from .tasks import save_grid, table_frame, test_split, write_table
from .training import TrainConfig, fit, load_model, run_model_path

SEED = {"cifar_acc": 0.6518, "cifar_micro_f1": 0.680, "mnist_acc": 0.9828,
        "fgsm_at": {"clean": 0.9859, 0.01: 0.9393, 0.1: 0.4697, 0.2: 0.3131}}


@dataclass
class Plan:
    """Sizes and settings of one reproduction (full or quick)."""

    cifar: dict
    mnist: dict
    attack_n: int
    budgets: list
    pgd_steps: int
    cw: dict
    defense_common: dict
    defenses: dict
    defense_eval_n: int
    defense_budgets: list = field(default_factory=lambda: [0.01, 0.1, 0.2])
    cw_n: int = 200


FULL = Plan(
    cifar=dict(dataset="cifar10", epochs=10, batch_size=128, optimizer="nesterov", lr=0.05),
    mnist=dict(dataset="mnist", epochs=5, batch_size=128, optimizer="nesterov", lr=0.1),
    attack_n=1000, budgets=[0.01, 0.05, 0.1, 0.2, 0.3], pgd_steps=40,
    cw=dict(steps=100, lr=0.05, search_steps=9),
    defense_common=dict(dataset="mnist", epochs=5, batch_size=128, optimizer="nesterov", lr=0.1),
    defenses={"fgsm-at": {"eps": 0.2, "weight": 0.5}, "fast-at": {"eps": 0.2},
              "pgd-at": {"eps": 0.2, "steps": 5}, "trades": {"eps": 0.2, "steps": 5, "beta": 6.0},
              "iat": {"eps": 0.2, "steps": 5, "alpha": 1.0}},
    defense_eval_n=1000,
)
QUICK = Plan(
    cifar=dict(dataset="cifar10", epochs=1, batch_size=64, lr=0.05, train_subset=1000,
               test_subset=200),
    mnist=dict(dataset="mnist", epochs=1, batch_size=64, lr=0.05, train_subset=2000,
               test_subset=500),
    attack_n=100, budgets=[0.05, 0.1, 0.3], pgd_steps=5, cw=dict(steps=10, lr=0.1, search_steps=3),
    defense_common=dict(dataset="mnist", epochs=1, batch_size=64, lr=0.05, train_subset=1000,
                        test_subset=200),
    defenses={"fgsm-at": {"eps": 0.2}, "iat": {"eps": 0.2, "steps": 2}},
    defense_eval_n=100, defense_budgets=[0.1, 0.2], cw_n=30,
)


def reproduce(store: RunStore, run_id: str, quick: bool = False, data_dir: str | None = None,
              progress: bool = False) -> dict:
    """Run the study and write ``artifacts/reports/<run_id>/report.md`` with its figures."""
    plan = QUICK if quick else FULL
    folder = reports_dir() / run_id
    folder.mkdir(parents=True, exist_ok=True)
    ctx = _Context(store, run_id, data_dir, progress, folder)
    results = {"quick": quick, "plan": asdict(plan)}
    results["cifar"] = _part_a(ctx, plan)
    results["mnist"] = _part_b(ctx, plan)
    results["defenses"] = _part_c(ctx, plan)
    checkpoint.atomic_write_text(folder / "results.json", json.dumps(results, indent=2,
                                                                     default=str))
    checkpoint.atomic_write_text(folder / "report.md", render(results))
    summary = {"report": str(folder / "report.md"), "cifar_acc": results["cifar"]["accuracy"],
               "mnist_acc": results["mnist"]["accuracy"]}
    store.set_summary(run_id, summary)
    return summary


@dataclass
class _Context:
    store: RunStore
    run_id: str
    data_dir: str | None
    progress: bool
    folder: Path

    def train(self, name: str, **cfg) -> tuple[str, float]:
        """Train a child run; return its id and wall time."""
        config = TrainConfig(**dict(cfg, data_dir=self.data_dir))
        child = self.store.create_run("train", config.to_dict(), parent=self.run_id, name=name)
        self.store.set_status(child, "running")
        start = time.perf_counter()
        fit(config, self.store, child, progress=self.progress)
        self.store.set_status(child, "completed")
        self.store.log_metrics(self.run_id, [(None, None, f"done:{name}", 1.0)])
        return child, time.perf_counter() - start


def _part_a(ctx: _Context, plan: Plan) -> dict:
    child, wall = ctx.train("seed study (a): cifar10", **plan.cifar)
    model, meta = load_model(run_model_path(child))
    split = test_split(meta, data_dir=ctx.data_dir)
    report = clean_report(model, split)
    title = f"CIFAR-10 seed-resnet ({len(split)} test images)"
    figures.confusion_png(report["confusion"], report["classes"], ctx.folder / "cifar_confusion.png",
                          title)
    figures.save_html(figures.confusion_figure(report["confusion"], report["classes"], title),
                      ctx.folder / "cifar_confusion.html")
    wrong = misclassified(report)
    save_grid(split, wrong[:64], ctx.folder / "cifar_misclassified.png")
    per_epoch = [m["value"] for m in ctx.store.metrics(child, ["test_acc"])]
    return {"run": child, "wall_s": wall, "n_test": len(split), "source": split.source,
            "accuracy": report["accuracy"], "micro_f1": report["micro_f1"],
            "macro_f1": report["macro_f1"], "per_class": report["per_class"],
            "per_epoch_acc": per_epoch, "n_misclassified": len(wrong),
            "misclassified_sample": [
                {"index": r["index"], "true": report["classes"][r["true"]],
                 "pred": report["classes"][r["pred"]], "confidence": r["confidence"]}
                for r in wrong[:64]]}


def _attack_specs(plan: Plan) -> list:
    return [build_attack("noise", sigma=0.1), build_attack("fgsm"),
            build_attack("pgd", steps=plan.pgd_steps), build_attack("semantic", mode="negative"),
            build_attack("cw", **plan.cw)]


def _part_b(ctx: _Context, plan: Plan) -> dict:
    child, wall = ctx.train("seed study (b): mnist", **plan.mnist)
    model, meta = load_model(run_model_path(child))
    full = test_split(meta, data_dir=ctx.data_dir)
    clean = clean_report(model, full)
    sample = full.subset(plan.attack_n, seed=0)
    result = sweep(model, sample, _attack_specs(plan), plan.budgets)
    sweep_run = ctx.store.create_run("sweep", {"model_run": child, "budgets": plan.budgets,
                                               "n": plan.attack_n, "attacks": [
        {"name": a.name, "params": a.params()} for a in _attack_specs(plan)]},
        parent=child, name="seed attack table")
    ctx.store.set_summary(sweep_run, dict(result, n=len(sample), source=sample.source,
                                          model_run=child))
    ctx.store.set_status(sweep_run, "completed")
    write_table(result, ctx.folder / "mnist_attack_table")
    curves = _curves(result["rows"])
    figures.curves_png(curves, ctx.folder / "mnist_attacks.png",
                       f"seed-resnet on MNIST ({len(sample)} test images)")
    figures.save_html(figures.robustness_figure(curves), ctx.folder / "mnist_attacks.html")
    return {"run": child, "sweep_run": sweep_run, "wall_s": wall, "accuracy": clean["accuracy"],
            "n_test": len(full), "n_attack": len(sample), "rows": result["rows"],
            "worst_case": result["worst_case"], "warnings": result["warnings"]}


def _curves(rows: list[dict]) -> dict:
    curves: dict = {}
    for r in rows:
        if r["budget"] is not None:
            curves.setdefault(r["attack"], []).append((r["budget"], r["adv_acc"]))
    return curves


def _part_c(ctx: _Context, plan: Plan) -> list[dict]:
    rows = []
    for name, args in plan.defenses.items():
        cfg = dict(plan.defense_common, defense=name, defense_args=args,
                   robust_eval={"eps": args["eps"], "steps": 10})
        child, wall = ctx.train(f"seed study (c): {name}", **cfg)
        rows += [_defense_row(ctx, plan, name, args, child, wall, which)
                 for which in _weights_to_report(ctx, child)]
    curves = {_label(r): [(b, r[f"pgd@{b}"]) for b in plan.defense_budgets] for r in rows}
    figures.curves_png(curves, ctx.folder / "defenses.png", "PGD accuracy of defended MNIST models")
    figures.save_html(figures.robustness_figure(curves, "PGD accuracy of defended MNIST models"),
                      ctx.folder / "defenses.html")
    return rows


def _weights_to_report(ctx: _Context, child: str) -> list[str]:
    """The final weights, and beside them the guard's best epoch when it saw a collapse and
    kept an earlier epoch: the table shows what the guard's choice costs and gains."""
    run = ctx.store.get(child)
    best = (run.summary or {}).get("best") or {}
    kept_earlier = best.get("epoch", run.config["epochs"]) < run.config["epochs"]
    has_file = (run_dir(child) / "best.safetensors").exists()
    return ["final", "best"] if run.warnings and kept_earlier and has_file else ["final"]


def _label(row: dict) -> str:
    return row["defense"] + (f" (best epoch, {row['epoch']})" if row["weights"] == "best" else "")


def _defense_row(ctx: _Context, plan: Plan, name: str, args: dict, child: str,
                 wall: float, which: str = "final") -> dict:
    warnings = ctx.store.get(child).warnings
    model, meta = load_model(run_model_path(child, which))
    full = test_split(meta, data_dir=ctx.data_dir)
    row = {"defense": name, "run": child, "settings": args, "train_s": wall, "weights": which,
           "epoch": meta.get("epoch"),
           "clean": clean_report(model, full)["accuracy"], "n_clean": len(full)}
    sample = full.subset(plan.defense_eval_n, seed=0)
    for b in plan.defense_budgets:
        out = run_attack(model, sample, build_attack("pgd", eps=b, steps=plan.pgd_steps))
        row[f"pgd@{b}"] = out.summary()["adv_acc"]
    cw = run_attack(model, full.subset(plan.cw_n, seed=0), build_attack("cw", **plan.cw))
    s = cw.summary()
    row.update(cw_success=s["success_rate"], cw_median_l2=s["l2_median"], n_pgd=len(sample),
               n_cw=plan.cw_n, warnings=warnings)
    return row


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.2%}"


def render(results: dict) -> str:
    """The Markdown report."""
    a, b, plan = results["cifar"], results["mnist"], results["plan"]
    lines = [f"# RobustLab: the seed study, reproduced{' (quick mode)' if results['quick'] else ''}",
             "", "## (a) seed-resnet on CIFAR-10", "",
             f"Test set: {a['n_test']} images ({a['source']}). Training: "
             f"{plan['cifar']}. Wall time {a['wall_s']:.0f} s.", "",
             "| metric | RobustLab | seed |", "|---|---|---|",
             f"| accuracy | {_pct(a['accuracy'])} | 65.18% |",
             f"| micro-F1 | {_pct(a['micro_f1'])} | 68.0% (reported; cannot differ from accuracy) |",
             f"| macro-F1 | {_pct(a['macro_f1'])} | — |", "",
             "Micro-F1 equals accuracy for single-label classification, so the seed's 65.18% "
             "accuracy beside 68.0% micro-F1 cannot both hold; both are computed here.", "",
             "Accuracy after each epoch: " + ", ".join(_pct(v) for v in a["per_epoch_acc"]), "",
             pd.DataFrame(a["per_class"]).to_markdown(index=False, floatfmt=".3f"), "",
             "![confusion](cifar_confusion.png) ([interactive](cifar_confusion.html))", "",
             f"{a['n_misclassified']} misclassified; the first 64:", "",
             "![misclassified](cifar_misclassified.png)", "",
             "## (b) seed-resnet on MNIST and its attack table", "",
             f"Clean accuracy {_pct(b['accuracy'])} on {b['n_test']} test images (seed 98.28%). "
             f"Attacks on {b['n_attack']} test images; PGD: {plan['pgd_steps']} steps, step "
             f"2.5·eps/steps, random start; CW: {plan['cw']}; noise: Gaussian, sigma = budget; "
             "semantic: negative images. Norms are of the successful perturbations.", "",
             table_frame(b["rows"]).to_markdown(index=False, floatfmt=".4f"), "",
             "Worst case over noise, FGSM and PGD per budget (per example):", "",
             pd.DataFrame(b["worst_case"]).to_markdown(index=False, floatfmt=".4f"), "",
             "![attacks](mnist_attacks.png) ([interactive](mnist_attacks.html))", ""]
    for w in b["warnings"]:
        lines.append(f"- warning: {w}")
    budgets = plan["defense_budgets"]
    lines += ["## (c) adversarial training on MNIST", "",
              f"PGD evaluation: {plan['pgd_steps']} steps, random start, step 2.5·eps/steps, on "
              f"{plan['defense_eval_n']} test images; clean accuracy on the full test split; CW "
              f"on {plan['cw_n']} images. Training: {plan['defense_common']}.", "",
              "| defense | settings | clean | " + " | ".join(f"PGD {x}" for x in budgets)
              + " | CW success | CW median L2 | train time |",
              "|---|---|---|" + "---|" * len(budgets) + "---|---|---|"]
    seed = SEED["fgsm_at"]
    lines.append("| seed FGSM-AT | eps 0.2 | 98.59% | " + " | ".join(
        _pct(seed.get(x)) for x in budgets) + " | — | — | — |")
    for r in results["defenses"]:
        lines.append(f"| {_label(r)} | "
                     f"{r['settings']} | {_pct(r['clean'])} | " + " | ".join(
            _pct(r[f'pgd@{x}']) for x in budgets) + f" | {_pct(r['cw_success'])} | "
            f"{r['cw_median_l2']:.3f} | {r['train_s']:.0f} s |")
    lines += ["", "![defenses](defenses.png) ([interactive](defenses.html))", ""]
    for r in results["defenses"]:
        if r["weights"] == "best":
            continue  # its run's warnings are listed with the final row
        for w in r["warnings"]:
            lines.append(f"- {r['defense']}: {w}")
    return "\n".join(lines) + "\n"
