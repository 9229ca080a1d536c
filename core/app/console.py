"""What the command line prints: running a spec in the foreground (under torchrun too), the
outcome of each kind of job, and the run table. Progress goes to stderr, results to stdout."""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time

from core.cancellation import Cancelled
from core.confidence import success_text, text
from core.paths import InputError, run_dir, runs_root
from core.jobs.specs import Spec, spec_from_config
from core.jobs.store import Run, RunStore

ERROR_WIDTH = 70
SHARDED = ("train", "evaluate", "attack", "sweep", "audit", "curve")


def run_job(spec: Spec, name: str | None = None) -> int:
    """Create the spec's run (rank 0 checks it; bad input stops every rank with one line),
    execute it here under the one runner, and print its outcome."""
    from core import distributed
    from core.jobs import runner

    ctx = distributed.init(spec.device)
    try:
        store = RunStore() if ctx.is_main else None
        where = f" on {ctx.world} processes" if ctx.world > 1 else ""

        def plan() -> str:
            if ctx.world > 1 and spec.kind not in SHARDED:
                raise InputError(f"{spec.kind} jobs do not run under torchrun yet; run them in "
                                 f"one process (valid under torchrun: {', '.join(SHARDED)})")
            run_id = runner.create(store, spec, name=name)
            print(f"run {run_id}: {spec.describe()}{where}", flush=True)
            return run_id

        run_id = distributed.decide(ctx, plan)
        if not ctx.is_main:
            return _follow(spec)
        return _execute_and_print(store, run_id, resume=False)
    finally:
        distributed.shutdown()


def run_import(spec: Spec, name: str | None = None, dry_run: bool = False) -> int:
    """``import``: the model is read and checked here, so a refusal is one line before any run
    exists; then the import job stores it (or, with ``dry_run``, its clean accuracy is
    printed and nothing is stored)."""
    from core import data, imported
    from core.jobs import runner

    split = data.load(spec.dataset, "test", spec.data_dir)
    examined = imported.examine(spec, split)
    if not dry_run:
        runner.clean_name(name)
        return run_job(spec, name=name)
    for line in examined.lines:
        print(f"  {line}", file=sys.stderr)
    from core.evaluation import clean_accuracy

    acc, n, high = clean_accuracy(examined.model, split.subset(spec.n_check, spec.seed))
    print(f"clean accuracy {text(acc, n)} on {n:,} test images ({split.source}); dry run: "
          "nothing stored")
    if imported.near_chance(acc, high, len(split.classes)):
        print(f"  {imported.chance_line(acc, len(split.classes))}")
    return 0


def run_resume(run_id: str, overrides: dict | None = None) -> int:
    """``train --resume RUN`` and ``resume RUN`` (under torchrun too)."""
    from core import distributed
    from core.jobs import runner

    ctx = distributed.init((overrides or {}).get("device", "auto"))
    try:
        store = RunStore() if ctx.is_main else None

        def plan() -> dict:
            run = runner.reopen(store, run_id)
            where = f" on {ctx.world} processes" if ctx.world > 1 else ""
            start = {"train": "from its last checkpoint", "audit": "from its finished batches",
                     "sweep": "from its finished batches", "curve": "from its finished batches",
                     "grid": "from its finished points"}.get(run.kind,
                                                             "reusing its finished child jobs")
            print(f"resuming {run_id} {start}{where}", flush=True)
            return {"kind": run.kind, "config": run.config}

        job = distributed.decide(ctx, plan)
        if not ctx.is_main:
            return _follow(spec_from_config(job["kind"], job["config"]), resume=True)
        return _execute_and_print(store, run_id, resume=True)
    finally:
        distributed.shutdown()


def _follow(spec: Spec, resume: bool = False) -> int:
    from core.jobs import runner

    try:
        if resume and spec.kind == "train":
            from core.training.loop import fit

            fit(spec, None, None, resume=True)
        else:
            runner.follow(spec)
    except Cancelled:  # rank 0 reports it; every rank stopped at the same step
        return 1
    return 0


def _execute_and_print(store: RunStore, run_id: str, resume: bool) -> int:
    from core.jobs import runner

    try:
        summary = runner.execute(store, run_id, resume=resume)
    except Cancelled:
        run = store.get(run_id)
        print(f"run {run_id} {run.error}", file=sys.stderr)
        return 130
    run = store.get(run_id)
    PRINTERS[run.kind](store, run, summary)
    for warning in run.warnings:
        print(f"  warning: {warning}")
    return 0


def _print_train(store: RunStore, run: Run, s: dict) -> None:
    final = s["final"]
    print(f"run {run.id} completed: test accuracy {text(final['test_acc'], s['n_test'])} on "
          f"{s['n_test']:,} test images ({s.get('test_source') or s['dataset_source']})")
    if "robust_acc" in final:
        print(f"  the guard's held-out robust accuracy (L-inf eps {final['robust_eps']}) "
              f"{text(final['robust_acc'], s['n_held_out'])} on {s['n_held_out']:,} held-out "
              "training images")
    print(f"  weights: {run_dir(run.id) / 'model.safetensors'}")


def _print_evaluate(store: RunStore, run: Run, s: dict) -> None:
    import pandas as pd

    print(f"evaluation {run.id} of {s['model_run']} on {s['n']:,} {s['split']} images "
          f"({s['source']})")
    print(f"  accuracy {text(s['accuracy'], s['n'])}   micro-F1 {s['micro_f1']:.2%}   macro-F1 "
          f"{s['macro_f1']:.2%}   (micro-F1 equals accuracy for single-label data)")
    print(pd.DataFrame(s["per_class"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("confusion matrix (rows: true, columns: predicted):")
    print(pd.DataFrame(s["confusion"], index=s["classes"], columns=s["classes"]).to_string())
    folder = run_dir(run.id)
    print(f"  {s['n_misclassified']} misclassified; files: {folder / 'evaluation.json'}, "
          f"{folder / 'confusion.png'}, {folder / 'mistakes.png'}")


def _print_attack(store: RunStore, run: Run, s: dict) -> None:
    print(f"attack {run.id}: {s['attack']} ({s['threat_label']}) on {s['n']:,} test images of "
          f"{s['model_run']}")
    print(f"  clean accuracy {text(s['clean_acc'], s['n'])}  ->  robust accuracy "
          f"{text(s['adv_acc'], s['n'])} (correct before and after the attack; 95% intervals)"
          f"   success rate {success_text(s['success_rate'], s['clean_acc'], s['n'])}")
    if s["l2_mean"] is None:
        print("  no example flipped, so no perturbation size to report")
    else:
        print(f"  perturbation of flipped examples: L2 mean {s['l2_mean']:.4f} median "
              f"{s['l2_median']:.4f}; L-inf mean {s['linf_mean']:.4f}")
    folder = run_dir(run.id)
    print(f"  files: {folder / 'summary.json'}, {folder / 'records.csv'}, "
          f"{folder / 'examples.png'}")


def _print_sweep(store: RunStore, run: Run, s: dict) -> None:
    import pandas as pd

    from core.reports import markdown, table_frame

    print(f"sweep {run.id} of {s['model_run']} on {s['n']:,} test images ({s['source']})")
    print(markdown(table_frame(s["rows"])))
    if s["worst_case"]:
        print("worst case over attacks, per threat model:")
        print(markdown(pd.DataFrame(s["worst_case"])))
    print(f"saved {run_dir(run.id) / 'sweep.csv'} and sweep.md")


def _print_reproduce(store: RunStore, run: Run, s: dict) -> None:
    print(f"report written to {s['report']}")


def _print_study(store: RunStore, run: Run, s: dict) -> None:
    from pathlib import Path

    print(Path(s["report"]).read_text(), end="")
    print(f"report written to {s['report']}")


def _print_audit(store: RunStore, run: Run, s: dict) -> None:
    import pandas as pd

    from core.reports import markdown

    print(f"audit {run.id} of {s['model_run']}: {s['threat_label']}, {s['version']} version, "
          f"{s['n']:,} test images ({s['source']})")
    rows = [{"stage": "clean", "robust accuracy (95% interval)": text(s["clean_acc"], s["n"]),
             "seconds": "—"}]
    rows += [{"stage": r["attack"], "robust accuracy (95% interval)": text(r["robust_acc"],
                                                                           s["n"]),
              "seconds": f"{r['seconds']:.1f}"} for r in s["stages"]]
    print(markdown(pd.DataFrame(rows)))
    for stage, loss in s.get("losses", {}).items():
        if not loss.startswith("dlr") and stage != "apgd-ce":
            print(f"  {stage} used the {loss} loss: DLR needs at least 4 classes")
    print(f"robust accuracy {text(s['robust_acc'], s['n'])} on {s['n']:,} images; verdict: "
          f"{s['verdict']}")
    for c in s["indicators"]:
        print(f"  [{c['status']:4s}] {c['name']}: {c['detail']}")
    folder = run_dir(run.id)
    print(f"  files: {folder / 'audit.json'}, {folder / 'audit.csv'}, {folder / 'audit.md'}")


def _print_curve(store: RunStore, run: Run, s: dict) -> None:
    from core.curve import RobustnessCurve

    curve = RobustnessCurve.of(s["norm"], [float("inf") if v is None else v for v in s["norms"]])
    median = "above every norm found" if s["median_norm"] is None else f"{s['median_norm']:.4g}"
    names = {"fmn": "FMN", "fab": "FAB", "clean": "misclassified already",
             "apgd-ce": "the APGD-CE check", "apgd-t": "the APGD-T check",
             "stored": "an example an audit or curve of these weights kept"}
    found = ", ".join(f"{names.get(k, k)} {v:,}" for k, v in s["found_by"].items() if v)
    print(f"{s['norm']} robustness curve on {s['n']:,} test images: clean "
          f"{text(curve.clean_accuracy(), curve.n)}, median smallest norm {median}; "
          f"{s['never_broken']:,} never broken; smallest norms found by {found or 'none'}")
    if s.get("started_from"):
        print(f"  started from the adversarial examples kept by {', '.join(s['started_from'])}")
    if s.get("checked_at"):
        print("  checked with the fast audit's APGD-CE and APGD-T at "
              + ", ".join(f"{b:.4g}" for b in s["checked_at"]))
    if s.get("researched_in_float32"):
        print(f"  {s['researched_in_float32']:,} boundary points searched again in float32")
    budgets, why = curve_budgets(store, run, s)
    print(f"  robust accuracy at {why}:")
    for eps in budgets:
        label = f"{eps:.4g}" + (f" ({eps * 255:.3g}/255)" if s["norm"] == "linf" else "")
        print(f"  eps {label:<16} {text(curve.accuracy(eps), curve.n)}")
    folder = run_dir(run.id)
    print(f"  files: {folder / 'curve.json'}, {folder / 'curve.csv'}, {folder / 'curve.png'}")


def curve_budgets(store: RunStore, run: Run, s: dict) -> tuple[list[float], str]:
    """The budgets a curve's figures are printed at, and why those: the user's --at, else the
    model's audits in this norm, else five even steps up to the largest norm found."""
    if run.config.get("at"):
        return sorted(run.config["at"]), "the budgets asked for (--at)"
    from core.jobs.known import audited_budgets

    audits = audited_budgets(store, run.config["model_run"], s["norm"])
    if audits:
        return audits, "the budgets of this model's audits"
    top = max((v for v in s["norms"] if v is not None and v != float("inf")), default=0.0)
    return sorted({round(top * k / 5, 4) for k in range(1, 6)}), \
        "five even steps up to the largest norm found (audit the model, or pass --at)"


def _curve_headline(s: dict) -> str:
    median = "∞" if s.get("median_norm") is None else f"{s['median_norm']:.4g}"
    return (f"{s['norm']} curve: clean {text(s['clean_acc'], s['n'])}, median smallest norm "
            f"{median} (n={s['n']})")


def _print_import(store: RunStore, run: Run, s: dict) -> None:
    print(f"run {run.id} imported: {s['arch']} ({s['format']}), clean accuracy "
          f"{text(s['clean_acc'], s['n'])} on {s['n']:,} test images ({s['n_test_source']})")
    print(f"  file sha256 {s['file_sha256']}")
    print(f"  weights: {run_dir(run.id) / 'model.safetensors'}; next: python -m core audit "
          f"{run.id} --norm linf --eps EPS")


PRINTERS = {"import": _print_import, "train": _print_train, "evaluate": _print_evaluate, "attack": _print_attack,
            "sweep": _print_sweep, "reproduce": _print_reproduce, "audit": _print_audit,
            "study": _print_study, "curve": _print_curve,
            "grid": lambda store, run, s: print(f"grid {run.id} completed")}


def headline(run: Run) -> str:
    """A short result string for a run (accuracy, or the failure)."""
    s = run.summary or {}
    if run.status in ("failed", "cancelled"):
        return run.error or run.status
    if run.kind == "train" and s.get("final"):
        line = (f"test acc {text(s['final']['test_acc'], s.get('n_test') or 0)} "
                f"(n={s.get('n_test')})")
        if "robust_acc" in s["final"]:
            line += (f", held-out robust {text(s['final']['robust_acc'], s.get('n_held_out') or 0)}"
                     f" (n={s.get('n_held_out')})")
        return line
    if run.kind == "import" and "clean_acc" in s:
        flags = f", flagged: {', '.join(s['flags'])}" if s.get("flags") else ""
        return f"imported {s['arch']}: clean {text(s['clean_acc'], s['n'])} (n={s['n']}{flags})"
    if run.kind == "evaluate" and "accuracy" in s:
        return f"acc {text(s['accuracy'], s['n'])}, macro-F1 {s['macro_f1']:.2%} (n={s['n']})"
    if run.kind == "attack" and "adv_acc" in s:
        return (f"{s['attack']} {s.get('threat_label', '')}: {text(s['clean_acc'], s['n'])} -> "
                f"{text(s['adv_acc'], s['n'])} (n={s['n']})")
    if run.kind == "audit" and "robust_acc" in s:
        return (f"{s['threat_label']} {s['version']}: {text(s['clean_acc'], s['n'])} -> "
                f"{text(s['robust_acc'], s['n'])} (n={s['n']}, {s['verdict']})")
    if run.kind == "sweep" and s.get("rows"):
        return f"{len(s['rows'])} rows (n={s['n']})"
    if run.kind == "curve" and "norms" in s:
        return _curve_headline(s)
    if run.kind == "study" and s.get("rows"):
        return f"{len(s['rows'])} models audited; {s['report']}"
    return ""


def _shorten(text: str, full: bool) -> str:
    if full or len(text) <= ERROR_WIDTH:
        return text
    return textwrap.shorten(text, ERROR_WIDTH, placeholder=" … (show RUN)")


def cmd_runs(args: argparse.Namespace) -> int:
    """``runs``: a table of runs, newest first (stale workers are marked failed first)."""
    import pandas as pd

    store = RunStore()
    store.mark_stale()
    rows = [{"id": r.id, "kind": r.kind, "status": r.status, "name": r.name or "",
             "tags": ",".join(r.tags), "parent": r.parent or "",
             "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created)),
             "seconds": round(r.duration or 0), "result": _shorten(headline(r), args.full)}
            for r in store.list_runs(kind=args.kind)
            if not args.tag or args.tag.strip().lower() in r.tags]
    if not rows:
        print(f"no runs tagged {args.tag!r}" if args.tag else
              "no runs yet; start one with `python -m core train --dataset mnist`")
        return 0
    with pd.option_context("display.max_colwidth", None, "display.width", 250):
        print(pd.DataFrame(rows).to_string(index=False))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``show RUN``: status, full error, warnings, config, summary and files of one run."""
    store = RunStore()
    store.mark_stale()
    run = store.get(args.run)
    print(f"run {run.id} ({run.kind}{', ' + run.name if run.name else ''}): {run.status}"
          + (f", parent {run.parent}" if run.parent else ""))
    if run.tags:
        print(f"  tags: {', '.join(run.tags)}")
    if run.error:
        print(f"  {run.error}")
    for w in run.warnings:
        print(f"  warning: {w}")
    if headline(run) and run.status == "completed":
        print(f"  result: {headline(run)}")
    print("config:\n" + textwrap.indent(json.dumps(run.config, indent=2), "  "))
    folder = runs_root() / run.id  # not run_dir: reading a run must not make its folder
    files = sorted(p.name for p in folder.iterdir() if not p.name.endswith(".tmp")) \
        if folder.is_dir() else []
    print(f"files in {folder}: {', '.join(files) or 'none'}")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    """``card RUN``: card.json and card.md of a model's audit."""
    from pathlib import Path

    from core.jobs import card
    from core.threat import ThreatModel, standard_threat

    store = RunStore()
    model = store.get(args.run)
    threat = None
    if args.norm or args.eps is not None:
        norm = args.norm or "linf"
        eps = args.eps if args.eps is not None else \
            standard_threat(model.config.get("dataset", "cifar10"), norm).eps
        threat = ThreatModel(norm, eps)
    fields = {k: getattr(args, k) for k in ("name", "link", "authors", "venue", "architecture",
                                           "footnote", "external", "reported")}
    fields["additional_data"] = args.additional_data or None
    built = card.build(store, args.run, args.audit, threat, fields)
    folder = Path(args.out) if args.out else run_dir(built["robustlab"]["audit_run"])
    json_path, md_path = card.write(built, folder)
    lab = built["robustlab"]
    print(f"card of {args.run}: {built['autoattack_acc']}% robust at {lab['threat']} "
          f"({lab['cascade']['version']} audit {lab['audit_run']}, "
          f"{lab['images']['n_examples']:,} images), clean {built['clean_acc']}%"
          + ("; unreliable: an indicator failed" if built["unreliable"] else ""))
    print(f"  {json_path}\n  {md_path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """``verify CARD.json``: re-run the claim; exit 0 when it holds, 1 when it does not."""
    from core.jobs import verification

    card = verification.read_card(args.card)
    if not args.weights and not args.model_run:
        raise InputError("give the weights to verify: --weights FILE or --run RUN")
    store = RunStore()
    outcome = verification.verify(store, card, args.weights, args.model_run, args.n,
                                  device=args.device or "auto",
                                  say=lambda line: print(line, file=sys.stderr))
    for verdict in outcome.verdicts:
        print(f"{verdict.figure}: {verdict.text}")
    if outcome.audit_run is None:
        print("the claim cannot be checked here: nothing was re-run")
    else:
        print(f"the claim {'holds' if outcome.holds else 'does not hold'} (audit "
              f"{outcome.audit_run} of {outcome.model_run})")
    return 0 if outcome.holds else 1


def cmd_export(args: argparse.Namespace) -> int:
    """``export RUN --tensorboard DIR``: the run as TensorBoard event files."""
    from core.jobs.export import export

    folder, tags = export(RunStore(), args.run, args.tensorboard)
    print(f"{len(tags)} tags of {args.run} written to {folder}: {', '.join(tags[:8])}"
          + (f" and {len(tags) - 8} more" if len(tags) > 8 else ""))
    print(f"  view them: tensorboard --logdir {args.tensorboard}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """``cancel RUN``: stop a queued or running job; a finished one is left as it is."""
    store = RunStore()
    store.mark_stale()
    if store.request_cancel(args.run):
        print(f"cancel requested for {args.run}; it stops within a few seconds")
        return 0
    run = store.get(args.run)
    print(f"run {args.run} has already finished ({run.status}); nothing to cancel")
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    """``rename RUN NAME``: name a run (an empty name clears it)."""
    RunStore().rename(args.run, args.new_name)
    print(f"run {args.run} is now named {args.new_name.strip()!r}" if args.new_name.strip()
          else f"run {args.run} has no name now")
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    """``tag RUN [TAG ...]``: replace a run's tags."""
    tags = RunStore().set_tags(args.run, args.tags)
    print(f"run {args.run} tags: {', '.join(tags) or 'none'}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """``delete RUN``: remove a finished run, the runs that belong to it, and their files."""
    store = RunStore()
    store.mark_stale()
    run = store.get(args.run)  # a running run is refused here, before torch loads
    if run.status in ("queued", "running"):
        raise InputError(f"run {run.id} is {run.status}; cancel it before deleting it "
                         f"(python -m core cancel {run.id})")
    from core.jobs.runner import delete_run

    ids = delete_run(store, args.run)
    print(f"deleted {len(ids)} run(s): {', '.join(ids)}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """``resume RUN``: continue a failed or cancelled training run from its checkpoint."""
    return run_resume(args.run)

