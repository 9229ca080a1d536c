"""Command line: ``python -m core {train,evaluate,attack,sweep,runs,cancel,resume,reproduce}``."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

from .paths import InputError

EXAMPLES = """examples:
  python -m core train --dataset mnist --epochs 5
  python -m core train --dataset cifar10 --epochs 10 --lr 0.2 --batch-size 128
  python -m core train --dataset mnist --defense iat --eps 0.2 --defense-steps 10
  python -m core evaluate RUN
  python -m core attack RUN --attack pgd --eps 0.1 --steps 40
  python -m core sweep RUN --attacks noise,fgsm,pgd --eps 0,0.01,0.05,0.1,0.2,0.3
  python -m core runs
  python -m core reproduce --quick
"""


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def _kv(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        return key.replace("-", "_"), json.loads(raw)
    except json.JSONDecodeError:
        return key.replace("-", "_"), raw


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="python -m core", description="RobustLab: train image classifiers and measure how "
        "easily adversarial attacks fool them.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="data root (default: $ROBUSTLAB_DATA or artifacts/data)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub)
    p = sub.add_parser("evaluate", help="clean metrics, confusion matrix, misclassified examples")
    p.add_argument("run", help="training run id")
    p.add_argument("--which", choices=("final", "best"), default="final",
                   help="final weights, or best by robust accuracy (defended runs)")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("-n", type=int, default=None, help="evaluate on a subset of N examples")
    _device_option(p)
    _attack_parser(sub)
    _sweep_parser(sub)
    p = sub.add_parser("runs", help="table of runs")
    p.add_argument("--kind", help="only runs of this kind (train, evaluate, attack, sweep, ...)")
    p = sub.add_parser("cancel", help="ask a running job to stop")
    p.add_argument("run")
    p = sub.add_parser("resume", help="continue a failed or cancelled training run (foreground)")
    p.add_argument("run")
    p = sub.add_parser("reproduce", help="regenerate the whole seed study into artifacts/reports")
    p.add_argument("--quick", action="store_true", help="small subsets, a few minutes")
    p = sub.add_parser("worker", help=argparse.SUPPRESS)
    p.add_argument("run")
    p.add_argument("--resume", action="store_true")
    return parser


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model (foreground, with a progress bar)")
    p.add_argument("--dataset", default="mnist", help="mnist, cifar10 or imagefolder:PATH")
    p.add_argument("--model", default="seed-resnet", help="seed-resnet or resnet20")
    p.add_argument("--width", type=int, help="seed-resnet channel width (default 16)")
    p.add_argument("--blocks", type=int, help="seed-resnet residual blocks (default 3)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", default="sgd", help="sgd, nesterov or adam")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="onecycle", help="onecycle, cosine or constant")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=int, help="train on N examples")
    p.add_argument("--test-subset", type=int, help="evaluate on N test examples")
    p.add_argument("--no-augment", action="store_true", help="no crop/flip (CIFAR-10)")
    p.add_argument("--defense", default="none",
                   help="none, fgsm-at, fast-at, pgd-at, trades or iat")
    p.add_argument("--eps", type=float, help="defense budget in pixel units (e.g. 0.3, 8/255=0.031)")
    p.add_argument("--defense-steps", type=int, help="attack steps inside the defense")
    p.add_argument("--defense-param", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="other defense parameter, e.g. beta=6 (trades), alpha=1 (iat)")
    p.add_argument("--eps-ramp", type=int, help="grow eps linearly over the first N epochs")
    p.add_argument("--robust-eps", type=float, help="eps of the per-epoch PGD check")
    _device_option(p)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="bf16 autocast for training (auto: on GPU only; attacks stay fp32)")
    p.add_argument("--name", help="a label for the run")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint")


def _attack_parser(sub) -> None:
    p = sub.add_parser("attack", help="attack a trained model on a test sample")
    p.add_argument("run", help="training run id")
    p.add_argument("--attack", required=True, help="noise, fgsm, pgd, semantic or cw")
    p.add_argument("--eps", type=float, help="L-inf (or L2) budget in pixel units")
    p.add_argument("--sigma", type=float, help="noise standard deviation")
    p.add_argument("--steps", type=int, help="iterations (pgd, cw)")
    p.add_argument("--param", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="other attack parameter, e.g. norm=l2, restarts=5, mode=hsv")
    p.add_argument("-n", type=int, default=1000, help="test examples to attack (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="which sample of the test split")
    p.add_argument("--which", choices=("final", "best"), default="final")
    _device_option(p)


def _sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="several attacks over a grid of budgets (the attack table)")
    p.add_argument("run", help="training run id")
    p.add_argument("--attacks", default="noise,fgsm,pgd", help="comma-separated attack names")
    p.add_argument("--eps", type=_floats, default=[0, 0.01, 0.05, 0.1, 0.2, 0.3],
                   help="comma-separated budgets (sigma for noise)")
    p.add_argument("--steps", type=int, default=40, help="PGD steps (default 40)")
    p.add_argument("--cw-steps", type=int, default=100, help="CW iterations per search step")
    p.add_argument("-n", type=int, default=1000, help="test examples (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--which", choices=("final", "best"), default="final")
    _device_option(p)


def _device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available), cpu, cuda or cuda:N; under torchrun each "
                   "rank uses its local GPU")


def train_config(args: argparse.Namespace) -> dict:
    """The TrainConfig dict for ``train`` arguments."""
    model_args = {k: getattr(args, k) for k in ("width", "blocks") if getattr(args, k)}
    defense_args = dict(args.defense_param)
    if args.eps is not None:
        defense_args["eps"] = args.eps
    if args.defense_steps is not None:
        defense_args["steps"] = args.defense_steps
    if args.eps_ramp:
        defense_args["eps_ramp_epochs"] = args.eps_ramp
    return {"dataset": args.dataset, "model": args.model, "model_args": model_args,
            "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer,
            "lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay,
            "schedule": args.schedule, "label_smoothing": args.label_smoothing,
            "seed": args.seed, "train_subset": args.train_subset,
            "test_subset": args.test_subset, "augment": False if args.no_augment else None,
            "defense": args.defense, "defense_args": defense_args,
            "robust_eval": {"eps": args.robust_eps} if args.robust_eps is not None else {},
            "data_dir": args.data_dir, "device": args.device, "precision": args.precision}


def attack_params(args: argparse.Namespace) -> dict:
    """Attack parameters from ``attack`` arguments."""
    params = dict(args.param)
    for key in ("eps", "sigma", "steps"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    return params


def sweep_attacks(args: argparse.Namespace) -> list[dict]:
    """Attack specs of a sweep, with the study's settings for PGD and CW."""
    from .attacks import ATTACKS

    specs = []
    for name in [a.strip() for a in args.attacks.split(",") if a.strip()]:
        if name not in ATTACKS:
            raise InputError(f"unknown attack {name!r}; valid attacks: {', '.join(ATTACKS)}")
        params: dict = {}
        if name == "pgd":
            params = {"steps": args.steps}
        elif name == "cw":
            params = {"steps": args.cw_steps}
        specs.append({"name": name, "params": params})
    return specs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (2 with one clear message on bad input)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        from .jobs import worker_main

        return worker_main(args.run, args.resume)
    try:
        return _dispatch(args)
    except InputError as err:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank has the error
            print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from . import commands

    return getattr(commands, args.command)(args)


if __name__ == "__main__":
    sys.exit(main())
