"""The CLI's subcommands: each creates a run, executes it in this process and prints results."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

import pandas as pd

from .attacks import build_attack
from .cli import attack_params, sweep_attacks, train_config
from .jobs import run_job
from .paths import InputError, run_dir
from .store import RunStore
from . import distributed
from .tasks import follow, model_path
from .training import Cancelled, TrainConfig, fit, pick_device


def _execute(store: RunStore, run_id: str, resume: bool = False) -> dict | None:
    try:
        return run_job(store, run_id, resume=resume, progress=True)
    except Cancelled:
        print(f"run {run_id} cancelled; continue it with `python -m core resume {run_id}`",
              file=sys.stderr)
        return None


def train(args: argparse.Namespace) -> int:
    """``train``: validate, create (or reopen) the run, train in the foreground, print the
    outcome. Under torchrun rank 0 checks the input and writes the run; every rank trains its
    shard with DistributedDataParallel."""
    ctx = distributed.init(args.device)
    try:
        store = RunStore() if ctx.is_main else None
        where = f" on {ctx.world} processes" if ctx.world > 1 else ""

        def plan() -> tuple[str, dict]:
            if args.resume:
                _reopen(store, args.resume)
                print(f"resuming {args.resume} from its last checkpoint{where}")
                return args.resume, store.get(args.resume).config
            cfg = TrainConfig.from_dict(train_config(args))
            run_id = store.create_run("train", cfg.to_dict(), name=args.name)
            print(f"run {run_id}: training {cfg.model} on {cfg.dataset} for {cfg.epochs} "
                  f"epoch(s){where}")
            return run_id, cfg.to_dict()

        run_id, config = distributed.decide(ctx, plan)
        if ctx.is_main:
            return _report_training(store, run_id,
                                    _execute(store, run_id, resume=bool(args.resume)))
        try:
            fit(TrainConfig.from_dict(config), None, run_id, resume=bool(args.resume),
                progress=False)
        except Cancelled:  # rank 0 reports it; every rank stopped at the same step
            return 1
        return 0
    finally:
        distributed.shutdown()


def resume(args: argparse.Namespace) -> int:
    """``resume RUN``: continue a failed or cancelled training run from its last checkpoint."""
    return _resume(RunStore(), args.run)


def _reopen(store: RunStore, run_id: str) -> None:
    """Check that a training run can be resumed and queue it again (which also clears the
    cancel request that stopped it, or it would stop again at its first step)."""
    store.mark_stale()  # a worker that died without a word is failed, hence resumable
    run = store.get(run_id)
    if run.kind != "train" or run.status in ("completed", "running"):
        raise InputError(f"run {run_id} is a {run.status} {run.kind} run; only failed or "
                         "cancelled training runs can be resumed")
    if not (run_dir(run_id) / "checkpoint.safetensors").exists():
        raise InputError(f"run {run_id} has no checkpoint to resume from")
    store.set_status(run_id, "queued")


def _resume(store: RunStore, run_id: str) -> int:
    _reopen(store, run_id)
    print(f"resuming {run_id} from its last checkpoint")
    return _report_training(store, run_id, _execute(store, run_id, resume=True))


def _report_training(store: RunStore, run_id: str, summary: dict | None) -> int:
    if summary is None:
        return 1
    final = summary["final"]
    print(f"run {run_id} completed: test accuracy {final['test_acc']:.2%} on "
          f"{summary['n_test']:,} test images ({summary['dataset_source']})")
    if "robust_acc" in final:
        print(f"  held-out PGD (eps {final['robust_eps']}) accuracy {final['robust_acc']:.2%} on "
              f"{summary['n_held_out']:,} held-out training images")
    for warning in store.get(run_id).warnings:
        print(f"  warning: {warning}")
    print(f"  weights: {run_dir(run_id) / 'model.safetensors'}")
    return 0


def _job(args: argparse.Namespace, kind: str, plan: Callable[[RunStore], dict],
         report: Callable[[RunStore, str, dict], int]) -> int:
    """Validate with ``plan`` (which returns the run's config), create the run, execute it here
    and print it with ``report``. Under torchrun every rank computes its shard of the examples
    and rank 0 alone creates, writes and prints the run (one process is rank 0 of 1)."""
    ctx = distributed.init(args.device)
    try:
        store = RunStore() if ctx.is_main else None

        def create() -> tuple[str, dict]:
            config = plan(store)
            return store.create_run(kind, config, parent=args.run), config

        run_id, config = distributed.decide(ctx, create)
        if not ctx.is_main:
            follow(kind, config)
            return 0
        summary = _execute(store, run_id)
        return 1 if summary is None else report(store, run_id, summary)
    finally:
        distributed.shutdown()


def _model_config(store: RunStore, args: argparse.Namespace) -> dict:
    """The part of a job's config that names the model, after checking it exists."""
    model_path(store, args.run, args.which)
    pick_device(args.device)
    return {"model_run": args.run, "which": args.which, "data_dir": args.data_dir,
            "device": args.device}


def evaluate(args: argparse.Namespace) -> int:
    """``evaluate RUN``: clean metrics, per-class table, confusion matrix, misclassified grid."""
    def plan(store: RunStore) -> dict:
        return dict(_model_config(store, args), split=args.split, n=args.n)

    return _job(args, "evaluate", plan, lambda store, run_id, s: _print_evaluation(
        run_id, args, s))


def _print_evaluation(run_id: str, args: argparse.Namespace, s: dict) -> int:
    print(f"evaluation {run_id} of {args.run} on {s['n']:,} {args.split} images ({s['source']})")
    print(f"  accuracy {s['accuracy']:.2%}   micro-F1 {s['micro_f1']:.2%}   "
          f"macro-F1 {s['macro_f1']:.2%}   (micro-F1 equals accuracy for single-label data)")
    print(pd.DataFrame(s["per_class"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("confusion matrix (rows: true, columns: predicted):")
    print(pd.DataFrame(s["confusion"], index=s["classes"], columns=s["classes"]).to_string())
    folder = run_dir(run_id)
    print(f"  {s['n_misclassified']} misclassified; report {folder / 'evaluation.json'}, "
          f"grid {folder / 'misclassified.png'}")
    return 0


def attack(args: argparse.Namespace) -> int:
    """``attack RUN``: one attack on a test sample; prints accuracy, success rate, norms."""
    atk = build_attack(args.attack, **attack_params(args))

    def plan(store: RunStore) -> dict:
        return dict(_model_config(store, args), attack=args.attack, params=atk.params(),
                    n=args.n, seed=args.seed)

    def report(store: RunStore, run_id: str, s: dict) -> int:
        print(f"attack {run_id}: {args.attack} {atk.params()} on {s['n']:,} test images")
        print(f"  clean accuracy {s['clean_acc']:.2%}  ->  under attack {s['adv_acc']:.2%}   "
              f"success rate {s['success_rate']:.2%}")
        print(f"  perturbation of flipped examples: L2 mean {s['l2_mean']:.4f} median "
              f"{s['l2_median']:.4f}; L-inf mean {s['linf_mean']:.4f}")
        for warning in store.get(run_id).warnings:
            print(f"  warning: {warning}")
        print(f"  records {run_dir(run_id) / 'records.csv'}")
        return 0

    return _job(args, "attack", plan, report)


def sweep(args: argparse.Namespace) -> int:
    """``sweep RUN``: attacks over a grid of budgets, printed as the attack table and saved."""
    specs = sweep_attacks(args)
    for spec in specs:
        build_attack(spec["name"], **spec["params"])
    bad = [e for e in args.eps if not 0 <= e <= 1]
    if bad:
        raise InputError(f"budgets must lie in [0, 1] (pixel units), got {bad}")

    def plan(store: RunStore) -> dict:
        return dict(_model_config(store, args), attacks=specs, budgets=args.eps, n=args.n,
                    seed=args.seed)

    return _job(args, "sweep", plan, lambda store, run_id, s: _print_sweep(run_id, args, s))


def _print_sweep(run_id: str, args: argparse.Namespace, s: dict) -> int:
    from .tasks import table_frame

    print(f"sweep {run_id} of {args.run} on {s['n']:,} test images ({s['source']})")
    print(table_frame(s["rows"]).to_markdown(index=False, floatfmt=".4f"))
    print("worst case over attacks per budget:")
    print(pd.DataFrame(s["worst_case"]).to_markdown(index=False, floatfmt=".4f"))
    for warning in s["warnings"]:
        print(f"warning: {warning}")
    print(f"saved {run_dir(run_id) / 'sweep.csv'} and sweep.md")
    return 0


def runs(args: argparse.Namespace) -> int:
    """``runs``: a table of runs, newest first (stale workers are marked failed first)."""
    store = RunStore()
    store.mark_stale()
    rows = []
    for r in store.list_runs(kind=args.kind):
        rows.append({"id": r.id, "kind": r.kind, "status": r.status, "parent": r.parent or "",
                     "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created)),
                     "seconds": round(r.duration or 0), "result": headline(r)})
    if not rows:
        print("no runs yet; start one with `python -m core train --dataset mnist`")
        return 0
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def headline(run) -> str:
    """A short result string for a run (accuracy, or the failure)."""
    s = run.summary or {}
    if run.status == "failed":
        return (run.error or "")[:60]
    if run.kind == "train" and s.get("final"):
        text = f"test acc {s['final']['test_acc']:.2%} (n={s.get('n_test')})"
        if "robust_acc" in s["final"]:
            text += f", held-out PGD {s['final']['robust_acc']:.2%}"
        return text
    if run.kind == "evaluate" and "accuracy" in s:
        return f"acc {s['accuracy']:.2%}, macro-F1 {s['macro_f1']:.2%}"
    if run.kind == "attack" and "adv_acc" in s:
        return f"{s['attack']}: {s['clean_acc']:.2%} -> {s['adv_acc']:.2%}"
    if run.kind == "sweep" and s.get("rows"):
        return f"{len(s['rows'])} rows"
    return ""


def cancel(args: argparse.Namespace) -> int:
    """``cancel RUN``: ask a running job to stop at its next step."""
    RunStore().request_cancel(args.run)
    print(f"cancel requested for {args.run}")
    return 0


def reproduce(args: argparse.Namespace) -> int:
    """``reproduce``: the whole seed study into artifacts/reports/."""
    store = RunStore()
    run_id = store.create_run("reproduce", {"quick": args.quick, "data_dir": args.data_dir})
    s = _execute(store, run_id)
    if s is None:
        return 1
    print(f"report written to {s['report']}")
    return 0
