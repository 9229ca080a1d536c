"""``python -m core reproduce``: the whole seed study, regenerated into one report folder.

Part (a): seed-resnet on CIFAR-10. Part (b): seed-resnet on MNIST and its attack table.
Part (c): adversarial training (FGSM-AT at eps 0.2, as the seed did) beside fast-AT, PGD-AT,
TRADES and IAT, each evaluated with PGD at 0.01/0.1/0.2, Carlini-Wagner, and the audit (the
AutoAttack cascade with its indicators of attack failure) at its training epsilon.
Every part is a child job run through the same runner as the CLI and the dashboard (its own
run, heartbeat, status and files, parent: the reproduce run), so the dashboard shows them all.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field

from core.lazy import pd

from core import checkpoint
from core import figures
from core import reports
from core.paths import reports_dir, run_dir
from core.jobs.specs import AttackSpec, AuditSpec, EvaluateSpec, ReproduceSpec, SweepSpec, TrainSpec

SEED = {"cifar_acc": 0.6518, "cifar_micro_f1": 0.680, "mnist_acc": 0.9828,
        "fgsm_at": {"clean": 0.9859, 0.01: 0.9393, 0.1: 0.4697, 0.2: 0.3131}}


# the seed's own FGSM-AT, not RobustLab's default (random start, separate forwards)
SEED_FGSM_AT = {"eps": 0.2, "weight": 0.5, "random_start": False, "alpha_ratio": 1.0,
                "batchnorm": "shared"}


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
    audit: dict = field(default_factory=lambda: {"version": "standard", "n": 200})
    eval_n: int | None = None  # clean evaluations: the whole test split unless set


FULL = Plan(
    cifar=dict(dataset="cifar10", epochs=10, batch_size=128, optimizer="nesterov", lr=0.05),
    mnist=dict(dataset="mnist", epochs=5, batch_size=128, optimizer="nesterov", lr=0.1),
    attack_n=1000, budgets=[0.01, 0.05, 0.1, 0.2, 0.3], pgd_steps=40,
    cw=dict(steps=100, lr=0.05, search_steps=9),
    defense_common=dict(dataset="mnist", epochs=5, batch_size=128, optimizer="nesterov", lr=0.1),
    defenses={"fgsm-at": SEED_FGSM_AT, "fast-at": {"eps": 0.2},
              "pgd-at": {"eps": 0.2, "steps": 5}, "trades": {"eps": 0.2, "steps": 5, "beta": 6.0},
              "iat": {"eps": 0.2, "steps": 5, "alpha": 1.0}},
    defense_eval_n=1000,
)
QUICK = Plan(
    cifar=dict(dataset="cifar10", epochs=1, batch_size=64, lr=0.05, train_subset=500,
               test_subset=200),
    mnist=dict(dataset="mnist", epochs=1, batch_size=64, lr=0.05, train_subset=1500,
               test_subset=500),
    attack_n=100, budgets=[0.05, 0.1, 0.3], pgd_steps=5, cw=dict(steps=10, lr=0.1, search_steps=3),
    defense_common=dict(dataset="mnist", epochs=1, batch_size=64, lr=0.05, train_subset=1000,
                        test_subset=200),
    defenses={"fgsm-at": dict(SEED_FGSM_AT), "iat": {"eps": 0.2, "steps": 2, "alpha": 1.0}},
    defense_eval_n=100, defense_budgets=[0.1, 0.2], cw_n=30,
    audit={"version": "fast", "n": 30, "steps": 10}, eval_n=300,
)


def reproduce(ctx) -> dict:
    """Run the study and write ``artifacts/reports/<run_id>/report.md`` with its figures."""
    spec: ReproduceSpec = ctx.spec
    plan = QUICK if spec.quick else FULL
    folder = reports_dir() / ctx.run_id
    folder.mkdir(parents=True, exist_ok=True)
    parts = _Parts(ctx, spec, plan, folder)
    results = {"quick": spec.quick, "plan": asdict(plan)}
    steps = [("a", "cifar", parts.part_a), ("b", "mnist", parts.part_b),
             ("c", "defenses", parts.part_c)]
    chosen = [(key, run) for letter, key, run in steps if letter in spec.parts]
    outcomes = ctx.in_turn(chosen, "parts", lambda piece: piece[1]())
    results.update({key: outcome for (key, _), outcome in zip(chosen, outcomes)})
    reports.write_json(folder / "results.json", results)
    checkpoint.atomic_write_text(folder / "report.md", render(results))
    summary = {"report": str(folder / "report.md"), "parts": spec.parts}
    summary.update({f"{key}_acc": results[key]["accuracy"] for key in ("cifar", "mnist")
                    if key in results})
    ctx.store.set_summary(ctx.run_id, summary)
    return summary


class _Parts:
    """The three parts, each made of child jobs."""

    def __init__(self, ctx, spec: ReproduceSpec, plan: Plan, folder) -> None:
        self.ctx, self.spec, self.plan, self.folder = ctx, spec, plan, folder

    def _where(self) -> dict:
        return {"data_dir": self.spec.data_dir, "device": self.spec.device}

    def train(self, name: str, **cfg) -> tuple[str, float]:
        """Train a child run; return its id and wall time."""
        child, _ = self.ctx.child(TrainSpec(**cfg, **self._where()), name)
        return child, self.ctx.store.get(child).duration or 0.0

    def evaluate(self, model_run: str, name: str, which: str = "final") -> tuple[str, dict]:
        """Clean evaluation of a model on its test split (the whole split in the full plan), as
        a child run."""
        return self.ctx.child(EvaluateSpec(model_run=model_run, which=which, n=self.plan.eval_n,
                                           **self._where()), name)

    def part_a(self) -> dict:
        child, wall = self.train("seed study (a): cifar10", **self.plan.cifar)
        eval_id, report = self.evaluate(child, "seed study (a): evaluation")
        for name in ("confusion.png", "mistakes.png"):
            shutil.copyfile(run_dir(eval_id) / name, self.folder / f"cifar_{name}")
        title = f"CIFAR-10 seed-resnet ({report['n']} test images)"
        figures.save_html(figures.confusion_figure(report["confusion"], report["classes"],
                                                   title), self.folder / "cifar_confusion.html")
        per_epoch = [m["value"] for m in self.ctx.store.metrics(child, ["test_acc"])]
        return {"run": child, "evaluation": eval_id, "wall_s": wall, "n_test": report["n"],
                "source": report["source"], "accuracy": report["accuracy"],
                "micro_f1": report["micro_f1"], "macro_f1": report["macro_f1"],
                "per_class": report["per_class"], "per_epoch_acc": per_epoch,
                "n_misclassified": report["n_misclassified"]}

    def part_b(self) -> dict:
        child, wall = self.train("seed study (b): mnist", **self.plan.mnist)
        _, clean = self.evaluate(child, "seed study (b): evaluation")
        attacks = [{"name": "noise", "params": {}}, {"name": "fgsm", "params": {}},
                   {"name": "pgd", "params": {"steps": self.plan.pgd_steps}},
                   {"name": "semantic", "params": {"mode": "negative"}},
                   {"name": "cw", "params": self.plan.cw}]
        sweep_run, result = self.ctx.child(SweepSpec(
            model_run=child, attacks=attacks, budgets=self.plan.budgets, n=self.plan.attack_n,
            **self._where()), "seed attack table")
        reports.write_table(result, self.folder / "mnist_attack_table")
        curves = _curves(result["rows"])
        figures.curves_png(curves, self.folder / "mnist_attacks.png",
                           f"seed-resnet on MNIST ({result['n']} test images)")
        figures.save_html(figures.robustness_figure(curves), self.folder / "mnist_attacks.html")
        return {"run": child, "sweep_run": sweep_run, "wall_s": wall,
                "accuracy": clean["accuracy"], "n_test": clean["n"], "n_attack": result["n"],
                "rows": result["rows"], "worst_case": result["worst_case"],
                "warnings": result["warnings"]}

    def part_c(self) -> list[dict]:
        rows = []
        for name, args in self.plan.defenses.items():
            cfg = dict(self.plan.defense_common, defense=name, defense_args=args,
                       robust_eval={"eps": args["eps"], "steps": 10})
            child, wall = self.train(f"seed study (c): {name}", **cfg)
            rows += [self._defense_row(name, args, child, wall, which)
                     for which in _weights_to_report(self.ctx.store, child)]
        curves = {_label(r): [(b, r[f"pgd@{b}"]) for b in self.plan.defense_budgets]
                  for r in rows}
        title = "PGD accuracy of defended MNIST models"
        figures.curves_png(curves, self.folder / "defenses.png", title)
        figures.save_html(figures.robustness_figure(curves, title),
                          self.folder / "defenses.html")
        return rows

    def _defense_row(self, name: str, args: dict, child: str, wall: float,
                     which: str = "final") -> dict:
        plan, store = self.plan, self.ctx.store
        meta = json.loads((run_dir(child) / ("best.safetensors.json" if which == "best"
                                             else "model.safetensors.json")).read_text())
        _, clean = self.evaluate(child, f"{name}: evaluation ({which})", which)
        _, pgd = self.ctx.child(SweepSpec(
            model_run=child, which=which, attacks=[{"name": "pgd", "params": {
                "steps": plan.pgd_steps}}], budgets=plan.defense_budgets,
            n=plan.defense_eval_n, **self._where()), f"{name}: PGD ({which})")
        _, cw = self.ctx.child(AttackSpec(model_run=child, which=which, attack="cw",
                                          params=plan.cw, n=plan.cw_n, keep=0, **self._where()),
                               f"{name}: CW ({which})")
        _, audited = self.ctx.child(AuditSpec(model_run=child, which=which, norm="linf",
                                              eps=args["eps"], **plan.audit, **self._where()),
                                    f"{name}: audit ({which})")
        row = {"defense": name, "run": child, "settings": args, "train_s": wall,
               "weights": which, "epoch": meta.get("epoch"), "clean": clean["accuracy"],
               "n_clean": clean["n"], "n_pgd": pgd["n"], "n_cw": cw["n"],
               "cw_success": cw["success_rate"], "cw_median_l2": cw["l2_median"],
               "audit": audited["robust_acc"], "audit_eps": args["eps"], "n_audit": audited["n"],
               "audit_verdict": audited["verdict"],
               "audit_failing": [c["name"] for c in audited["indicators"]
                                 if c["status"] == "fail"],
               "warnings": store.get(child).warnings}
        for r in pgd["rows"]:
            row[f"pgd@{r['budget']}"] = r["adv_acc"]
        return row


def _curves(rows: list[dict]) -> dict:
    """Accuracy-versus-budget series of the bounded attacks (noise by sigma, labelled so)."""
    curves: dict = {}
    for r in rows:
        if r["budget"] is not None:
            label = r["attack"] + (" (sigma)" if r["kind"] == "corruption" else
                                   f" ({r['norm']})")
            curves.setdefault(label, []).append((r["budget"], r["adv_acc"]))
    return curves


def _weights_to_report(store, child: str) -> list[str]:
    """The final weights, and beside them the guard's best epoch when it saw a collapse and
    kept an earlier epoch: the table shows what the guard's choice costs and gains."""
    run = store.get(child)
    best = (run.summary or {}).get("best") or {}
    kept_earlier = best.get("epoch", run.config["epochs"]) < run.config["epochs"]
    has_file = (run_dir(child) / "best.safetensors").exists()
    return ["final", "best"] if run.warnings and kept_earlier and has_file else ["final"]


def _label(row: dict) -> str:
    return row["defense"] + (f" (best epoch, {row['epoch']})" if row["weights"] == "best" else "")


def _norm(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.2%}"


def render(results: dict) -> str:
    """The Markdown report of the parts that ran."""
    lines = [f"# RobustLab: the seed study, reproduced{' (quick mode)' if results['quick'] else ''}",
             ""]
    if "cifar" in results:
        lines += _render_cifar(results["cifar"], results["plan"])
    if "mnist" in results:
        lines += _render_mnist(results["mnist"], results["plan"])
    if "defenses" in results:
        lines += _render_defenses(results["defenses"], results["plan"])
    return "\n".join(lines) + "\n"


def _render_cifar(a: dict, plan: dict) -> list[str]:
    return ["## (a) seed-resnet on CIFAR-10", "",
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
             f"{a['n_misclassified']} misclassified; up to 64, drawn across classes:", "",
             "![mistakes](cifar_mistakes.png)", ""]


def _render_mnist(b: dict, plan: dict) -> list[str]:
    lines = ["## (b) seed-resnet on MNIST and its attack table", "",
             f"Clean accuracy {_pct(b['accuracy'])} on {b['n_test']} test images (seed 98.28%). "
             f"Attacks on {b['n_attack']} test images; PGD: {plan['pgd_steps']} steps, step "
             f"2.5·eps/steps, random start; CW: {plan['cw']}; noise: Gaussian, sigma = budget; "
             "semantic: negative images. Norms are of the successful perturbations.", "",
             reports.markdown(reports.table_frame(b["rows"])), "",
             "Worst case over attacks per threat model (per example; noise is a corruption and "
             "never part of one):", "",
             reports.markdown(pd.DataFrame(b["worst_case"])), "",
             "![attacks](mnist_attacks.png) ([interactive](mnist_attacks.html))", ""]
    for w in b["warnings"]:
        lines.append(f"- warning: {w}")
    return lines


def _render_defenses(rows: list[dict], plan: dict) -> list[str]:
    budgets = plan["defense_budgets"]
    audit = plan.get("audit", {})
    lines = ["## (c) adversarial training on MNIST", "",
             f"PGD evaluation: {plan['pgd_steps']} steps, random start, step 2.5·eps/steps, on "
             f"{plan['defense_eval_n']} test images; clean accuracy on the full test split; CW "
             f"on {plan['cw_n']} images. Audit: the {audit.get('version', 'standard')} cascade "
             f"(AutoAttack's stages) at L∞ and each model's training epsilon, on "
             f"{audit.get('n', 1000)} test images, with its indicators of attack failure. "
             f"Training: {plan['defense_common']}.", "",
             "| defense | settings | clean | " + " | ".join(f"PGD {x}" for x in budgets)
             + " | audit (at training eps) | indicators | CW success | CW median L2 | "
             "train time |",
             "|---|---|---|" + "---|" * len(budgets) + "---|---|---|---|---|"]
    seed = SEED["fgsm_at"]
    lines.append("| seed FGSM-AT | eps 0.2 | 98.59% | " + " | ".join(
        _pct(seed.get(x)) for x in budgets) + " | — | — | — | — | — |")
    for r in rows:
        failing = ", ".join(r["audit_failing"]) or "none"
        lines.append(f"| {_label(r)} | "
                     f"{r['settings']} | {_pct(r['clean'])} | " + " | ".join(
            _pct(r[f'pgd@{x}']) for x in budgets) + f" | {_pct(r['audit'])} | "
            f"{r['audit_verdict']} (failing: {failing}) | {_pct(r['cw_success'])} | "
            f"{_norm(r['cw_median_l2'])} | {r['train_s']:.0f} s |")
    lines += ["", "![defenses](defenses.png) ([interactive](defenses.html))", ""]
    for r in rows:
        if r["weights"] == "best":
            continue  # its run's warnings are listed with the final row
        for w in r["warnings"]:
            lines.append(f"- {r['defense']}: {w}")
    return lines
