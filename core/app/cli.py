"""Command line: ``python -m core COMMAND``. Parses arguments into a job spec (every default
lives in :mod:`core.jobs.specs`), hands it to :mod:`core.jobs.runner`, and prints the outcome with
:mod:`core.app.console`. Nothing heavy is imported before the input has been validated."""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from typing import Callable, Sequence

from core.checks import parse_numbers
from core.paths import InputError

EXAMPLES = """examples:
  python -m core train --dataset mnist --epochs 5
  python -m core train --dataset mnist --defense iat --eps 0.2 --defense-steps 5
  python -m core import my_cnn.pt --dataset mnist --module net.py:build --mean 0.1307 --std 0.3081
  python -m core import carmon2019.pt --dataset cifar10 --arch wrn-28-10
  python -m core evaluate RUN
  python -m core attack RUN --attack pgd --eps 0.1            (add --strong for 100 steps x 5)
  python -m core attack RUN --attack cw -n 200                (--strong: the paper's 1000 x 9)
  python -m core sweep RUN --attacks noise,fgsm,pgd --eps 0,0.01,0.05,0.1,0.2,0.3
  python -m core audit RUN --norm linf --eps 0.3 [--version standard|fast] [-n 1000]
  python -m core curve RUN --norm linf -n 1000 --at 0.1,0.3   (every epsilon at once)
  python -m core resume RUN                       (a training, audit, sweep, grid or curve)
  python -m core card RUN --reported 62.5         (card.json + card.md of its audit)
  python -m core verify card.json --weights model.pt
  python -m core runs | head
  python -m core show RUN
  python -m core reproduce --quick
  python -m core study --datasets mnist --defenses pgd-at,iat

global options (before or after the command):
  --data-dir DIR        data root (else $ROBUSTLAB_DATA, else artifacts/data)
  --artifacts-dir DIR   run database, run folders, reports (else $ROBUSTLAB_ARTIFACTS, else
                        artifacts/ beside the code)
"""


def _floats(text: str) -> list[float]:
    try:
        return parse_numbers(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _epsilon(text: str) -> float:
    """One budget, typed as 0.1 or 8/255 (the parser every epsilon option shares); -0 is 0."""
    values = _floats(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one number like 0.1 or 8/255, got {text!r}")
    return values[0] + 0.0  # -0.0 + 0.0 is 0.0: no budget shows as "-0" (the spec checks range)


def _names(text: str) -> list[str]:
    items = [v.strip() for v in text.split(",")]
    if any(not v for v in items):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated names like noise,fgsm,pgd with no empty item, got {text!r}")
    return items


def _kv(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        return key.replace("-", "_"), json.loads(raw)
    except json.JSONDecodeError:
        return key.replace("-", "_"), raw


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other input error
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _global_options() -> argparse.ArgumentParser:
    # SUPPRESS as default: a value given after the command is not overwritten by the default
    # of the same option before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS,
                        help="data root (default: $ROBUSTLAB_DATA, else artifacts/data)")
    common.add_argument("--artifacts-dir", default=argparse.SUPPRESS,
                        help="run database and run folders (default: $ROBUSTLAB_ARTIFACTS, "
                        "else artifacts/)")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for every command."""
    common = _global_options()
    parser = _Parser(prog="python -m core", parents=[common], epilog=EXAMPLES,
                     description="RobustLab: train image classifiers and measure how easily "
                     "adversarial attacks fool them.",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    add = lambda name, help: sub.add_parser(name, help=help, description=help,  # noqa: E731
                                            parents=[common])
    _train_parser(add("train", "train a model (foreground; progress on stderr)"))
    _import_parser(add("import", "bring in a model trained elsewhere: checked, then stored as "
                       "a model run that every command takes"))
    p = add("evaluate", "clean metrics, confusion-matrix PNG, mistakes grid PNG")
    _model_options(p)
    p.add_argument("--split", choices=("train", "test"), default=None, help="default: test")
    p.add_argument("-n", type=int, default=None, help="evaluate on a seeded subset of N images")
    _attack_parser(add("attack", "one attack on a sample of test images"))
    _sweep_parser(add("sweep", "several attacks over a grid of budgets (the attack table)"))
    _audit_parser(add("audit", "the robustness audit: AutoAttack cascade and indicators of "
                      "attack failure"))
    _curve_parser(add("curve", "the robustness curve: each image's smallest adversarial norm "
                      "(minimum-norm attacks), so robust accuracy at every epsilon at once"))
    p = add("card", "a model card in RobustBench's format from a model's audit: card.json and "
            "card.md (the claim, its exact images, intervals, waterfall, indicators, hashes)")
    p.add_argument("run", help="a trained or imported model run")
    p.add_argument("--audit", help="which audit (default: the model's latest standard audit at "
                   "the threat model)")
    p.add_argument("--norm", choices=("linf", "l2"), help="the threat model's norm (default linf)")
    p.add_argument("--eps", type=_epsilon, help="its budget, e.g. 8/255 (default: the "
                   "dataset's standard one, 0.3 MNIST, 8/255 CIFAR-10)")
    p.add_argument("--reported", help="the robust accuracy in percent you report, e.g. 62.5")
    for field in ("name", "link", "authors", "venue", "architecture", "footnote", "external"):
        p.add_argument(f"--{field}", help=f"RobustBench's {field!r} field")
    p.add_argument("--additional-data", action="store_true", help="training used extra data")
    p.add_argument("--out", help="folder for card.json and card.md (default: the audit's run "
                   "folder)")
    p = add("verify", "re-run a model card's claim on exactly its images: exit 0 when it holds, "
            "1 when it does not (each figure reproduced, lower, or not comparable)")
    p.add_argument("card", metavar="CARD.json")
    p.add_argument("--weights", metavar="FILE", help="the weights the card names (their sha256 "
                   "must match); imported with the card's architecture and input convention")
    p.add_argument("--run", dest="model_run", metavar="RUN", help="or a model run already in "
                   "the lab")
    p.add_argument("-n", type=int, help="re-run on a seeded part of the card's images (said "
                   "plainly; the figures are then judged on that part)")
    _device_option(p)
    p = add("export", "a run as TensorBoard event files: training scalars, evaluations, the "
            "audit's stages and indicators, curves and confusion matrices")
    p.add_argument("run", help="a model run (with its evaluations, audits and curves) or one job")
    p.add_argument("--tensorboard", metavar="DIR", required=True,
                   help="where the event files go (DIR/RUN); then tensorboard --logdir DIR")
    p = add("runs", "table of runs, newest first")
    p.add_argument("--kind", help="only runs of this kind (train, import, evaluate, attack, "
                   "sweep, grid, audit, curve, reproduce, study)")
    p.add_argument("--full", action="store_true", help="do not shorten error messages")
    p.add_argument("--tag", help="only runs carrying this tag")
    p = add("show", "everything about one run: status, full error, config, result, files")
    p.add_argument("run")
    p = add("cancel", "stop a queued or running job")
    p.add_argument("run")
    p = add("resume", "continue a failed or cancelled job: a training from its last checkpoint; "
            "an audit, sweep, grid or curve from its finished batches; a study or reproduction "
            "reusing its finished jobs")
    p.add_argument("run")
    p = add("rename", "give a run a name (an empty name clears it)")
    p.add_argument("run")
    p.add_argument("new_name", metavar="NAME")
    p = add("tag", "set a run's tags (no tags clears them), e.g. tag RUN baseline mnist")
    p.add_argument("run")
    p.add_argument("tags", nargs="*", metavar="TAG")
    p = add("delete", "delete a finished run with its evaluations, attacks, audits and files")
    p.add_argument("run")
    p = add("reproduce", "regenerate the whole seed study into artifacts/reports/")
    p.add_argument("--quick", action="store_true", help="small subsets, a few minutes")
    p.add_argument("--parts", help="which parts to run: some of a (CIFAR-10), b (MNIST and its "
                   "attacks), c (adversarial training and audits); default abc")
    _device_option(p)
    p = add("study", "the defenses at the field's standard settings (MNIST eps 0.3, CIFAR-10 "
            "8/255), each trained, attacked with PGD-40 and audited")
    p.add_argument("--datasets", help="comma-separated: mnist, cifar10 (default both)")
    p.add_argument("--defenses", help="comma-separated: fgsm-at, fast-at, pgd-at, trades, iat "
                   "(default all)")
    p.add_argument("--model", help="seed-resnet (default), resnet20 or preact-resnet18")
    p.add_argument("--scale", help="cpu (default: subsets, about an hour on 2 cores) or gpu "
                   "(whole training sets, the papers' attack steps)")
    p.add_argument("--seed", type=int)
    _device_option(p)
    return parser


def _train_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="mnist (default), cifar10 or imagefolder:PATH")
    p.add_argument("--model", help="seed-resnet (default), resnet20 or preact-resnet18 (for a GPU)")
    p.add_argument("--width", type=int, help="seed-resnet channel width (default 16)")
    p.add_argument("--blocks", type=int, help="seed-resnet residual blocks (default 3)")
    p.add_argument("--epochs", type=int, help="default 5")
    p.add_argument("--batch-size", type=int, help="global batch (default 128)")
    p.add_argument("--optimizer", help="sgd (default), nesterov or adam")
    p.add_argument("--lr", type=float, help="peak learning rate (default 0.05)")
    p.add_argument("--momentum", type=float, help="default 0.9")
    p.add_argument("--weight-decay", type=float, help="default 5e-4")
    p.add_argument("--schedule", help="onecycle (default), cosine or constant")
    p.add_argument("--label-smoothing", type=float, help="default 0")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--train-subset", type=int, help="train on N images")
    p.add_argument("--test-subset", type=int, help="evaluate each epoch on N test images")
    p.add_argument("--no-augment", action="store_true", help="no crop/flip (CIFAR-10)")
    p.add_argument("--defense", help="none (default), fgsm-at, fast-at, pgd-at, trades or iat")
    p.add_argument("--eps", type=_epsilon, help="defense budget in pixel units (0.3, 8/255=0.031)")
    p.add_argument("--defense-steps", type=int, help="attack steps inside the defense")
    p.add_argument("--defense-param", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="other defense parameter, e.g. beta=6 (trades), alpha=1 (iat)")
    p.add_argument("--eps-ramp", type=int, help="grow eps linearly over the first N epochs")
    p.add_argument("--robust-eps", type=_epsilon, help="eps of the per-epoch held-out APGD-CE check (the overfitting guard)")
    _device_option(p)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="bf16 autocast for training (auto, the default: the faster one "
                   "measured on a GPU, fp32 on a CPU)")
    p.add_argument("--name", help="a label for the run")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint")


def _import_parser(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = IMPORT_HELP
    p.add_argument("file", metavar="FILE", help="the model: .safetensors, a .pt/.pth checkpoint "
                   "(read with weights_only=True: nothing in it is run), or a TorchScript / "
                   "torch.export archive (which carries its own code)")
    p.add_argument("--dataset", required=True, help="mnist, cifar10 or imagefolder:PATH: the "
                   "data it classifies (its test images check it)")
    p.add_argument("--arch", help="the architecture of a weights file: the lab's seed-resnet, "
                   "resnet20, preact-resnet18; RobustBench's wrn-28-10, wrn-34-10, "
                   "dm-wrn-70-16, rb-preact-resnet18 (wrn-D-W, dm-wrn-D-W for other sizes); or "
                   "any torchvision.models classifier by name (resnet18, vgg11, ...)")
    p.add_argument("--module", metavar="PATH.py:FUNCTION", help="your own code that builds the "
                   "nn.Module: FUNCTION() (or FUNCTION(num_classes=K)) is RUN, so import only "
                   "code you trust; the file is kept with the run")
    p.add_argument("--mean", type=_floats, help="the normalization the model expects, one value "
                   "or one per channel, e.g. 0.4914,0.4822,0.4465 (with --std)")
    p.add_argument("--std", type=_floats, help="e.g. 0.2471,0.2435,0.2616 (with --mean)")
    p.add_argument("--input-scale", type=int, choices=(1, 255), help="1 (default): the model "
                   "takes pixels in [0, 1]; 255: in [0, 255] (--mean/--std then in 0-255 units)")
    p.add_argument("--classes", type=_names, help="the class of each of the model's outputs, in "
                   "order, when it differs from the dataset's, e.g. plane,car,...")
    p.add_argument("--allow-random", action="store_true", help="accept a randomized model "
                   "(flagged: its robust accuracy is not a deterministic figure)")
    p.add_argument("-n", type=int, help="test images of the clean-accuracy check (default 500)")
    p.add_argument("--name", help="a name for the run")
    p.add_argument("--dry-run", action="store_true", help="check the model and print its clean "
                   "accuracy without storing it")
    _device_option(p)


IMPORT_HELP = """bring in a model trained elsewhere. Every attack keeps working in [0, 1] pixel
space: the lab wraps the model so that it sees (pixels x input-scale - mean) / std, as it was
trained. Before it is stored it must give one finite logit per class, agree with itself across
two eval-mode forwards, and not depend on the rest of its batch; probability outputs are
flagged; its clean accuracy on 500 test images is printed with its 95% interval. An imported
model cannot be trained or resumed; evaluate, attack, sweep, audit, curve and the dashboard
take it like a trained one."""


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="model run id (a training or an import)")
    p.add_argument("--which", choices=("final", "best"), default=None,
                   help="final weights (default), or the best epoch by held-out robust "
                   "accuracy (defended runs)")
    _device_option(p)


def _attack_parser(p: argparse.ArgumentParser) -> None:
    _model_options(p)
    p.add_argument("--attack", required=True, help="noise, fgsm, pgd, semantic or cw")
    p.add_argument("--eps", type=_epsilon, help="L-inf (or L2) budget in pixel units")
    p.add_argument("--sigma", type=float, help="noise standard deviation")
    p.add_argument("--steps", type=int, help="iterations (pgd: 40 by default; cw: per search)")
    p.add_argument("--strong", action="store_true",
                   help="the strong setting: pgd 100 steps x 5 restarts; cw 1000 steps x 9 "
                   "searches, lr 0.01 (Carlini & Wagner's); slow on a CPU")
    p.add_argument("--param", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="other attack parameter, e.g. norm=l2, restarts=5, mode=hsv")
    p.add_argument("-n", type=int, help="test images to attack (default 1000)")
    p.add_argument("--seed", type=int, help="which sample of the test split (default 0)")


def _sweep_parser(p: argparse.ArgumentParser) -> None:
    _model_options(p)
    p.add_argument("--attacks", type=_names, help="comma-separated attack names (default "
                   "noise,fgsm,pgd)")
    p.add_argument("--eps", type=_floats, help="comma-separated budgets: eps for attacks, sigma "
                   "for noise (default 0,0.01,0.05,0.1,0.2,0.3)")
    p.add_argument("--steps", type=int, help="PGD steps (default 40)")
    p.add_argument("--cw-steps", type=int, help="CW iterations per search step (default 100)")
    p.add_argument("--strong", action="store_true", help="each attack's strong setting "
                   "(pgd 100 x 5 restarts, cw 1000 x 9)")
    p.add_argument("-n", type=int, help="test images (default 1000)")
    p.add_argument("--seed", type=int, help="which sample of the test split (default 0)")


def _audit_parser(p: argparse.ArgumentParser) -> None:
    _model_options(p)
    p.add_argument("--norm", choices=("linf", "l2"), default=None, help="default linf")
    p.add_argument("--eps", type=_epsilon, help="budget in pixel units (0.3 MNIST, 0.0314 CIFAR-10)")
    p.add_argument("--version", choices=("standard", "fast"), default=None,
                   help="standard (default): APGD-CE, APGD-T, FAB-T, Square; fast: APGD-CE, "
                   "APGD-T")
    p.add_argument("-n", type=int, help="test images (default 1000)")
    p.add_argument("--seed", type=int, help="which sample of the test split (default 0)")
    p.add_argument("--steps", type=int, help="iterations of APGD-CE, APGD-T and FAB-T "
                   "(default 100, the reference's)")
    p.add_argument("--queries", type=int, help="Square queries (default 5000)")
    p.add_argument("--batch-size", type=int, help="images per batch (default 250); torchrun "
                   "gives each rank whole batches")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="arithmetic of the attacks' search: auto (default) is the faster one "
                   "measured on a GPU, bf16 on a CPU with native bf16, else fp32; verdicts are "
                   "always fp32")


def _curve_parser(p: argparse.ArgumentParser) -> None:
    _model_options(p)
    p.add_argument("--norm", choices=("linf", "l2"), default=None, help="default linf")
    p.add_argument("-n", type=int, help="test images (default 1000)")
    p.add_argument("--attacks", help="comma-separated minimum-norm attacks: fmn, fab (default "
                   "both; each image keeps the smallest norm either found)")
    p.add_argument("--steps", type=int, help="FMN's iterations (default 100)")
    p.add_argument("--at", type=_floats, metavar="EPS[,EPS...]", help="the budgets you care "
                   "about, e.g. 0.1,8/255 (default: the budgets of the model's audits in this "
                   "norm): the images still unbroken there are checked with the fast audit's "
                   "APGD-CE and APGD-T, and the curve's robust accuracy is printed there")
    p.add_argument("--no-check", dest="check", action="store_false", default=None,
                   help="skip that check (the curve then rests on FMN/FAB and the examples "
                   "kept by earlier audits and curves of the same weights)")
    p.add_argument("--seed", type=int, help="which sample of the test split (default 0)")
    p.add_argument("--batch-size", type=int, help="images per batch (default 250); torchrun "
                   "gives each rank whole batches")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="arithmetic of the attacks' search (as the audit's); every norm kept is "
                   "checked in fp32")


def _device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="auto (default: CUDA when available), cpu, cuda or "
                   "cuda:N; under torchrun each rank uses its local GPU")


def _given(args: argparse.Namespace, **mapping: str) -> dict:
    """Spec fields for the options the user gave (the spec's defaults fill the rest)."""
    return {field: getattr(args, opt) for field, opt in mapping.items()
            if getattr(args, opt, None) is not None}


def train_spec(args: argparse.Namespace):
    """The TrainSpec for ``train`` arguments."""
    from core.jobs.specs import TrainSpec

    model_args = _given(args, width="width", blocks="blocks")
    defense_args = dict(args.defense_param)
    defense_args.update(_given(args, eps="eps", steps="defense_steps",
                               eps_ramp_epochs="eps_ramp"))
    values = _given(args, dataset="dataset", model="model", epochs="epochs",
                    batch_size="batch_size", optimizer="optimizer", lr="lr",
                    momentum="momentum", weight_decay="weight_decay", schedule="schedule",
                    label_smoothing="label_smoothing", seed="seed", defense="defense",
                    train_subset="train_subset", test_subset="test_subset",
                    data_dir="data_dir", device="device", precision="precision")
    if args.robust_eps is not None:
        values["robust_eval"] = {"eps": args.robust_eps}
    if args.no_augment:
        values["augment"] = False
    return TrainSpec(model_args=model_args, defense_args=defense_args, **values)


def _model_fields(args: argparse.Namespace) -> dict:
    return dict(model_run=args.run, **_given(args, which="which", data_dir="data_dir",
                                             device="device"))


def evaluate_spec(args: argparse.Namespace):
    """The EvaluateSpec for ``evaluate`` arguments."""
    from core.jobs.specs import EvaluateSpec

    return EvaluateSpec(**_model_fields(args), **_given(args, split="split", n="n"))


def attack_spec(args: argparse.Namespace):
    """The AttackSpec for ``attack`` arguments."""
    from core.jobs.specs import AttackSpec

    params = dict(args.param) | _given(args, eps="eps", sigma="sigma", steps="steps")
    return AttackSpec(**_model_fields(args), attack=args.attack, params=params,
                      strong=args.strong, **_given(args, n="n", seed="seed"))


def sweep_spec(args: argparse.Namespace):
    """The SweepSpec for ``sweep`` arguments."""
    from core.jobs.specs import SweepSpec

    values = _given(args, attacks="attacks", budgets="eps", n="n", seed="seed")
    if "attacks" in values:
        overrides = {"pgd": _given(args, steps="steps"), "cw": _given(args, steps="cw_steps")}
        values["attacks"] = [{"name": a, "params": overrides.get(a, {})}
                             for a in values["attacks"]]
    elif args.steps or args.cw_steps:
        raise InputError("--steps and --cw-steps need --attacks naming pgd or cw")
    return SweepSpec(**_model_fields(args), strong=args.strong, **values)


def audit_spec(args: argparse.Namespace):
    """The AuditSpec for ``audit`` arguments."""
    from core.jobs.specs import AuditSpec

    return AuditSpec(**_model_fields(args), **_given(
        args, norm="norm", eps="eps", version="version", n="n", seed="seed", steps="steps",
        queries="queries", batch_size="batch_size", precision="precision"))


def curve_spec(args: argparse.Namespace):
    """The CurveSpec for ``curve`` arguments."""
    from core.jobs.specs import CurveSpec

    return CurveSpec(**_model_fields(args), **_given(
        args, norm="norm", n="n", attacks="attacks", steps="steps", seed="seed",
        batch_size="batch_size", precision="precision", at="at", check="check"))


def import_spec(args: argparse.Namespace):
    """The ImportSpec for ``import`` arguments (paths made absolute: the job may run elsewhere)."""
    from core.jobs.specs import ImportSpec

    values = _given(args, dataset="dataset", arch="arch", mean="mean", std="std",
                    input_scale="input_scale", classes="classes", data_dir="data_dir",
                    device="device", n_check="n")
    if args.module:
        path, _, fn = args.module.rpartition(":")
        values["module"] = f"{os.path.abspath(path)}:{fn}" if path else args.module
    return ImportSpec(file=os.path.abspath(args.file), allow_random=args.allow_random, **values)


def reproduce_spec(args: argparse.Namespace):
    """The ReproduceSpec for ``reproduce`` arguments."""
    from core.jobs.specs import ReproduceSpec

    return ReproduceSpec(quick=args.quick, **_given(args, parts="parts", data_dir="data_dir",
                                                    device="device"))


def study_spec(args: argparse.Namespace):
    """The StudySpec for ``study`` arguments."""
    from core.jobs.specs import StudySpec

    lists = {key: [v.strip() for v in value.split(",") if v.strip()]
             for key, value in (("datasets", args.datasets), ("defenses", args.defenses))
             if value is not None}
    return StudySpec(**lists, **_given(args, model="model", scale="scale", seed="seed",
                                       data_dir="data_dir", device="device"))


SPEC_BUILDERS: dict[str, Callable] = {"train": train_spec, "evaluate": evaluate_spec,
                                      "attack": attack_spec, "sweep": sweep_spec,
                                      "reproduce": reproduce_spec, "audit": audit_spec,
                                      "study": study_spec, "curve": curve_spec,
                                      "import": import_spec}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (2 with one clear line on bad input)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "artifacts_dir", None):
        os.environ["ROBUSTLAB_ARTIFACTS"] = os.path.abspath(args.artifacts_dir)
    try:
        return _dispatch(args)
    except InputError as err:
        return _one_line(str(err))
    except KeyboardInterrupt:
        print("interrupted before the job started; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `runs | head` closed the pipe: stop quietly, and keep Python's exit flush quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, sqlite3.Error) as err:
        line = _environment_line(err)
        if line is None:
            raise
        return _one_line(line)


def main_exit() -> None:
    """The ``robustlab`` command (installed by ``pip install -e .``): ``main`` as an exit
    status, the same as ``python -m core``."""
    sys.exit(main())


def _one_line(message: str) -> int:
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank has the error
        print("error: " + " ".join(message.split()), file=sys.stderr)
    return 2


def _environment_line(err: BaseException) -> str | None:
    """A broken environment met during a job (a full or read-only disk, the database damaged
    or locked while in use), in one line; None for any other error."""
    from core.jobs.store import database_path
    from core.paths import environment_problem

    return environment_problem(err, database_path() if isinstance(err, sqlite3.Error) else None)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in SPEC_BUILDERS and not (args.command == "train" and args.resume):
        spec = SPEC_BUILDERS[args.command](args)  # validated here, before torch is imported
        from core.checks import clean_name

        clean_name(getattr(args, "name", None))
        _refuse_early(spec)
        from core.app import console

        if args.command == "import":
            return console.run_import(spec, name=args.name, dry_run=args.dry_run)
        return console.run_job(spec, name=getattr(args, "name", None))
    if args.command == "train" or args.command == "resume":
        _refuse_early(None, args.resume if args.command == "train" else args.run)
    from core.app import console

    if args.command == "train":
        return console.run_resume(args.resume, _given(args, device="device"))
    return getattr(console, f"cmd_{args.command}")(args)


def _refuse_early(spec: object | None, resume: str | None = None) -> None:
    """The checks that need only the store and the file system (the run, its kind and state,
    its weights, the data folder), before torch loads; under torchrun rank 0 makes them once
    the group is up, so that every rank stops together."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    from core.jobs.store import RunStore, resume_refusal

    store = RunStore()
    if resume is None:
        from core.jobs.preflight import preflight

        preflight(store, spec)
        return
    store.mark_stale()
    refusal = resume_refusal(store.get(resume))
    if refusal:
        raise InputError(refusal)


if __name__ == "__main__":
    sys.exit(main())
