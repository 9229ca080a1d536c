"""A model card: one audited robustness claim in RobustBench's ``model_info`` format, with what
anyone needs to re-run it on exactly its images (the positions' hash and, per image, whether
it was correct and whether it survived), the 95% intervals, the cascade's version and
waterfall, each indicator's verdict, the weights' SHA-256, the input convention, the software,
device and precision, and the date. ``python -m core verify`` re-runs it
(:mod:`core.jobs.verification`)."""
from __future__ import annotations

import datetime
import hashlib
import json
from fractions import Fraction
from pathlib import Path

from core.confidence import interval
from core.jobs.store import MODEL_KINDS, Run, RunStore
from core.paths import InputError, run_dir
from core.threat import ThreatModel, standard_threat

# RobustBench's model_info fields, their types in its files, and what each means
FIELDS = {
    "link": (str, "where the model is described (a paper or a repository)"),
    "name": (str, "the title of the work the model comes from"),
    "authors": (str, "its authors, comma-separated"),
    "additional_data": (bool, "whether training used data beyond the dataset's training set"),
    "number_forward_passes": (int, "forward passes per prediction (1 for a deterministic model)"),
    "dataset": (str, "the dataset: cifar10, cifar100, imagenet (here also mnist)"),
    "venue": (str, "where the work was published"),
    "architecture": (str, "the network, e.g. WideResNet-28-10"),
    "eps": (str, "the threat model's budget as a string, e.g. 8/255"),
    "clean_acc": (str, "clean accuracy in percent on the evaluated test images, e.g. 89.69"),
    "reported": (str, "the robust accuracy in percent the authors report"),
    "autoattack_acc": (str, "robust accuracy in percent under the AutoAttack evaluation"),
    "external": (str, "a lower robust accuracy in percent found by another evaluation"),
    "footnote": (str, "a note shown with the entry"),
    "unreliable": (bool, "whether the evaluation is known to be unreliable"),
}
CASCADE_CODE = "robustlab-cascade-1"  # bumped whenever the cascade's attacks change


def eps_text(eps: float) -> str:
    """An epsilon as RobustBench writes it: '8/255' where it is k/255, else the number."""
    frac = Fraction(eps).limit_denominator(255)
    if frac.denominator == 255 and abs(float(frac) - eps) < 1e-9:
        return f"{frac.numerator}/255"
    if abs(eps * 255 - round(eps * 255)) < 1e-6 and eps < 1:
        return f"{round(eps * 255)}/255"
    return f"{eps:g}"


def positions_sha256(positions: list[int]) -> str:
    """The hash of an ordered list of test-split positions (what 'the same images' means)."""
    return hashlib.sha256(",".join(map(str, positions)).encode()).hexdigest()


def mask_hex(bits: list[bool]) -> str:
    """A list of booleans as hex (bit k of the number is image k)."""
    value = sum(1 << k for k, b in enumerate(bits) if b)
    return format(value, "x")


def mask_bits(text: str, n: int) -> list[bool]:
    """The inverse of :func:`mask_hex` for ``n`` images."""
    value = int(text, 16)
    return [bool(value >> k & 1) for k in range(n)]


def weights_sha256(run: Run, which: str = "final") -> str:
    """The SHA-256 a card names: the file an import came from, or a training's weights."""
    if run.kind == "import":
        return run.summary["file_sha256"]
    name = "best.safetensors" if which == "best" else "model.safetensors"
    return json.loads((run_dir(run.id) / f"{name}.json").read_text())["sha256"]


def pick_audit(store: RunStore, model: Run, threat: ThreatModel | None,
               audit_id: str | None) -> Run:
    """The audit a card states: the one named, else the model's latest completed standard
    audit at ``threat`` (the dataset's standard one when None)."""
    if audit_id:
        audit = store.get(audit_id)
        if audit.kind != "audit" or audit.config.get("model_run") != model.id:
            raise InputError(f"run {audit_id} is not an audit of {model.id}")
        if audit.status != "completed":
            raise InputError(f"audit {audit_id} is {audit.status}; a card needs a completed one")
        return audit
    threat = threat or standard_threat(model.config["dataset"])
    found = [a for a in store.list_runs(kind="audit", model_run=model.id, status="completed")
             if a.config.get("version") == "standard" and a.config.get("norm") == threat.norm
             and abs(float(a.config.get("eps")) - threat.eps) < 1e-9]
    if not found:
        raise InputError(f"{model.id} has no completed standard audit at {threat.label()}; run "
                         f"`python -m core audit {model.id} --norm {threat.norm} --eps "
                         f"{eps_text(threat.eps)}`, or name one with --audit")
    return found[0]


def build(store: RunStore, model_id: str, audit_id: str | None = None,
          threat: ThreatModel | None = None, fields: dict | None = None) -> dict:
    """The card of ``model_id``'s audit: RobustBench's fields (``fields`` fills the ones the
    lab cannot know: link, name, authors, venue, reported, ...) and ``robustlab``'s."""
    model = store.get(model_id)
    if model.kind not in MODEL_KINDS or model.status != "completed":
        raise InputError(f"run {model_id} is not a completed training or import run")
    audit = pick_audit(store, model, threat, audit_id)
    report = json.loads((run_dir(audit.id) / "audit.json").read_text())
    sidecar = json.loads((run_dir(model_id) / "model.safetensors.json").read_text())
    cfg, n = audit.config, report["n"]
    examples = report["examples"]
    positions = [e["index"] for e in examples]
    unreliable = any(i["status"] == "fail" for i in report["indicators"])
    card = {"link": "", "name": model.name or model_id, "authors": "",
            "additional_data": False, "number_forward_passes": 1,
            "dataset": cfg_dataset(model), "venue": "", "architecture": _architecture(model),
            "eps": eps_text(float(cfg["eps"])), "clean_acc": f"{report['clean_acc'] * 100:.2f}",
            "reported": "", "autoattack_acc": f"{report['robust_acc'] * 100:.2f}",
            "unreliable": unreliable}
    for key, value in (fields or {}).items():
        if key not in FIELDS:
            raise InputError(f"unknown card field {key!r}; valid: {', '.join(FIELDS)}")
        if value is not None:
            card[key] = FIELDS[key][0](value)
    card["robustlab"] = {
        "card_version": 1, "model_run": model_id, "audit_run": audit.id,
        "norm": cfg["norm"], "eps": float(cfg["eps"]), "threat": report["threat_label"],
        "which": cfg.get("which", "final"),
        "images": {"split": "test", "source": audit.summary.get("source"), "n_examples": n,
                   "seed": cfg.get("seed", 0), "positions_sha256": positions_sha256(positions),
                   "clean_correct": mask_hex([e["clean_pred"] == e["label"] for e in examples]),
                   "robust": mask_hex([bool(e["robust"]) for e in examples])},
        "clean_acc": _figure(report["clean_acc"], n),
        "robust_acc": _figure(report["robust_acc"], n),
        "cascade": {"code": CASCADE_CODE, "version": report["version"], "steps": report["steps"],
                    "queries": report["queries"], "seed": cfg.get("seed", 0),
                    "stages": [{"attack": s["attack"], "robust_acc": s["robust_acc"],
                                "interval": s["robust_acc_ci"], "seconds": s["seconds"]}
                               for s in report["stages"]]},
        "indicators": [{"name": i["name"], "status": i["status"], "detail": i["detail"]}
                       for i in report["indicators"]],
        "verdict": report["verdict"],
        "weights_sha256": weights_sha256(model, cfg.get("which", "final")),
        "input": _input(model, sidecar),
        "software": sidecar.get("versions", {}),
        "search_precision": report.get("search_precision"),
        "device": cfg.get("device", "auto"),
        "date": datetime.datetime.fromtimestamp(audit.finished or audit.created,
                                                datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return card


def cfg_dataset(model: Run) -> str:
    """A model run's dataset name."""
    return model.config["dataset"]


def _figure(share: float, n: int) -> dict:
    low, high = interval(round(share * n), n)
    return {"value": share, "n": n, "interval": [low, high]}


def _architecture(model: Run) -> str:
    if model.kind == "import":
        return model.config.get("arch") or model.config.get("module") or model.summary["format"]
    args = model.config.get("model_args") or {}
    return model.config["model"] + (f" ({', '.join(f'{k}={v}' for k, v in args.items())})"
                                    if args else "")


def _input(model: Run, sidecar: dict) -> dict:
    """How the model's input is normalized, in pixel units (what the lab feeds it)."""
    if model.kind == "import":
        return {"mean": model.config.get("mean"), "std": model.config.get("std"),
                "input_scale": model.config.get("input_scale", 1),
                "classes": model.config.get("classes"), "arch": model.config.get("arch"),
                "module": model.config.get("module")}
    return {"mean": sidecar.get("mean"), "std": sidecar.get("std"), "input_scale": 1,
            "inside_the_model": True, "model": sidecar.get("model"),
            "model_args": sidecar.get("model_args", {})}


def check(card: dict) -> None:
    """Refuse a card whose RobustBench fields are missing or of the wrong type, or that lacks
    what a re-run needs; one line naming the field."""
    for key in ("dataset", "eps", "clean_acc", "autoattack_acc"):
        if key not in card:
            raise InputError(f"the card lacks RobustBench's field {key!r}")
    for key, (kind, _) in FIELDS.items():
        if key in card and not isinstance(card[key], kind):
            raise InputError(f"card field {key!r} must be {kind.__name__} as in RobustBench's "
                             f"files, got {type(card[key]).__name__}")
    lab = card.get("robustlab")
    if not isinstance(lab, dict) or "images" not in lab or "cascade" not in lab:
        raise InputError("the card has no 'robustlab' section (images, cascade): it cannot be "
                         "re-run exactly; write it with `python -m core card RUN`")


def markdown(card: dict) -> str:
    """card.md: the claim, its images, the waterfall and the indicators, for people."""
    lab = card["robustlab"]
    img = lab["images"]
    lines = [f"# Model card: {card['name']}", "",
             f"**{card['autoattack_acc']}%** robust accuracy at {lab['threat']} "
             f"(95% interval {lab['robust_acc']['interval'][0]:.1%}-"
             f"{lab['robust_acc']['interval'][1]:.1%}), clean **{card['clean_acc']}%** "
             f"({lab['clean_acc']['interval'][0]:.1%}-{lab['clean_acc']['interval'][1]:.1%}), "
             f"on {img['n_examples']:,} {card['dataset']} test images ({img['source']}); "
             f"AutoAttack-style cascade ({lab['cascade']['version']}, {lab['cascade']['code']}); "
             f"verdict: {lab['verdict']}" + (" (**unreliable**)" if card["unreliable"] else "")
             + ".", "",
             "| RobustBench field | value | meaning |", "|---|---|---|"]
    lines += [f"| `{k}` | {card[k]!s} | {meaning} |" for k, (_, meaning) in FIELDS.items()
              if k in card]
    lines += ["", "| stage | robust accuracy | 95% interval | seconds |", "|---|---|---|---|"]
    lines += [f"| {s['attack']} | {s['robust_acc']:.2%} | {s['interval'][0]:.1%}-"
              f"{s['interval'][1]:.1%} | {s['seconds']:.1f} |" for s in lab["cascade"]["stages"]]
    lines += ["", "| indicator | verdict | detail |", "|---|---|---|"]
    lines += [f"| {i['name']} | {i['status']} | {i['detail']} |" for i in lab["indicators"]]
    lines += ["", f"- images: positions of the test split, sha256 `{img['positions_sha256']}` "
              f"(seeded sample, seed {img['seed']})",
              f"- weights: sha256 `{lab['weights_sha256']}`",
              f"- input: {json.dumps(lab['input'])}",
              f"- software: {json.dumps(lab['software'])}; search precision "
              f"{lab['search_precision']}; device {lab['device']}; audited {lab['date']}",
              "", "Re-run it: `python -m core verify card.json --weights FILE` (or `--run RUN`)."]
    return "\n".join(lines) + "\n"


def write(card: dict, folder: Path) -> tuple[Path, Path]:
    """card.json and card.md in ``folder`` (temporary files, then renames)."""
    from core.checkpoint import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "card.json", json.dumps(card, indent=2) + "\n")
    atomic_write_text(folder / "card.md", markdown(card))
    return folder / "card.json", folder / "card.md"
