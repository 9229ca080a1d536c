"""What each kind of job does, given its :class:`core.jobs.runner.JobContext`. Under torchrun every
rank runs the same function on its share of the work; rank 0 alone writes files and the store.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from core import checkpoint
from core import confidence
from core import data
from core import distributed
from core import estimate
from core import precision
from core import reports
from core.attacks import APGD, ATTACKS, build_attack, with_budget
from core.attacks.speed import LowPrecision
from core.evaluation import (clean_accuracy, clean_report, run_attack, sanity_warnings,
                             sharded_attack)
from core.evaluation import sweep as sweep_
from core.jobs.claims import stored_figures
from core.jobs.ledger import Ledger
from core.jobs.specs import (AttackSpec, AuditSpec, CurveSpec, EvaluateSpec, GridSpec,
                             ImportSpec, ModelJobSpec, SweepSpec)
from core.paths import grid_point_path, runs_root
from core.prediction import model_from, pick_device, run_model_path
from core.training.loop import fit


def train(ctx) -> dict:
    """Train per the TrainSpec (resuming from the run's checkpoint when asked)."""
    return fit(ctx.spec, ctx.store if ctx.is_main else None, ctx.run_id, resume=ctx.resume,
               progress=ctx.progress)


def import_model(ctx) -> dict:
    """Bring an outside model in: read and check it (:func:`core.imported.examine`), measure its
    clean accuracy on a seeded sample of test images, and store it like a trained model."""
    from core import imported

    spec: ImportSpec = ctx.spec
    split = data.load(spec.dataset, "test", spec.data_dir)
    examined = imported.examine(spec, split)
    for line in examined.lines:
        ctx.say(line)
    model = examined.model.to(pick_device(spec.device), memory_format=torch.channels_last)
    check = split.subset(spec.n_check, spec.seed)
    ctx.say(estimate.line(estimate.evaluation_seconds(len(check), _per_pass(model, check)),
                          f"one forward pass of each of {len(check):,} test images"))
    ctx.progress.start(len(check))
    accuracy, n, high = clean_accuracy(model, check,
                                       progress=lambda done, _t: ctx.progress.update(done))
    k = len(split.classes)
    ctx.say(f"clean accuracy {confidence.text(accuracy, n)} on {n:,} test images "
            f"({split.source})")
    if imported.near_chance(accuracy, high, k):
        ctx.warn(imported.chance_line(accuracy, k))
    for flag in examined.flags:
        ctx.warn(f"flagged: {flag}")
    file_sha = imported.sha256(spec.file)
    info = dict(examined.meta, run=ctx.run_id, file=spec.file, file_sha256=file_sha,
                arch=spec.arch, module=spec.module, classes_order=spec.classes)
    meta = {"model": "imported", "import": info, "dataset": spec.dataset,
            "dataset_source": split.source, "input_shape": list(split.input_shape),
            "num_classes": k, "classes": list(split.classes),
            "mean": examined.model.normalize.mean.flatten().tolist(),
            "std": examined.model.normalize.std.flatten().tolist(),
            "arch_mean": examined.meta.get("arch_mean"), "arch_std": examined.meta.get("arch_std"),
            "train_config": {"data_dir": spec.data_dir}}
    imported.keep_files(spec, ctx.folder, examined.meta["format"])
    tensors = {f"model.{k}": v for k, v in examined.model.state_dict().items()}
    checkpoint.save(ctx.folder / "model.safetensors", tensors, meta)
    summary = {"clean_acc": accuracy, "n": n, "interval": confidence.accuracy_interval(accuracy, n),
               "n_test_source": split.source, "format": examined.meta["format"],
               "arch": spec.arch or spec.module or examined.meta["format"],
               "file_sha256": file_sha, "flags": examined.flags, "checks": examined.lines,
               "filled": examined.meta["filled"]}
    ctx.store.set_summary(ctx.run_id, summary)
    return summary


def job_model(ctx, spec: ModelJobSpec) -> tuple[nn.Module, dict]:
    """The model a job names. Under torchrun rank 0 reads the file and sends it to the other
    ranks (which need no run store), and each rank uses its own device."""
    rank = ctx.rank
    path = run_model_path(spec.model_run, spec.which) if rank.is_main else None
    tensors, meta = distributed.shared_checkpoint(path, rank)
    device = rank.device if rank.world > 1 else pick_device(spec.device)
    return model_from(tensors, meta, device), meta


def split_for(meta: dict, spec: ModelJobSpec, split: str = "test", n: int | None = None,
              seed: int = 0) -> data.TensorData:
    """The split a model was trained for, optionally a seeded subset of ``n`` examples."""
    root = spec.data_dir or meta["train_config"].get("data_dir")
    return data.load(meta["dataset"], split, root).subset(n, seed)


def _per_pass(model: nn.Module, split: data.TensorData, batch: int = 64,
              attack: bool = False) -> float:
    """Seconds per image of a training pass, or (``attack``) of an attack pass, timed on
    ``batch`` images (per image, a batch of 250 CIFAR-10 images costs more than one of 64)."""
    device = next(model.parameters()).device
    x = split.floats(slice(0, batch)).to(device, memory_format=torch.channels_last)
    timer = estimate.seconds_per_attack_pass if attack else estimate.seconds_per_pass
    return timer(model, x, split.labels[:batch].to(device))


def evaluate(ctx) -> dict:
    """Clean metrics, confusion matrix and mistakes of a model on a split."""
    spec: EvaluateSpec = ctx.spec
    model, meta = job_model(ctx, spec)
    split = split_for(meta, spec, spec.split, spec.n)
    ctx.say(estimate.line(estimate.evaluation_seconds(len(split), _per_pass(model, split)),
                          f"one forward pass of each of {len(split):,} images"))
    ctx.progress.start(len(split))
    report = clean_report(model, split, spec.batch_size,
                          progress=lambda done, _total: ctx.progress.update(done))
    ctx.progress.update(len(split))
    if not ctx.is_main:
        return {}
    shown = reports.write_evaluation(ctx.folder, report, split)
    summary = {k: v for k, v in report.items() if k != "records"}
    summary.update(n_misclassified=sum(r["true"] != r["pred"] for r in report["records"]),
                   n_mistakes_shown=len(shown), model_run=spec.model_run, split=spec.split)
    ctx.store.set_summary(ctx.run_id, summary)
    return summary


def attack(ctx) -> dict:
    """One attack on a seeded sample of test images: summary, records and example images."""
    spec: AttackSpec = ctx.spec
    atk = build_attack(spec.attack, **spec.params)
    model, meta = job_model(ctx, spec)
    split = split_for(meta, spec, "test", spec.n, spec.seed)
    seconds = estimate.attack_run_seconds(atk, len(split),
                                          _per_pass(model, split, spec.batch_size, attack=True))
    ctx.say(estimate.line(seconds + estimate.REPORT_S,
                          f"{atk.gradients_per_image():,} gradient passes per image, "
                          f"{len(split):,} images, and the report"))
    ctx.progress.start(len(split))
    runner = sharded_attack(ctx.rank)
    outcome = runner(model, split, atk, spec.batch_size, keep_examples=spec.keep,
                     progress=lambda done, _total: ctx.progress.update(done))
    if not ctx.is_main:
        return {}
    threat = atk.threat()
    summary = dict(outcome.summary(), n_test_source=split.source, model_run=spec.model_run,
                   threat_label=threat.label() if threat else f"sigma {atk.params()['sigma']}")
    for w in sanity_warnings(model, split.floats(slice(0, 64)), split.labels[:64]):
        ctx.warn(w)
    reports.write_attack(ctx.folder, outcome, summary, split.classes)
    ctx.store.set_summary(ctx.run_id, summary)
    return summary


def sweep(ctx) -> dict:
    """Attacks over a grid of budgets: the tidy table, the worst case per threat model, CSV
    and Markdown."""
    spec: SweepSpec = ctx.spec
    attacks = [build_attack(a["name"], **a["params"]) for a in spec.attacks]
    model, meta = job_model(ctx, spec)
    split = split_for(meta, spec, "test", spec.n, spec.seed)
    per_pass = _per_pass(model, split, spec.batch_size, attack=True)
    points = [(a, b) for a in attacks for b in (spec.budgets if a.budget else [None])]
    ledger = _ledger(ctx, meta, split, next(model.parameters()).device)
    saved = _resumed(ctx, ledger)
    behind = 0
    if saved is not None:
        current = saved[1].get("current") or {}
        behind = saved[1]["point"] * len(split) + current.get("next", 0)
    # a resume's estimate covers the attack runs, or parts of them, still to do
    costs = [estimate.attack_run_seconds(a, len(split), per_pass) for a, _ in points]
    seconds = sum(cost * min(max((k + 1) - behind / max(len(split), 1), 0.0), 1.0)
                  for k, cost in enumerate(costs)) + estimate.REPORT_S
    ctx.say(estimate.line(seconds, f"{len(points)} attack runs on {len(split):,} images" + (
        f"; what is left after the resume: {len(points) * len(split) - behind:,} of "
        f"{len(points) * len(split):,} image-runs" if behind else "")))
    if saved is not None:
        ctx.say(f"continuing with attack run {saved[1]['point'] + 1} of {len(points)} "
                "(the finished batches are kept in the run's folder)")
    ctx.progress.start(len(points) * len(split), done=behind)
    result = sweep_(model, split, attacks, spec.budgets, spec.batch_size,
                    progress=lambda done, _total: ctx.progress.update(done),
                    runner=sharded_attack(ctx.rank), saved=saved,
                    on_batch=ledger.record if ledger.enabled else None)
    if not ctx.is_main:
        return {}
    reports.write_table(result, ctx.folder / "sweep")
    ledger.clear()
    for w in result["warnings"]:
        ctx.warn(w)
    summary = dict(result, n=len(split), source=split.source, model_run=spec.model_run)
    ctx.store.set_summary(ctx.run_id, summary)
    return summary


def grid(ctx) -> dict:
    """One attack over a grid of budgets, each point saved as soon as it is done, with a few
    example images and their class probabilities (the dashboard's epsilon slider)."""
    spec: GridSpec = ctx.spec
    attack_ = build_attack(spec.attack, **spec.params)
    model, meta = job_model(ctx, spec)
    split = split_for(meta, spec, "test", spec.n, spec.seed)
    budgets = spec.budgets if attack_.budget else [None]
    ctx.progress.start(len(budgets) * len(split))
    device = next(model.parameters()).device
    # the ledger pins what the points were computed under; the points are its result files
    ledger = _ledger(ctx, meta, split, device)
    saved = _resumed(ctx, ledger)
    done: dict[str, float] = dict(saved[1]["done"]) if saved is not None else {}
    if ctx.resume and ctx.is_main:
        _drop_unrecorded_points(ctx.run_id, len(budgets), done)
        if done:
            ctx.say(f"continuing with {len(budgets) - len(done)} of {len(budgets)} budgets "
                    f"({len(done)} finished before the stop are kept)")
    # the point under the dashboard's slider first, then the rest in order
    order = sorted(range(len(budgets)), key=lambda k: k != spec.first)
    for step, (k, budget) in enumerate((k, budgets[k]) for k in order):
        if str(k) in done:  # finished before the stop; the same seeds would give the same point
            ctx.progress.start(len(budgets) * len(split), done=(step + 1) * len(split))
            continue
        concrete = with_budget(attack_, budget) if budget is not None else attack_
        outcome = run_attack(model, split, concrete, spec.batch_size, keep_examples=spec.keep,
                             progress=lambda d, _t, step=step: ctx.progress.update(
                                 step * len(split) + d))
        summary = {key: v for key, v in outcome.summary().items()
                   if key not in ("confusion_adv", "confusion_clean", "per_class_adv_acc")}
        _save_grid_point(ctx, k, outcome, model, device, summary)
        done[str(k)] = summary["adv_acc"]  # the point's sidecar is the record pages read
        ledger.save({}, {"done": done})  # a no-op off the main process (disabled there)
    ledger.clear()
    done = {key: done[key] for key in sorted(done, key=int)}
    result = {"adv_acc": done, "budgets": budgets, "n": len(split), "source": split.source,
              "classes": split.classes, "kind": ATTACKS[spec.attack].kind}
    ctx.store.set_summary(ctx.run_id, result)
    return result


def _drop_unrecorded_points(run_id: str, count: int, done: dict[str, float]) -> None:
    """Remove the point files a resume cannot vouch for: those its ledger does not list (a
    stop between a point's file and its ledger shard, or a ledger set aside as changed)."""
    for k in range(count):
        if str(k) not in done:
            checkpoint.remove(grid_point_path(run_id, k))


def _save_grid_point(ctx, k: int, outcome, model: nn.Module, device: torch.device,
                     summary: dict) -> None:
    with torch.no_grad():
        clean_prob = torch.softmax(model(outcome.examples["x"].to(device)).float(), 1).cpu()
        adv_prob = torch.softmax(model(outcome.examples["x_adv"].to(device)).float(), 1).cpu()
    keep = len(outcome.examples["x"])
    tensors = dict(outcome.examples, clean_prob=clean_prob, adv_prob=adv_prob,
                   clean_pred=clean_prob.argmax(1), adv_pred=adv_prob.argmax(1),
                   labels=outcome.labels[:keep], index=outcome.index[:keep])
    checkpoint.save(grid_point_path(ctx.run_id, k), tensors,
                    {"summary": summary})


def _stage_reporter(ctx):
    """Say each stage's robust accuracy as it completes and log it for the dashboard's
    waterfall (under torchrun: rank 0's share until the end)."""
    stages: list[str] = []

    def report(row: dict) -> None:
        if not ctx.is_main:
            return
        share = "" if ctx.rank.world == 1 else f" on this process's {row['n']:,} images"
        figure = confidence.text(row["robust_acc"], row["n"])
        kept = " (kept from before the resume)" if row.get("resumed") else ""
        if row["attack"] == "clean":
            ctx.say(f"clean accuracy {figure}{share}{kept}")
        else:
            ctx.say(f"after {row['attack']}: robust accuracy {figure}{share} "
                    f"({row['seconds']:.0f} s){kept}")
        stages.append(row["attack"])
        name = f"stage:{row['attack']}"
        if row.get("resumed") and ctx.store.metrics(ctx.run_id, [name]):
            return  # logged by the session that finished it (a stop between its ledger and
            # its metric leaves it to this one)
        ctx.store.log_metrics(ctx.run_id, [
            (None, len(stages) - 1, name, row["robust_acc"]),
            (None, len(stages) - 1, f"stage_seconds:{row['attack']}", row["seconds"])])

    return report


def audit(ctx) -> dict:
    """The AutoAttack-style cascade at one threat model, then the attack-failure indicators;
    audit.json, audit.csv and audit.md in the run's folder."""
    from core import audit as audit_
    from core.jobs import known

    spec: AuditSpec = ctx.spec
    threat = spec.threat()
    model, meta = job_model(ctx, spec)
    split = split_for(meta, spec, "test", spec.n, spec.seed)
    plan = audit_.stages(spec.version, threat, spec.steps, spec.queries, spec.seed)
    device = next(model.parameters()).device
    batch = min(spec.batch_size, len(split))
    search = precision.choose(spec.precision, model, split.floats(slice(0, batch)).to(device),
                              split.labels[:batch].to(device), "search")
    low = search.bf16
    ledger = _ledger(ctx, meta, split, device, search.name)
    saved = _resumed(ctx, ledger)
    work = _AuditWork(plan, len(split))
    behind = work.at(_cascade_done(saved, len(split), batch))
    # a resumed audit states what is left: the stages, or parts of them, still to do
    ctx.say(_audit_estimate(model, split, plan, spec, low,
                            _cascade_done(saved, len(split), batch) / max(len(split), 1)))
    ctx.say(f"searching in {'bfloat16' if low else 'float32'} ({search.reason}); every verdict "
            "in float32")
    if saved is not None:
        ctx.say(_continuing(saved[1], [s.name for s in plan], -(-len(split) // batch)))
    ctx.progress.start(work.total, "attack passes", done=behind)
    result = audit_.cascade(model, split, plan, spec.batch_size,
                            progress=lambda done, _total: ctx.progress.update(work.at(done)),
                            ctx=ctx.rank, on_stage=_stage_reporter(ctx), low_precision=low,
                            saved=saved, on_batch=ledger.record if ledger.enabled else None)
    result["search_precision"] = search.name
    result["search_precision_reason"] = search.reason
    if not ctx.is_main:
        return {}
    ctx.say("checking the indicators of attack failure…")
    figures = stored_figures(ctx.store, spec.model_run, spec.which, threat)
    checks = audit_.indicators(model, split, threat, result, plan, spec.steps, spec.seed,
                               figures=figures, progress=lambda done, name: ctx.progress.update(
                                   work.checking(done / audit_.CHECKS), name))
    report = audit_.report(spec, threat, result, checks, split)
    reports.write_audit(ctx.folder, report, result["shown"], split)
    known.save(ctx.folder, result["broken"]["position"], result["broken"]["x_adv"], split,
               f"{spec.version} audit at {threat.label()}")
    summary = {k: v for k, v in report.items() if k != "examples"}
    summary.update(model_run=spec.model_run, source=split.source)
    ctx.store.set_summary(ctx.run_id, summary)
    ledger.clear()
    return summary


def curve(ctx) -> dict:
    """A robustness curve: each image's smallest adversarial norm over the minimum-norm
    attacks (each norm checked in float32), lowered by the adversarial examples earlier audits
    and curves of the same weights kept, and checked with the fast audit's attacks at the
    budgets the user cares about; saved batch by batch so a stopped curve resumes; curve.json,
    curve.csv, curve.png and the examples at their breaking points."""
    from core.audit.cascade import predict_labels
    from core.audit.minimal import AFTER, checked_at, known_points, smallest_norms
    from core.jobs import known

    spec: CurveSpec = ctx.spec
    attacks = spec.attack_list()
    names = [a.name for a in attacks] + list(AFTER)
    model, meta = job_model(ctx, spec)
    split = split_for(meta, spec, "test", spec.n, spec.seed)
    device = next(model.parameters()).device
    batch = min(spec.batch_size, len(split))
    choice = precision.choose(spec.precision, model, split.floats(slice(0, batch)).to(device),
                              split.labels[:batch].to(device), "search")
    search = LowPrecision(model) if choice.bf16 else model
    mine = distributed.my_positions(ctx.rank, len(split), batch)
    ledger = _ledger(ctx, meta, split, device, choice.name)
    saved = _resumed(ctx, ledger)
    kept = saved[0] if saved else {}
    start = saved[1]["batch"] if saved else 0
    # the run store is rank 0's: under torchrun it reads, and every rank gets the same
    shared = (_curve_checks(ctx, spec, saved), known.stored(
        ctx.store, spec.model_run, spec.which, split, spec.norm)) if ctx.is_main else None
    if ctx.rank.world > 1:
        shared = distributed.gather_objects(ctx.rank, shared)[0]
    budgets, (known_rows, known_x, known_bound, known_runs) = shared
    if known_runs:
        ctx.say(f"starting from {len(known_x):,} adversarial examples kept by "
                f"{len(known_runs)} earlier audit(s) and curve(s) of these weights")
    shares = [known.audited_robust_share(ctx.store, spec.model_run, spec.norm, b, spec.which)
              if ctx.store is not None else None for b in budgets]
    work = _CurveWork(model, search, split, batch, attacks, budgets, spec, choice.bf16, shares)
    ctx.say(work.estimate(len(split) - min(start * batch, len(mine)) * max(ctx.rank.world, 1),
                          saved is not None))
    ctx.say(f"searching in {'bfloat16' if choice.bf16 else 'float32'} ({choice.reason}); every "
            "norm kept is checked in float32")
    if saved:
        ctx.say(f"continuing with batch {start + 1} of {-(-len(mine) // batch)} (the finished "
                "batches are kept in the run's folder)")
    ctx.progress.start(len(mine) * work.per_image, "attack passes",
                       done=min(start * batch, len(mine)) * work.per_image)
    for k in range(start, -(-len(mine) // batch)):
        idx = mine[k * batch:(k + 1) * batch]
        x, y = split.floats(idx).to(device), split.labels[idx].to(device)
        watch = work.watcher(ctx, k * batch * work.per_image, len(idx))
        found = smallest_norms(model, search, x, y, attacks, choice.bf16, watch("search"))
        local = row_in_batch(idx, len(split))[known_rows] if len(known_rows) else known_rows
        pick = local >= 0  # the kept examples of this batch's images
        known_points(model, x, y, found, local[pick].to(device), known_x[pick],
                     known_bound[pick], spec.norm, names.index("stored"))
        if budgets:
            checked_at(model, search, x, y, found, budgets, spec.norm, spec.steps, spec.seed,
                       names.index("apgd-ce"), watch("check"))
        part = {key: v.cpu() for key, v in found.items()}
        kept = {key: torch.cat([kept[key], v]) if key in kept else v for key, v in part.items()}
        ctx.progress.update((k * batch + len(idx)) * work.per_image)
        if ledger.enabled:
            ledger.save(kept, {"batch": k + 1, "checked_at": budgets})
    merged = distributed.gather_in_order(ctx.rank, mine, kept) if ctx.rank.world > 1 else kept
    if not ctx.is_main:
        return {}
    researched = int(merged["researched"].sum()) if "researched" in merged else 0
    merged["adv_pred"] = torch.cat([predict_labels(model, part.to(device)).cpu()
                                    for part in merged["x_adv"].split(batch)])
    summary = reports.write_curve(ctx.folder, spec, split, merged, names, extra={
        "researched_in_float32": researched, "checked_at": budgets,
        "started_from": known_runs})
    summary.update(model_run=spec.model_run, source=split.source,
                   search_precision=choice.name)
    ctx.store.set_summary(ctx.run_id, summary)
    ledger.clear()
    return summary


def row_in_batch(idx: torch.Tensor, total: int) -> torch.Tensor:
    """For each of ``total`` split rows, its row in the batch ``idx`` (-1: not in it)."""
    lookup = torch.full((total,), -1, dtype=torch.long)
    lookup[idx] = torch.arange(len(idx))
    return lookup


def _curve_checks(ctx, spec: CurveSpec, saved) -> list[float]:
    """The budgets the curve is checked at with the fast audit's attacks: the user's ``at``,
    else the budgets of the model's audits in the curve's norm (those a resume started with)."""
    from core.jobs import known

    if saved is not None and "checked_at" in saved[1]:
        return list(saved[1]["checked_at"])
    if not spec.check:
        return []
    budgets = sorted(spec.at) if spec.at else known.audited_budgets(
        ctx.store, spec.model_run, spec.norm, spec.which)
    if budgets:
        ctx.say(f"checking the images still unbroken at {', '.join(f'{b:.4g}' for b in budgets)} "
                f"with the fast audit's APGD-CE and APGD-T ({spec.steps} steps)")
    else:
        ctx.say("no budget to check at (no audit of this model in this norm, no --at): the "
                "curve rests on its minimum-norm attacks")
    return budgets


class _CurveWork:
    """A curve's cost in gradient passes per image (the minimum-norm attacks, then at most the
    check's attacks at each budget) and its progress within a batch."""

    def __init__(self, model, search, split, batch, attacks, budgets, spec, bf16,
                 shares: list[float | None] | None = None) -> None:
        from core.audit.cascade import stages
        from core.threat import ThreatModel

        self.search = [max(a.gradients_per_image(), 1) for a in attacks]
        check = [s.attack.gradients_per_image() for s in stages(
            "fast", ThreatModel(spec.norm, max(budgets, default=1.0)), spec.steps)]
        self.check = check * len(budgets)
        # the check sees only the images unbroken at its budget: about an audit's robust share
        # there where one exists, else all of them (an upper bound)
        shares = shares or [None] * len(budgets)
        self.expected_check = sum(check) * sum(1.0 if s is None else s for s in shares)
        self.attacks = [a.name for a in attacks]
        self.per_image = sum(self.search) + sum(self.check)
        # the check's APGD runs on the search model; a minimum-norm search keeps its points at
        # the decision boundary, where the bf16 search computes most rows again in float32: a
        # bf16 pass plus (at most) a float32 one
        fp32 = _per_pass(model, split, batch, attack=True)
        self.check_pass = _per_pass(search, split, batch, attack=True) if bf16 else fp32
        self.search_pass = fp32 + self.check_pass if bf16 else fp32

    def estimate(self, left: int, resumed: bool) -> str:
        """The line that says how long what is left takes (the check counted on the share of
        images the model's audits left unbroken at its budgets, in full where none did)."""
        left = max(left, 0)
        what = f"{', '.join(self.attacks)}: {sum(self.search):,} gradient passes per image"
        if self.check:
            what += (f", the check at most {sum(self.check):,} more (about "
                     f"{self.expected_check:,.0f} on average: it sees only unbroken images)")
        what += f", {left:,} images" + (" (what is left)" if resumed else "")
        seconds = left * (sum(self.search) * self.search_pass +
                          self.expected_check * self.check_pass)
        return estimate.line(seconds + estimate.REPORT_S, what)

    def watcher(self, ctx, done_before: int, size: int):
        """Progress callbacks for one batch's search and check phases."""
        from core.attacks.contract import watching

        def phase(which: str):
            weights = self.search if which == "search" else self.check
            offset = 0 if which == "search" else sum(self.search)

            def watch(attack_, a):
                base = done_before + size * (offset + sum(weights[:a]))
                return watching(attack_, lambda f: ctx.progress.update(
                    base + round(f * size * weights[a]), attack_.name))
            return watch
        return phase


def _ledger(ctx, meta: dict | None = None, split: data.TensorData | None = None,
            device=None, search: str | None = None) -> Ledger:
    """The run's ledger of finished batches (one process only: under torchrun a rank holds
    only its share, so a stopped sharded job starts again), pinned to what its batches depend
    on; a resume whose conditions changed says which and starts again."""
    folder = runs_root() / ctx.run_id if ctx.run_id else None  # made by the first save
    conditions = {"precision": search, "device": str(device) if device is not None else None,
                  "source": split.source if split is not None else None,
                  "n": len(split) if split is not None else None,
                  "weights": (meta or {}).get("sha256")}
    ledger = Ledger(folder, ctx.spec.to_dict(), enabled=ctx.is_main and ctx.rank.world == 1,
                    conditions=conditions)
    return ledger


def _resumed(ctx, ledger: Ledger):
    """The ledger's saved state on a resume, saying why when it was set aside."""
    saved = ledger.load() if ctx.resume else None
    if ctx.resume and ledger.changed:
        ctx.say(f"resume: {ledger.changed}")
        ctx.warn(f"resumed from the start: {ledger.changed}")
    return saved


def _audit_estimate(model: nn.Module, split: data.TensorData, plan: list, spec: AuditSpec,
                    low: bool, done: float = 0.0) -> str:
    """The audit's estimate, from one timed attack pass and a probe of 64 images: how many
    are correct, and how many of those a 10-step APGD-CE breaks (they leave the cascade
    early; the rest go through every stage); ``done``: the stages behind a resume."""
    device = next(model.parameters()).device
    x, y = split.floats(slice(0, 64)).to(device), split.labels[:64].to(device)
    search = LowPrecision(model) if low else model
    per_pass = estimate.seconds_per_attack_pass(search, x, y)
    per_float32 = estimate.seconds_per_attack_pass(model, x, y) if low else per_pass
    per_call = estimate.seconds_per_attack_pass(search, x[:1], y[:1])
    from core.audit.cascade import predict_labels

    right = predict_labels(model, x) == y
    short = APGD(eps=spec.eps, norm=spec.norm, steps=10, loss="ce", seed=spec.seed)
    broken = predict_labels(model, short(search, x[right], y[right])) != y[right] if right.any() \
        else right[:0]
    correct, share = float(right.float().mean()), float(broken.float().mean()) if len(broken) \
        else 0.0
    seconds = estimate.audit_seconds(plan, len(split), correct, share, per_pass, spec.steps,
                                     per_float32, per_call, done=done)
    resumed = (f"; what is left after the resume: {_stages_left(plan, done)} and the "
               "indicators" if done > 0 else "")
    return estimate.line(seconds,
                         f"{', '.join(s.name for s in plan)} on {len(split):,} images; of 64 "
                         f"probed, {correct:.0%} correct and {share:.0%} of those broken by a "
                         f"10-step APGD-CE: later stages see only the rest{resumed}")


def _stages_left(plan: list, done: float) -> str:
    """'the rest of apgd-t, fab-t, square': the cascade still to do after ``done`` stages."""
    k = int(done)
    names = [s.name for s in plan[k:]]
    if not names:
        return "no stage"
    part = done - k
    return (f"{1 - part:.0%} of {names[0]}" if part > 0 else names[0]) + \
        "".join(f", {n}" for n in names[1:])


class _AuditWork:
    """An audit's progress counted in attack passes (images x iterations), so that a stage's
    share of the count is its share of the work: APGD-T's nine targets weigh nine times
    APGD-CE, and the time left does not rise when the cascade reaches a heavier stage. The
    indicator checks weigh as two APGD-CE stages (twice the iterations on the survivors, and
    the short probes)."""

    def __init__(self, plan: list, n: int) -> None:
        self.n = n
        self.weights = [max(s.attack.gradients_per_image(), 1) for s in plan]
        self.cascade = n * sum(self.weights)
        self.total = self.cascade + 2 * n * self.weights[0]

    def at(self, done: int) -> int:
        """Passes behind ``done`` image-stages of the cascade."""
        k, rest = divmod(done, self.n) if self.n else (0, 0)
        return self.n * sum(self.weights[:k]) + (rest * self.weights[k] if k < len(
            self.weights) else 0)

    def checking(self, fraction: float) -> int:
        """Passes behind a ``fraction`` of the indicator checks."""
        return self.cascade + round(fraction * (self.total - self.cascade))


def _continuing(state: dict, names: list[str], batches: int) -> str:
    """Where a resumed cascade picks up, in words."""
    if state["stage"] >= len(names):
        return "the cascade finished before the stop; only the indicators are left"
    return (f"continuing with {names[state['stage']]}, batch {state['batch'] + 1} of {batches} "
            "(the finished batches are kept in the run's folder)")


def _cascade_done(saved, n: int, batch_size: int) -> int:
    """Images times stages already behind a saved cascade (for the progress count)."""
    if saved is None:
        return 0
    return saved[1]["stage"] * n + min(saved[1]["batch"] * batch_size, n)
