"""What the dashboard asks of the library: run tables, job progress, cached evaluations and
attack grids, single-image attacks. Plain Python (no streamlit), so pages stay thin."""
from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import fields

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from core import checkpoint
from core import data
from core.jobs import runner
from core.jobs.runner import delete_run  # noqa: F401  (the pages' name for it)
from core.attacks import build_attack
from core.app.console import headline
from core.hyperparams import ATTACK_SETTINGS, attack_settings
from core.paths import InputError, artifacts_dir, confine, data_dir, grid_point_path, run_dir
from core.prediction import load_model, pick_device, run_model_path
from core.jobs.specs import (AttackSpec, AuditSpec, DEFAULT_GRID, EvaluateSpec, GridSpec, SweepSpec,
                    TrainSpec)
from core.jobs.store import Run, RunStore, resume_refusal

MAX_UPLOAD_BYTES = 5 * 1024 * 1024


def eps_label(eps: float) -> str:
    """'0.0314 (8/255)' style label for a pixel-unit epsilon."""
    return f"{eps:.4g} ({eps * 255:.3g}/255)"


def device_label() -> str:
    """Where training would run."""
    dev = pick_device("auto")
    if dev.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU ({torch.get_num_threads()} threads)"


def run_label(run: Run) -> str:
    """Human label for a run in pickers."""
    cfg = run.config
    what = f"{cfg.get('model', '')} · {cfg.get('dataset', '')}"
    if run.kind == "study":
        what = (f"study · {cfg.get('model', '')} · {', '.join(cfg.get('datasets', []))} · "
                f"{cfg.get('scale', '')} scale")
    elif cfg.get("defense", "none") != "none":
        eps = cfg.get("defense_args", {}).get("eps")
        what += f" · {cfg['defense']}" + (f" eps {eps:.4g}" if isinstance(eps, (int, float))
                                          else "")
    name = f"{run.name} · " if run.name else ""
    if run.tags:
        name += f"[{', '.join(run.tags)}] "
    # no status here: a picker's label is not redrawn while a job runs, so it would go stale;
    # pages show the status beside it, live
    return f"{name}{what} · {run.id[-9:]}"


def runs_frame(store: RunStore, kind: str | None = None) -> pd.DataFrame:
    """Runs as a table for display."""
    rows = [{"id": r.id, "name": r.name or "", "kind": r.kind, "status": r.status,
             "created": time.strftime("%m-%d %H:%M", time.localtime(r.created)),
             "seconds": round(r.duration or 0), "result": headline(r)}
            for r in store.list_runs(kind=kind)]
    return pd.DataFrame(rows)


def trained_runs(store: RunStore) -> list[Run]:
    """Completed training runs (those with final weights)."""
    return [r for r in store.list_runs(kind="train", status="completed")
            if (run_dir(r.id) / "model.safetensors").exists()]


def progress(store: RunStore, run_id: str, now: float | None = None) -> dict:
    """Epoch, step, fraction done and seconds left of a running job."""
    run = store.get(run_id)
    summary = run.summary or {}
    if run.kind == "train":
        steps = store.metrics(run_id, ["train_loss_step"])
        total = summary.get("total_steps") or 1
        done = steps[-1]["step"] if steps else 0
        epoch = steps[-1]["epoch"] + 1 if steps else summary.get("epoch", 0)
        label = f"epoch {epoch}/{run.config.get('epochs')} · step {done}/{total}"
        points = [(r["time"], r["step"]) for r in steps]
    else:
        rows = store.metrics(run_id, ["progress"])
        frac = rows[-1]["value"] if rows else 0.0
        done, total = frac, 1.0
        label = f"{frac:.0%}"
        points = [(r["time"], r["value"]) for r in rows]
    fraction = min(done / total, 1.0) if total else 0.0
    if run.status == "completed":
        fraction = 1.0
    left = (remaining_seconds(points, total, time.time() if now is None else now)
            if run.status == "running" else None)
    return {"fraction": fraction, "label": label, "seconds_left": left, "status": run.status,
            "error": run.error, "warnings": run.warnings}


def remaining_seconds(points: list[tuple[float, float]], total: float, now: float
                      ) -> float | None:
    """Seconds left from (time, amount done) points: the average rate since the first point,
    which already counts the pauses that recur (evaluation at each epoch's end), and not the
    start-up before it, so the figure neither jumps with each update nor stalls between them:
    it counts down from the last point. A gap of over 10 minutes is a stop and a resume: only
    the points after it count."""
    gaps = [k for k in range(1, len(points)) if points[k][0] - points[k - 1][0] > 600]
    points = points[gaps[-1]:] if gaps else points
    if len(points) < 2 or points[-1][0] <= points[0][0] or points[-1][1] <= points[0][1]:
        return None
    (t0, d0), (t1, d1) = points[0], points[-1]
    rate = (d1 - d0) / (t1 - t0)
    return max((total - d1) / rate - (now - t1), 0.0)


def train_form_defaults(run: Run | None = None) -> dict:
    """Form values: the defaults, or a run's config (to clone it)."""
    base = TrainSpec().to_dict()
    if run is not None:
        base.update({k: v for k, v in run.config.items() if k in base})
    return base


def training_estimate(store: RunStore, values: dict) -> str:
    """How long training with form ``values`` should take here, from the images per second
    that finished runs of the same dataset, model and defense measured on this machine."""
    same = [r for r in store.list_runs(kind="train", status="completed")
            if all(r.config.get(k) == values.get(k) for k in ("dataset", "model", "defense"))
            and (r.config.get("defense_args") or {}).get("steps") ==
            (values.get("defense_args") or {}).get("steps")
            and (r.summary or {}).get("n_train") and r.duration]
    if not same:
        return ("no estimate yet: no finished run of this dataset, model and defense on this "
                "machine (a first run of 1 epoch on a few thousand images measures it)")
    run = same[0]
    per_image = run.duration / (run.config["epochs"] * run.summary["n_train"])
    images = values.get("train_subset") or FULL_TRAIN.get(values.get("dataset"), 0)
    if not images:
        return "no estimate for this dataset"
    seconds = per_image * images * int(values["epochs"])
    return (f"about {_duration(seconds)} on this machine ({images / seconds * int(values['epochs']):,.0f}"
            f" images/s measured by run {run.id[-9:]}, test evaluations included)")


FULL_TRAIN = {"mnist": 60000, "cifar10": 50000}


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{seconds:.0f} s" if seconds < 90 else f"{minutes:.0f} min" if minutes < 90 else \
        f"{minutes / 60:.1f} h"


def launch_training(store: RunStore, values: dict, name: str | None = None) -> str:
    """Validate a training form and start its worker; returns the run id."""
    cfg = TrainSpec.from_dict(values)
    if cfg.dataset.startswith("imagefolder:"):
        # A path typed into the browser may only point inside the data or artifacts folders.
        folder = confine(cfg.dataset.split(":", 1)[1], data_dir(cfg.data_dir), artifacts_dir())
        cfg.dataset = f"imagefolder:{folder}"
    # the clean evaluation starts when training ends, not when the Evaluate page is opened
    return runner.submit(store, cfg, name=name or None, evaluate_after=True)


def resumable(run: Run) -> bool:
    """Whether the dashboard may offer Resume for ``run`` (the runner's one rule)."""
    return resume_refusal(run) is None


def resume(store: RunStore, run_id: str) -> None:
    """Resume a training run in a new worker (its evaluation follows, as after a launch)."""
    runner.resume_in_worker(store, run_id, evaluate_after=True)


def launch_sweep(store: RunStore, model_run: str, attacks: list[str], budgets: list[float],
                 n: int, pgd_steps: int | None = None) -> str:
    """Start a sweep job (the attacks' own defaults, one strength everywhere); an identical
    sweep of the model that is queued, running or done is reused, not started twice."""
    specs = [{"name": a, "params": {"steps": pgd_steps} if a == "pgd" and pgd_steps else {}}
             for a in attacks]
    spec = SweepSpec(model_run=model_run, attacks=specs, budgets=budgets, n=n)
    existing = find_same(store, spec)
    return existing.id if existing else runner.submit(store, spec, parent=model_run)


def launch_attack(store: RunStore, model_run: str, attack: str, budget: float | None,
                  n: int) -> str:
    """Start one attack job of the model at this budget (the attack's own defaults otherwise);
    an identical one that is queued, running or done is reused."""
    settings = ATTACK_SETTINGS[attack]
    params = {settings.budget: budget} if settings.budget and budget is not None else {}
    spec = AttackSpec(model_run=model_run, attack=attack, params=params, n=n)
    existing = find_same(store, spec)
    return existing.id if existing else runner.submit(store, spec, parent=model_run)


def attack_results(store: RunStore, model_run: str) -> list[Run]:
    """The model's attack jobs that are done or on their way, newest first."""
    return [r for r in store.list_runs(kind="attack", parent=model_run)
            if r.status in ("completed", "running", "queued")]


def attack_label(run: Run) -> str:
    """'pgd · L∞ ε=0.1 (25.5/255) · 500 images' for an attack run."""
    settings = attack_settings(run.config["attack"], run.config.get("params", {}))
    threat = settings.threat()
    where = threat.label() if threat else ", ".join(f"{k} {v}" for k, v in
                                                     settings.params().items()
                                                     if k in ("mode", "sigma"))
    return f"{run.config['attack']} · {where} · {run.config['n']:,} images"


def find_same(store: RunStore, spec) -> Run | None:
    """A queued, running or completed run of ``spec``'s model with exactly this config."""
    config = spec.to_dict()
    for run in store.list_runs(kind=spec.kind, parent=spec.model_run):
        if run.config == config and run.status in ("completed", "running", "queued"):
            return run
    return None


def cached_evaluation(store: RunStore, model_run: str) -> Run:
    """The latest evaluation of ``model_run``'s final weights on its whole test split (one
    started from the CLI counts too), launching one when none exists."""
    wanted = EvaluateSpec(model_run=model_run)
    for run in store.list_runs(kind="evaluate", parent=model_run):
        same = all(run.config.get(k) == getattr(wanted, k) for k in ("which", "split", "n"))
        if same and run.status in ("completed", "running", "queued"):
            return run
    run_id = runner.submit(store, EvaluateSpec(model_run=model_run), parent=model_run)
    return store.get(run_id)


def gallery_images(meta_dataset: str, records: list[dict],
                   data_dir: str | None = None) -> list[str]:
    """The examples named by ``records`` (test split, original index) as image data URIs."""
    split = data.load(meta_dataset, "test", data_dir)
    imgs = split.images[[r["index"] for r in records]] if records else split.images[:0]
    return [to_display(img) for img in imgs]


def classes_for_run(run: Run) -> list[str]:
    """Class names of a training run's dataset, from its weights' sidecar (cheap: no dataset
    is read); from the dataset itself for a run whose weights are not written yet."""
    meta = checkpoint.read_sidecar(run_dir(run.id) / "model.safetensors")
    if meta is not None and "classes" in meta:
        return list(meta["classes"])
    return data.load(run.config["dataset"], "test", run.config.get("data_dir")).classes


def to_display(img: torch.Tensor, scale: int = 4) -> str:
    """A (C, H, W) uint8 or [0, 1] float tensor as a PNG data URI, upscaled without smoothing.

    Inline rather than a Streamlit media file: a quick run of reruns (a slider dragged) deletes
    media files the browser is still fetching, which shows as broken images."""
    from PIL import Image

    if img.is_floating_point():
        img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    arr = img.permute(1, 2, 0).numpy()
    arr = arr.repeat(scale, 0).repeat(scale, 1)
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def amplified_perturbation(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """The perturbation scaled to fill [0, 1] around mid-grey, so tiny changes are visible."""
    delta = x_adv - x
    return delta / (2 * delta.abs().max().clamp_min(1e-8)) + 0.5


def attack_fields(name: str) -> list[dict]:
    """The hyperparameters of an attack (name, type, default), for building widgets."""
    if name not in ATTACK_SETTINGS:
        raise InputError(f"unknown attack {name!r}; valid attacks: "
                         f"{', '.join(ATTACK_SETTINGS)}")
    out = []
    for f in fields(ATTACK_SETTINGS[name]):
        default = f.default
        out.append({"name": f.name, "type": type(default).__name__ if default is not None
                    else "optional", "default": default})
    return out


def grid_run(store: RunStore, model_run: str, attack: str, params: dict, n: int,
             budgets: list[float] | None = None) -> Run:
    """The attack-grid job for these settings: reuse a matching one, else launch it."""
    spec = GridSpec(model_run=model_run, attack=attack, params=params, n=n,
                    budgets=list(budgets or DEFAULT_GRID))
    return find_same(store, spec) or store.get(runner.submit(store, spec, parent=model_run))


def model_for_run(store: RunStore, run_id: str, which: str = "final",
                  device: str = "auto") -> tuple[torch.nn.Module, dict]:
    """Load the trained model of a training run."""
    run = store.get(run_id)
    if run.kind != "train":
        raise InputError(f"run {run_id} is a {run.kind} run; pick a training run")
    return load_model(run_model_path(run_id, which), device)


def load_report(run_id: str) -> dict:
    """The full evaluation report (with per-example records) of an evaluate run."""
    path = run_dir(run_id) / "evaluation.json"
    if not path.exists():
        raise InputError(f"run {run_id} has no evaluation report")
    return json.loads(path.read_text())


def grid_point_done(run_id: str, index: int) -> bool:
    """Whether grid point ``index`` has been computed (without reading it)."""
    return checkpoint.is_complete(grid_point_path(run_id, index))


def grid_summaries(run_id: str, count: int) -> list[dict | None]:
    """Each grid point's numbers (clean and attacked accuracy, success rate, median L2 of the
    flips), None where not yet computed; from the sidecars alone, so it is cheap to poll."""
    keys = ("clean_acc", "adv_acc", "success_rate", "l2_median")
    out = []
    for k in range(count):
        meta = checkpoint.read_sidecar(grid_point_path(run_id, k))
        out.append(None if meta is None else {key: meta["summary"].get(key) for key in keys})
    return out


def grid_result(run_id: str, index: int) -> dict | None:
    """Result of grid point ``index`` (accuracy, examples) if it has been computed."""
    if not grid_point_done(run_id, index):
        return None
    tensors, meta = checkpoint.load(grid_point_path(run_id, index))
    keep = len(tensors["x"])
    return dict(meta["summary"], x=tensors["x"], x_adv=tensors["x_adv"],
                clean_pred=tensors["clean_pred"], adv_pred=tensors["adv_pred"],
                clean_prob=tensors["clean_prob"], adv_prob=tensors["adv_prob"],
                labels=tensors["labels"],
                # grids saved before the index was kept hold the sample's first images
                index=tensors.get("index", torch.arange(keep)))


def example_choice(results: list[dict], show: str, picked: int | None = None,
                   limit: int = 6) -> list[int]:
    """Which kept examples to show, the same for every model: ``flipped`` (the attack turned a
    correct prediction wrong on any of the models), ``all`` (in sample order) or ``pick``."""
    if show == "pick":
        return [] if picked is None else [picked]
    keep = min(len(r["x"]) for r in results)
    if show == "all":
        return list(range(min(limit, keep)))
    flipped = torch.zeros(keep, dtype=torch.bool)
    for r in results:
        labels = r["labels"][:keep]
        flipped |= (r["clean_pred"][:keep] == labels) & (r["adv_pred"][:keep] != labels)
    return flipped.nonzero().squeeze(1)[:limit].tolist()


def read_upload(raw: bytes, input_shape: list[int]) -> torch.Tensor:
    """An uploaded image as a (1, C, H, W) float tensor in [0, 1], resized to the model input."""
    from PIL import Image, UnidentifiedImageError

    if len(raw) > MAX_UPLOAD_BYTES:
        raise InputError(f"upload is {len(raw) / 1e6:.1f} MB; the limit is "
                         f"{MAX_UPLOAD_BYTES / 1e6:.0f} MB")
    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (UnidentifiedImageError, OSError) as err:
        raise InputError("the uploaded file is not an image RobustLab can read (PNG, JPEG, "
                         "BMP, GIF or WebP)") from err
    c, h, w = input_shape
    img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    t = torch.from_numpy(np.asarray(img).copy()).float() / 255
    return (t.unsqueeze(0) if c == 1 else t.permute(2, 0, 1)).unsqueeze(0)


def attack_single(model: torch.nn.Module, x: torch.Tensor, attack: str, params: dict,
                  label: int | None = None) -> dict:
    """Attack one image (true label: the given one, else the model's prediction)."""
    with torch.no_grad():
        clean = F.softmax(model(x), 1)[0]
    y = torch.tensor([int(clean.argmax()) if label is None else label])
    adv = build_attack(attack, **params)(model, x, y)
    with torch.no_grad():
        probs = F.softmax(model(adv), 1)[0]
    return {"x": x[0], "x_adv": adv[0], "clean_prob": clean, "adv_prob": probs, "label": int(y)}


def config_diff(runs: list[Run]) -> pd.DataFrame:
    """Configuration keys whose values differ between runs (flattened), one column per run."""
    flat = [_flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    rows = {k: [json.dumps(f.get(k)) if isinstance(f.get(k), (dict, list)) else f.get(k)
                for f in flat] for k in keys}
    differing = {k: v for k, v in rows.items() if len({str(x) for x in v}) > 1}
    return pd.DataFrame(differing, index=[r.id for r in runs]).T


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def sweep_curves(store: RunStore, sweep_ids: list[str]) -> tuple[dict, pd.DataFrame]:
    """Curves (label -> [(budget, acc)]) and the combined table of completed sweeps."""
    series, frames = {}, []
    for sid in sweep_ids:
        run = store.get(sid)
        summary = run.summary or {}
        model = store.get(run.config["model_run"])
        label = model.name or run_label(model).split(" · ")[0] + " " + model.id[-4:]
        rows = summary.get("rows", [])
        for r in rows:
            if r["budget"] is not None:
                axis = "sigma" if r.get("kind") == "corruption" else r.get("norm", "")
                series.setdefault(f"{label} · {r['attack']} ({axis})", []).append(
                    (r["budget"], r["adv_acc"]))
        if rows:
            frame = pd.DataFrame([{k: v for k, v in r.items() if k != "params"} for r in rows])
            frame.insert(0, "model", label)
            frames.append(frame)
    return series, (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())


STAGE_NAMES = {"clean": "clean", "apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T",
               "square": "Square"}


def launch_audit(store: RunStore, model_run: str, norm: str, eps: float, version: str,
                 n: int) -> str:
    """Start an audit job of a trained model; returns the audit's run id."""
    return runner.submit(store, AuditSpec(model_run=model_run, norm=norm, eps=eps,
                                          version=version, n=n), parent=model_run)


def audit_runs(store: RunStore) -> list[Run]:
    """Every audit run, newest first."""
    return store.list_runs(kind="audit")


def audit_view(store: RunStore, run_id: str) -> dict:
    """An audit as the dashboard shows it: its stages so far (clean first; from the store
    while it runs, from audit.json once done), the stages still to come, and when done the
    indicators and verdict."""
    from core.audit import VERSIONS

    run = store.get(run_id)
    spec = AuditSpec.from_dict(run.config)
    planned = ["clean", *VERSIONS[spec.version]]
    view = {"status": run.status, "error": run.error, "threat_label": spec.threat().label(),
            "version": spec.version, "n": spec.n, "model_run": spec.model_run,
            "indicators": [], "verdict": None}
    path = run_dir(run_id) / "audit.json"
    if run.status == "completed" and path.exists():
        report = json.loads(path.read_text())
        stages = [{"attack": "clean", "robust_acc": report["clean_acc"], "seconds": 0.0}]
        stages += report["stages"]
        view.update(indicators=report["indicators"], verdict=report["verdict"], n=report["n"],
                    robust_acc=report["robust_acc"])
    else:
        rows = store.metrics(run_id)
        accs = {m["name"].split(":", 1)[1]: m["value"] for m in rows
                if m["name"].startswith("stage:")}
        secs = {m["name"].split(":", 1)[1]: m["value"] for m in rows
                if m["name"].startswith("stage_seconds:")}
        stages = [{"attack": a, "robust_acc": accs[a], "seconds": secs.get(a, 0.0)}
                  for a in planned if a in accs]
    view["stages"] = stages
    view["pending"] = [a for a in planned if a not in {s["attack"] for s in stages}]
    return view


def audit_examples(run_id: str) -> dict | None:
    """The examples an audit kept: per stage some it broke (clean and adversarial images, as
    data URIs), and some that survived; None before the audit finishes."""
    path = run_dir(run_id) / "audit_examples.safetensors"
    if not path.exists():
        return None
    tensors, meta = checkpoint.load(path)
    stages, classes = meta["stages"], meta["classes"]

    def pictures(x: torch.Tensor) -> list[str]:
        return [to_display(img) for img in x] if x.numel() else []

    broken: dict[str, list[dict]] = {name: [] for name in stages}
    for img, adv, k, label, pred, index in zip(
            pictures(tensors["x"]), pictures(tensors["x_adv"]), tensors["stage"].tolist(),
            tensors["label"].tolist(), tensors["adv_pred"].tolist(), tensors["index"].tolist()):
        broken[stages[k]].append({"clean": img, "adversarial": adv, "index": index,
                                  "caption": f"#{index}: {classes[label]} → {classes[pred]}"})
    survived = [{"clean": img, "index": index, "caption": f"#{index}: {classes[label]}"}
                for img, label, index in zip(pictures(tensors["x_robust"]),
                                             tensors["robust_label"].tolist(),
                                             tensors["robust_index"].tolist())]
    return {"broken": broken, "survived": survived}


def lab_overview(store: RunStore) -> pd.DataFrame:
    """What the lab holds: one row per trained model with its clean accuracy and its latest
    audit (robust accuracy, threat model, verdict), best audited first."""
    rows = []
    for run in trained_runs(store):
        final = (run.summary or {}).get("final") or {}
        audits = store.list_runs(kind="audit", model_run=run.id, status="completed")
        audit = audits[0].summary if audits else {}
        rows.append({"model": run.name or run.id[-9:], "tags": ", ".join(run.tags),
                     "dataset": run.config.get("dataset"),
                     "defense": run.config.get("defense", "none"),
                     "clean acc": final.get("test_acc"),
                     "audited robust acc": audit.get("robust_acc"),
                     "audit": f"{audit['threat_label']}, {audit['n']} imgs, {audit['verdict']}"
                     if audit else None})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(["audited robust acc", "clean acc"], ascending=False,
                                  na_position="last")
    return frame


def weights_file(run_id: str) -> tuple[bytes, str] | None:
    """The final weights of a training run for download: a zip of ``model.safetensors`` and
    its JSON sidecar (architecture, normalization, hash), with its file name."""
    import zipfile

    path = run_dir(run_id) / "model.safetensors"
    if not path.exists():
        return None
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for part in (path, path.with_name(path.name + ".json")):
            archive.write(part, f"{run_id}/{part.name}")
    return out.getvalue(), f"{run_id}.zip"
