"""Every file a job writes for people: JSON summaries, CSV and Markdown tables, and labelled
PNGs (confusion matrix, mistakes grid, attack examples). Each file is written to a temporary
name and renamed into place."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import torch

from core import checkpoint, confidence
from core import figures
from core.data import TensorData
from core.lazy import pd

MISTAKES_SHOWN = 64


def write_json(path: Path, payload: dict) -> None:
    """JSON, atomically."""
    checkpoint.atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def table_frame(rows: list[dict]) -> pd.DataFrame:
    """A sweep's tidy table as a DataFrame (params left out)."""
    return pd.DataFrame([{k: v for k, v in r.items() if k != "params"} for r in rows])


def markdown(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table, blanks (None, NaN) as '—'."""
    return frame.astype(object).where(frame.notna(), "—").to_markdown(index=False,
                                                                       floatfmt=".4f")


def write_table(result: dict, stem: Path) -> pd.DataFrame:
    """A sweep's rows as ``stem``.csv and ``stem``.md (with the worst case per threat model)."""
    frame = table_frame(result["rows"])
    tmp = stem.with_name(stem.name + ".csv.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, stem.with_suffix(".csv"))
    text = markdown(frame)
    if result.get("worst_case"):
        text += ("\n\nWorst case over attacks, per threat model:\n\n"
                 + markdown(pd.DataFrame(result["worst_case"])))
    checkpoint.atomic_write_text(stem.with_suffix(".md"), text + "\n")
    return frame


def spread_mistakes(records: list[dict], limit: int = MISTAKES_SHOWN) -> list[dict]:
    """Misclassified records drawn across true classes in turn (most confident first within a
    class), so one class's mistakes do not fill the grid."""
    by_class: dict[int, list[dict]] = {}
    for r in sorted(records, key=lambda r: -r["confidence"]):
        by_class.setdefault(r["true"], []).append(r)
    out: list[dict] = []
    while len(out) < limit and any(by_class.values()):
        for cls in sorted(by_class):
            if by_class[cls] and len(out) < limit:
                out.append(by_class[cls].pop(0))
    return out


def _images(split: TensorData, records: list[dict]) -> torch.Tensor:
    position = {int(i): k for k, i in enumerate(split.original_index())}
    return split.floats(torch.tensor([position[r["index"]] for r in records]))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mistakes_png(split: TensorData, records: list[dict], classes: Sequence[str], path: Path,
                 cols: int = 8) -> None:
    """A grid of mistakes, each titled 'true → predicted (confidence)'."""
    if not records:
        return
    titles = [f"{classes[r['true']]} → {classes[r['pred']]}\n({r['confidence']:.0%})"
              for r in records]
    _grid_png(_images(split, records), titles, cols, (1.3, 1.45), path,
              "Mistakes (true → predicted, confidence), across classes")


def _grid_png(images: torch.Tensor, titles: list[str], cols: int, cell: tuple[float, float],
              path: Path, title: str) -> None:
    """Images in a grid of ``cols`` columns, each ``cell`` inches with its title above it.
    One axes holds every image: a figure of 64 subplots took seconds to lay out and save,
    and every evaluation writes one."""
    plt = _plt()
    rows = math.ceil(len(images) / cols)
    fig = plt.figure(figsize=(cols * cell[0], rows * cell[1] + 0.3), dpi=110)
    top = rows * cell[1] / (rows * cell[1] + 0.3)
    ax = fig.add_axes((0, 0, 1, top))
    ax.set_xlim(0, cols)
    ax.set_ylim(0, rows)
    ax.axis("off")
    side = 0.8 * cell[0] / cell[1]  # the image's height in rows, for a square image
    for k, (img, text) in enumerate(zip(images, titles)):
        col, row = k % cols, rows - 1 - k // cols
        arr = img.clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(arr[:, :, 0] if arr.shape[2] == 1 else arr,
                  cmap="gray" if arr.shape[2] == 1 else None, vmin=0, vmax=1, aspect="auto",
                  interpolation="nearest", extent=(col + 0.1, col + 0.9, row + 0.04,
                                                   row + 0.04 + side))
        ax.text(col + 0.5, row + 0.06 + side, text, ha="center", va="bottom", fontsize=7)
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / (rows * cell[1] + 0.3))
    figures.save_png(fig, path)


def examples_png(x: torch.Tensor, x_adv: torch.Tensor, labels: torch.Tensor,
                 clean_pred: torch.Tensor, adv_pred: torch.Tensor, classes: Sequence[str],
                 path: Path, title: str, rows: int = 8) -> None:
    """Rows of clean image, adversarial image and amplified perturbation, labelled."""
    rows = min(rows, len(x))
    if rows == 0:
        return
    images, titles = [], []
    for k in range(rows):
        delta = x_adv[k] - x[k]
        images += [x[k], x_adv[k], delta / (2 * delta.abs().max().clamp_min(1e-8)) + 0.5]
        titles += [f"clean: {classes[int(clean_pred[k])]} (true {classes[int(labels[k])]})",
                   f"attacked: {classes[int(adv_pred[k])]}",
                   f"perturbation (L∞ {delta.abs().max():.3f})"]
    _grid_png(torch.stack(images), titles, 3, (4.6 / 3, 1.55), path, title)


def write_evaluation(folder: Path, report: dict, split: TensorData) -> list[dict]:
    """evaluation.json, confusion.png and mistakes.png; returns the mistakes shown."""
    write_json(folder / "evaluation.json", report)
    title = f"Confusion matrix ({report['n']:,} {split.split} images)"
    figures.confusion_png(report["confusion"], report["classes"], folder / "confusion.png", title)
    shown = spread_mistakes([r for r in report["records"] if r["true"] != r["pred"]])
    mistakes_png(split, shown, report["classes"], folder / "mistakes.png")
    return shown


def write_attack(folder: Path, outcome, summary: dict, classes: Sequence[str]) -> None:
    """records.csv, summary.json, examples.safetensors and examples.png of one attack."""
    tmp = folder / "records.csv.tmp"
    pd.DataFrame(outcome.records()).to_csv(tmp, index=False)
    os.replace(tmp, folder / "records.csv")
    write_json(folder / "summary.json", summary)
    if not outcome.examples:
        return
    checkpoint.save(folder / "examples.safetensors", outcome.examples,
                    {"attack": outcome.attack})
    keep = len(outcome.examples["x"])
    flipped = [k for k in range(keep) if int(outcome.clean_pred[k]) == int(outcome.labels[k])
               and int(outcome.adv_pred[k]) != int(outcome.labels[k])]
    order = (flipped + [k for k in range(keep) if k not in flipped])[:8]
    idx = torch.tensor(order, dtype=torch.long)
    examples_png(outcome.examples["x"][idx], outcome.examples["x_adv"][idx],
                 outcome.labels[idx], outcome.clean_pred[idx], outcome.adv_pred[idx], classes,
                 folder / "examples.png",
                 f"{outcome.attack} {summary.get('threat_label', '')}: flipped examples first")


def write_audit(folder: Path, report: dict, shown: dict, data: TensorData,
                keep: int = 8) -> None:
    """audit.json (everything), audit.csv (one row per example), audit.md (stages and
    indicators) and audit_examples.safetensors: per stage a few examples it broke (clean and
    adversarial image, prediction), and a few that survived every stage."""
    broken = torch.tensor(shown["position"], dtype=torch.long)
    kept = torch.tensor([k for k, e in enumerate(report["examples"]) if e["robust"]][:keep],
                        dtype=torch.long)
    x = data.floats(broken)  # an empty index gives an empty batch of the right shape
    tensors = {"x": x, "x_adv": torch.stack(shown["x_adv"]) if shown["x_adv"] else x.clone(),
               "adv_pred": torch.tensor(shown["adv_pred"], dtype=torch.long),
               "stage": torch.tensor(shown["stage"], dtype=torch.long),
               "index": data.original_index()[broken], "label": data.labels[broken],
               "x_robust": data.floats(kept), "robust_index": data.original_index()[kept],
               "robust_label": data.labels[kept]}
    checkpoint.save(folder / "audit_examples.safetensors", tensors,
                    {"stages": [s["attack"] for s in report["stages"]],
                     "classes": list(data.classes)})
    write_json(folder / "audit.json", report)
    tmp = folder / "audit.csv.tmp"
    pd.DataFrame(report["examples"]).to_csv(tmp, index=False)
    os.replace(tmp, folder / "audit.csv")
    tmp = folder / "audit_stages.csv.tmp"
    pd.DataFrame(audit_stage_rows(report)).to_csv(tmp, index=False)
    os.replace(tmp, folder / "audit_stages.csv")
    checkpoint.atomic_write_text(folder / "audit.md", audit_markdown(report))


def audit_stage_rows(report: dict) -> list[dict]:
    """The waterfall as rows: stage, robust accuracy, its 95% interval, images, seconds."""
    n = report["n"]
    rows = [{"stage": "clean", "robust_acc": report["clean_acc"],
             "ci_low": report["clean_acc_ci"][0], "ci_high": report["clean_acc_ci"][1], "n": n,
             "seconds": None}]
    return rows + [{"stage": s["attack"], "robust_acc": s["robust_acc"],
                    "ci_low": s["robust_acc_ci"][0], "ci_high": s["robust_acc_ci"][1], "n": n,
                    "seconds": s["seconds"]} for s in report["stages"]]


def audit_markdown(report: dict) -> str:
    """The audit as Markdown: what was measured, the stage waterfall with 95% intervals, the
    indicators."""
    n = report["n"]
    stages = [{"stage": "clean", "robust accuracy (95% interval)":
               confidence.text(report["clean_acc"], n), "seconds": "—"}]
    stages += [{"stage": s["attack"], "robust accuracy (95% interval)":
                confidence.text(s["robust_acc"], n), "seconds": f"{s['seconds']:.1f}"}
               for s in report["stages"]]
    checks = [{"indicator": c["name"], "status": c["status"], "what it means": c["detail"]}
              for c in report["indicators"]]
    lines = [f"# Audit: {report['threat_label']}, {report['version']} version, "
             f"{n:,} test images", "",
             f"Robust accuracy **{confidence.text(report['robust_acc'], n)}** (95% Wilson "
             f"interval; clean {confidence.text(report['clean_acc'], n)}); verdict: "
             f"**{report['verdict']}**. The attacks searched in "
             f"{report.get('search_precision', 'fp32')}; every verdict is the float32 model's.",
             ""]
    lines += [f"{stage} used the {loss} loss: DLR needs at least 4 classes."
              for stage, loss in report.get("losses", {}).items()
              if stage != "apgd-ce" and not loss.startswith("dlr")]
    lines += ["", markdown(pd.DataFrame(stages)), "", markdown(pd.DataFrame(checks)), ""]
    return "\n".join(lines)


def write_curve(folder: Path, spec, split: TensorData, found: dict[str, torch.Tensor],
                names: list[str], extra: dict | None = None) -> dict:
    """curve.json (per example: index, label, clean prediction's correctness, smallest norm,
    the attack that found it), curve.csv, curve.png (robust accuracy against epsilon with its
    95% band) and curve_examples.safetensors (every image at its breaking point, with the
    class there when ``found`` has ``adv_pred``); returns the summary."""
    from core.curve import RobustnessCurve

    norms = [float(v) for v in found["norm"]]
    curve = RobustnessCurve.of(spec.norm, norms)
    by = [names[int(b)] if int(b) >= 0 else None for b in found["by"]]
    index = split.original_index()
    rows = [{"index": int(index[k]),
             "label": int(split.labels[k]), "correct": norms[k] > 0,
             "smallest_norm": norms[k] if math.isfinite(norms[k]) else None,
             "found_by": by[k] if math.isfinite(norms[k]) else None} for k in range(len(norms))]
    median = curve.median()
    summary = {"norm": spec.norm, "n": curve.n, "clean_acc": curve.clean_accuracy(),
               "attacks": list(spec.attacks), "steps": spec.steps,
               "median_norm": None if math.isnan(median) or math.isinf(median) else median,
               "never_broken": sum(1 for v in norms if math.isinf(v)),
               "found_by": {name: by.count(name) for name in names if by.count(name)},
               "norms": [r["smallest_norm"] for r in rows], **(extra or {})}
    write_json(folder / "curve.json", dict(summary, norms=None, examples=rows))
    tmp = folder / "curve.csv.tmp"
    pd.DataFrame(rows).to_csv(tmp, index=False)
    os.replace(tmp, folder / "curve.csv")
    figures.curve_png(curve, folder / "curve.png",
                      f"{spec.norm} robustness curve, {curve.n:,} test images "
                      f"({', '.join(spec.attacks)})")
    tensors = {"x": split.floats(), "x_adv": found["x_adv"], "norm": found["norm"],
               "labels": split.labels, "index": index}
    if "adv_pred" in found:  # the class at each breaking point: pages need not run the model
        tensors["adv_pred"] = found["adv_pred"]
    checkpoint.save(folder / "curve_examples.safetensors", tensors, {"norm": spec.norm})
    return summary
