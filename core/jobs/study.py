"""``python -m core study``: the defenses at the field's standard settings, audited.

MNIST at eps 0.3 (Madry et al. 2018) and CIFAR-10 at eps 8/255: each defense is trained,
evaluated clean on the whole test split, attacked with PGD-40 and audited (AutoAttack standard
with its indicators of attack failure) at its training epsilon. Every piece is a child job run
through the one runner, so a stopped study resumes (``python -m core resume RUN``) reusing the
jobs that finished. Two scales: ``cpu`` (subsets and few attack steps, about an hour on two
cores) and ``gpu`` (the papers' settings: whole training sets, 40-step MNIST and 10-step CIFAR
attacks in training).
"""
from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field

from core import checkpoint, confidence
from core import reports
from core.paths import InputError, reports_dir, run_dir
from core.jobs.specs import AuditSpec, EvaluateSpec, StudySpec, SweepSpec, TrainSpec
from core.threat import standard_threat
from core.training.settings import COLLAPSE_DROP

SEED_ROW = {"dataset": "mnist", "defense": "seed FGSM-AT (eps 0.2)", "clean": 0.9859,
            "pgd": 0.3131, "pgd_eps": 0.2}


@dataclass(frozen=True)
class Setting:
    """One dataset's standard setting at one scale."""

    eps: float
    train: dict
    steps: int  # PGD steps of the multi-step defenses in training
    step_size: float
    eps_ramp_epochs: int
    pgd_n: int
    audit_n: int
    audit_budget: dict = field(default_factory=dict)  # AuditSpec steps/queries (tests shrink)
    defense_lr: dict = field(default_factory=dict)  # a defense's own peak learning rate
    clean_n: int | None = None  # clean test images: the whole split (tests shrink)


# TRADES at the others' lr 0.1 went to NaN on MNIST at eps 0.3 in epoch 2, as the ramp reached
# 0.3 near the one-cycle peak (2026-11-27); Zhang et al. train MNIST at lr 0.01.
TRADES_LR = {"trades": 0.03}

MNIST_EPS, CIFAR_EPS = standard_threat("mnist").eps, standard_threat("cifar10").eps
SCALES: dict[str, dict[str, Setting]] = {
    "cpu": {
        "mnist": Setting(MNIST_EPS, dict(epochs=5, batch_size=128, optimizer="nesterov", lr=0.1,
                                   train_subset=10000), steps=5, step_size=0.1,
                         eps_ramp_epochs=2, pgd_n=500, audit_n=200,
                         defense_lr=TRADES_LR),
        "cifar10": Setting(CIFAR_EPS, dict(epochs=5, batch_size=128, optimizer="nesterov",
                                         lr=0.05, train_subset=5000, test_subset=500),
                           steps=3, step_size=3 / 255, eps_ramp_epochs=2, pgd_n=500,
                           audit_n=200, defense_lr=TRADES_LR),
    },
    "gpu": {
        "mnist": Setting(MNIST_EPS, dict(epochs=20, batch_size=128, optimizer="nesterov", lr=0.1),
                         steps=40, step_size=0.01, eps_ramp_epochs=2, pgd_n=10000,
                         audit_n=1000),
        "cifar10": Setting(CIFAR_EPS, dict(epochs=30, batch_size=128, optimizer="nesterov",
                                         lr=0.1), steps=10, step_size=2 / 255,
                           eps_ramp_epochs=2, pgd_n=1000, audit_n=1000),
    },
}


def defense_args(defense: str, s: Setting) -> dict:
    """The defense's parameters at a setting: its epsilon and ramp; the PGD-based defenses
    also take the setting's steps and step size (the rest are the defense's defaults)."""
    args = {"eps": s.eps, "eps_ramp_epochs": s.eps_ramp_epochs}
    if defense in ("pgd-at", "trades", "iat"):
        args.update(steps=s.steps, step_size=s.step_size)
    return args


def study(ctx) -> dict:
    """Run every (dataset, defense) of the spec; write ``artifacts/reports/RUN/study.md``."""
    spec: StudySpec = ctx.spec
    folder = reports_dir() / ctx.run_id
    folder.mkdir(parents=True, exist_ok=True)
    pairs = [(d, f) for d in spec.datasets for f in spec.defenses]
    rows: list[dict] = []

    def one_model(pair: tuple[str, str]) -> dict:
        rows.append(_Model(ctx, spec, *pair).outcome())
        reports.write_json(folder / "results.json", _results(spec, rows))  # readable midway
        return rows[-1]

    ctx.in_turn(pairs, "models", one_model)
    checkpoint.atomic_write_text(folder / "study.md", render(_results(spec, rows)))
    summary = {"report": str(folder / "study.md"), "rows": rows}
    ctx.store.set_summary(ctx.run_id, summary)
    return summary


def _results(spec: StudySpec, rows: list[dict]) -> dict:
    return {"spec": spec.to_dict(), "machine": machine(), "rows": rows,
            "settings": {d: asdict(SCALES[spec.scale][d]) for d in spec.datasets}}


def machine() -> str:
    """This machine in one line (CPU model and cores, or the GPU)."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


class _Model:
    """One defended model of the study: train, evaluate, PGD-40, audit (each a child job)."""

    def __init__(self, ctx, spec: StudySpec, dataset: str, defense: str) -> None:
        self.ctx, self.spec, self.dataset, self.defense = ctx, spec, dataset, defense
        self.setting = SCALES[spec.scale][dataset]
        self.where = {"data_dir": spec.data_dir, "device": spec.device}
        self.label = f"{defense} on {dataset}"

    def outcome(self) -> dict:
        """The model's row; a failed job (its error kept on its own run) is a row saying so,
        and the study goes on with the other models."""
        try:
            return self.row()
        except (InputError, RuntimeError, ValueError, OSError) as err:
            message = f"{type(err).__name__}: {err}"
            self.ctx.warn(f"{self.label}: {message}")
            return {"dataset": self.dataset, "defense": self.defense,
                    "model": self.spec.model, "failed": message}

    def row(self) -> dict:
        s = self.setting
        args = defense_args(self.defense, s)
        schedule = dict(s.train, lr=s.defense_lr.get(self.defense, s.train["lr"]))
        train = TrainSpec(dataset=self.dataset, model=self.spec.model, seed=self.spec.seed,
                          defense=self.defense, defense_args=args,
                          robust_eval={"eps": s.eps, "steps": 10}, **schedule, **self.where)
        run, _ = self.ctx.child(train, f"study: {self.label}")
        store = self.ctx.store
        meta = json.loads((run_dir(run) / "model.safetensors.json").read_text())
        clean_run, clean = self.ctx.child(EvaluateSpec(model_run=run, n=s.clean_n,
                                                       **self.where),
                                          f"study: {self.label}, clean")
        _, pgd = self.ctx.child(SweepSpec(
            model_run=run, attacks=[{"name": "pgd", "params": {"steps": 40}}],
            budgets=[s.eps], n=s.pgd_n, seed=self.spec.seed, **self.where),
            f"study: {self.label}, PGD-40")
        audit_run, audited = self.ctx.child(AuditSpec(
            model_run=run, norm="linf", eps=s.eps, version="standard", n=s.audit_n,
            seed=self.spec.seed, **s.audit_budget, **self.where), f"study: {self.label}, audit")
        held_out = [m["value"] for m in store.metrics(run, ["robust_acc"])]
        return {"dataset": self.dataset, "defense": self.defense, "model": self.spec.model,
                "run": run, "audit_run": audit_run, "clean_run": clean_run, "settings": args,
                "eps": s.eps,
                "epochs": meta.get("epoch"), "train_images": s.train.get("train_subset"),
                "train_s": store.get(run).duration, "clean": clean["accuracy"],
                "n_clean": clean["n"], "pgd": pgd["rows"][0]["adv_acc"], "n_pgd": pgd["n"],
                "audit": audited["robust_acc"], "n_audit": audited["n"],
                "audit_s": store.get(audit_run).duration, "verdict": audited["verdict"],
                "failing": [c["name"] for c in audited["indicators"] if c["status"] == "fail"],
                "held_out_curve": held_out, "warnings": store.get(run).warnings}


def held_out_fall(curve: list[float]) -> dict:
    """Collapse check of a held-out robust-accuracy curve (one value per epoch): its peak, the
    epoch it is first reached, and the largest fall below it from there to the end."""
    if not curve:
        return {"peak": None, "peak_epoch": None, "fall": None, "final": None}
    peak = max(curve)
    first = curve.index(peak)
    return {"peak": peak, "peak_epoch": first + 1, "fall": peak - min(curve[first:]),
            "final": curve[-1]}


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def _ci(share: float, n: int) -> tuple[float, float]:
    return confidence.interval(confidence.count(share, n), n)


def _pct_ci(share: float | None, n: int | None) -> str:
    return "—" if share is None else confidence.text(share, n)


def _minutes(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f} min"


def iat_claim(rows: list[dict], dataset: str) -> str | None:
    """Lamb et al.'s claim on one dataset, by the lab's one rule for "as robust as": IAT's
    audited robust accuracy not below PGD-AT's beyond chance and its clean accuracy above it
    beyond chance, each paired image by image on the same test images (McNemar's exact test,
    :func:`core.comparison.paired_models`) where both audits' and evaluations' per-image
    outcomes are on disk, else by the 95% intervals (and the sentence says so)."""
    by = {r["defense"]: r for r in rows if r["dataset"] == dataset and "failed" not in r}
    if "iat" not in by or "pgd-at" not in by:
        return None
    iat, pgd = by["iat"], by["pgd-at"]
    robust = _paired_outcomes(iat.get("audit_run"), pgd.get("audit_run"), "audit")
    clean = _paired_outcomes(iat.get("clean_run"), pgd.get("clean_run"), "evaluate")
    if robust is not None and clean is not None:
        as_robust = robust["status"] != "lower"
        cleaner = clean["status"] == "higher"
        how = (f"paired: robust {robust['sentence']}; clean {clean['sentence']}")
    else:
        robust_i, robust_p = _ci(iat["audit"], iat["n_audit"]), _ci(pgd["audit"], pgd["n_audit"])
        clean_i, clean_p = _ci(iat["clean"], iat["n_clean"]), _ci(pgd["clean"], pgd["n_clean"])
        as_robust, cleaner = robust_i[1] >= robust_p[0], clean_i[0] > clean_p[1]
        how = "95% intervals: per-image outcomes not on disk, so not paired"
    holds = as_robust and cleaner
    return (f"IAT's claim on {dataset} {'holds' if holds else 'does not hold'} here ({how}): "
            f"audited robust accuracy {_pct_ci(iat['audit'], iat['n_audit'])} against PGD-AT's "
            f"{_pct_ci(pgd['audit'], pgd['n_audit'])} "
            f"({'not below it beyond chance' if as_robust else 'below it beyond chance'}), "
            f"clean {_pct_ci(iat['clean'], iat['n_clean'])} against "
            f"{_pct_ci(pgd['clean'], pgd['n_clean'])} "
            f"({'above it beyond chance' if cleaner else 'not above it beyond chance'}).")


def _paired_outcomes(first: str | None, second: str | None, kind: str) -> dict | None:
    """Two runs' per-image outcomes paired (audits: robust; evaluations: correct), or None
    when either file is missing or their images differ."""
    from core.comparison import paired_models

    if not first or not second:
        return None
    name, key = ("audit.json", "examples") if kind == "audit" else ("evaluation.json", "records")
    outcomes = []
    for run in (first, second):
        path = run_dir(run) / name
        if not path.exists():
            return None
        items = json.loads(path.read_text())[key]
        if kind == "audit":
            outcomes.append({e["index"]: bool(e["robust"]) for e in items})
        else:
            outcomes.append({e["index"]: e["true"] == e["pred"] for e in items})
    if set(outcomes[0]) != set(outcomes[1]):
        return None
    order = sorted(outcomes[0])
    return paired_models([outcomes[0][k] for k in order], [outcomes[1][k] for k in order])


def render(results: dict) -> str:
    """The study's report: one table per dataset, the seed's row, IAT's claim checked."""
    spec, rows = results["spec"], results["rows"]
    out = [f"# Defenses at the standard settings ({spec['model']}, {spec['scale']} scale)", "",
           f"Machine: {results['machine']}.", ""]
    for dataset in spec["datasets"]:
        mine = [r for r in rows if r["dataset"] == dataset]
        done = [r for r in mine if "failed" not in r]
        if not done:
            continue
        s = results["settings"][dataset]
        eps = f"{s['eps']:.4g}" + (" (8/255)" if dataset == "cifar10" else "")
        subset = s["train"].get("train_subset") or "all"
        out += [f"## {dataset}, L∞ eps {eps}", "",
                f"Training: {subset} images, {s['train']['epochs']} epochs, batch "
                f"{s['train']['batch_size']}, {s['train']['optimizer']} lr {s['train']['lr']}, "
                f"epsilon ramped over {s['eps_ramp_epochs']} epoch(s); PGD-AT, TRADES and IAT "
                f"craft with {s['steps']} steps of {s['step_size']:.4g}. PGD-40 on "
                f"{done[0]['n_pgd']} test images, the audit (AutoAttack standard: APGD-CE, "
                f"APGD-T, FAB-T, Square) on {done[0]['n_audit']}, both at the training "
                f"epsilon; clean accuracy on {done[0]['n_clean']} test images. Figures in "
                f"brackets are 95% Wilson intervals."
                + "".join(f" {d} trains at lr {lr}." for d, lr in s["defense_lr"].items()
                          if d in spec["defenses"]), "",
                "| defense | clean | PGD-40 | audit | audit verdict | held-out guard by "
                "epoch (fall after its peak) | training | audit time |",
                "|---|---|---|---|---|---|---|---|"]
        for r in mine:
            if "failed" in r:
                out.append(f"| {r['defense']} | failed: {r['failed']} | — | — | — | — | — | — |")
                continue
            verdict = r["verdict"] + (f" ({', '.join(r['failing'])})" if r["failing"] else "")
            fall = held_out_fall(r["held_out_curve"])
            curve = " ".join(f"{100 * v:.0f}" for v in r["held_out_curve"]) + (
                f" ({100 * fall['fall']:.1f} pp"
                f"{', **collapsed**' if fall['fall'] > COLLAPSE_DROP else ''})"
                if fall["fall"] is not None else "")
            out.append(f"| {r['defense']} | {_pct_ci(r['clean'], r['n_clean'])} | "
                       f"{_pct_ci(r['pgd'], r['n_pgd'])} | "
                       f"{_pct_ci(r['audit'], r['n_audit'])} | {verdict} | {curve} | "
                       f"{_minutes(r['train_s'])} | {_minutes(r['audit_s'])} |")
        if dataset == "mnist":
            out.append(f"| {SEED_ROW['defense']}, the seed's figures | "
                       f"{_pct(SEED_ROW['clean'])} | {_pct(SEED_ROW['pgd'])} at eps 0.2 | "
                       "not audited | — | — | — | — |")
        claim = iat_claim(rows, dataset)
        out += ["", claim, ""] if claim else [""]
    return "\n".join(out) + "\n"
