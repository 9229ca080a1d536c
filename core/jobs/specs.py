"""Typed job specs: one dataclass per kind of job, the only input of :mod:`core.jobs.runner`.

A spec validates itself completely on construction, in plain Python (no torch, no data), and
serializes to the run's config JSON; ``spec_from_config`` reads it back. The CLI, the dashboard,
``reproduce``, torchrun and the tests all build specs, and every default lives here, once (the
hyperparameters of attacks live beside each attack in :mod:`core.attacks`, those of defenses
and models in :mod:`core.training.settings`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from core.attacks import ATTACKS, MINIMUM_NORM, AttackSettings, attack_settings
from core.catalog import DATASETS, SPLITS  # noqa: F401 (part of the specs' vocabulary)
from core.checks import check_choice, check_positive, check_range
from core.paths import InputError, check_run_id
from core.threat import ThreatModel
from core.training.settings import (DEFENSE_SETTINGS, DefenseSettings, check_model,
                                    defense_settings)

OPTIMIZERS = ("sgd", "nesterov", "adam")
SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
WEIGHTS = ("final", "best")
ROBUST_EVAL_KEYS = ("eps", "steps", "n", "collapse_drop")
DEFAULT_BUDGETS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.3)
AUDIT_VERSIONS = ("standard", "fast")
DEFAULT_GRID = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
GRID_SLIDER_START = 4  # the Attack page's slider starts at 8/255, computed first


def check_device(device: Any) -> None:
    """Raise InputError unless ``device`` names a device (availability is checked at run)."""
    ok = isinstance(device, str) and (device in ("auto", "cpu", "cuda") or (
        device.startswith("cuda:") and device[5:].isdigit()))
    if not ok:
        raise InputError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N")


def check_dataset(name: Any) -> None:
    """Raise InputError unless ``name`` is a dataset name (presence is checked at run)."""
    ok = isinstance(name, str) and (name in ("mnist", "cifar10") or (
        name.startswith("imagefolder:") and len(name) > len("imagefolder:")))
    if not ok:
        raise InputError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")


def _optional_positive(name: str, value: Any) -> None:
    if value is not None:
        check_positive(name, value)


@dataclass
class Spec:
    """Base of job specs: validation on construction and the JSON round trip."""

    kind: ClassVar[str] = "job"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InputError naming the first invalid value and what is valid."""

    def to_dict(self) -> dict:
        """Plain-JSON form (the run's config)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Spec":
        """Build from a dict, refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown {cls.kind} options {unknown}; valid: {sorted(known)}")
        return cls(**values)

    def describe(self) -> str:
        """One line saying what the job does."""
        return self.kind


@dataclass
class TrainSpec(Spec):
    """Train a model, optionally with a defense; ``robust_eval`` sets the overfitting guard
    (eps, steps, n held-out training images, collapse_drop)."""

    kind: ClassVar[str] = "train"
    dataset: str = "mnist"
    model: str = "seed-resnet"
    model_args: dict = field(default_factory=dict)
    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    augment: bool | None = None
    defense: str = "none"
    defense_args: dict = field(default_factory=dict)
    robust_eval: dict = field(default_factory=dict)
    data_dir: str | None = None
    device: str = "auto"
    precision: str = "auto"

    def validate(self) -> None:
        check_dataset(self.dataset)
        check_model(self.model, self.model_args)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("defense", self.defense, tuple(DEFENSE_SETTINGS))
        check_choice("precision", self.precision, PRECISIONS)
        check_positive("epochs", self.epochs)
        check_positive("batch size", self.batch_size)
        _optional_positive("train subset", self.train_subset)
        _optional_positive("test subset", self.test_subset)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"learning rate must be a positive number, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise InputError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise InputError("weight decay must be >= 0 and momentum in [0, 1)")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise InputError(f"seed must be a whole number >= 0, got {self.seed!r}")
        check_device(self.device)
        # resolved, as attack specs are: a stored run keeps the defaults it ran with, whatever
        # a later release changes (its resume, its clone)
        resolved = self.defense_settings().params()
        resolved.pop("label_smoothing", None)
        self.defense_args = resolved if self.defense != "none" else {}
        unknown = sorted(set(self.robust_eval) - set(ROBUST_EVAL_KEYS))
        if unknown:
            raise InputError(f"unknown robust_eval options {unknown}; valid: "
                             f"{', '.join(ROBUST_EVAL_KEYS)}")
        if "eps" in self.robust_eval:
            check_range("robust_eval eps", self.robust_eval["eps"], 0.0, 1.0)
        if "steps" in self.robust_eval:
            check_positive("robust_eval steps", self.robust_eval["steps"])

    def defense_settings(self) -> DefenseSettings:
        """The defense's validated hyperparameters."""
        return defense_settings(self.defense, label_smoothing=self.label_smoothing,
                                   **self.defense_args)

    @property
    def guarded(self) -> bool:
        """Whether the overfitting guard runs (defended runs, or a robust_eval was asked for)."""
        return self.defense != "none" or bool(self.robust_eval)

    def describe(self) -> str:
        defense = "" if self.defense == "none" else f" with {self.defense}"
        return f"training {self.model} on {self.dataset}{defense} for {self.epochs} epoch(s)"


@dataclass
class ModelJobSpec(Spec):
    """Base of jobs on a trained model: which run, which weights, where the data is."""

    model_run: str = ""
    which: str = "final"
    data_dir: str | None = None
    device: str = "auto"

    def validate(self) -> None:
        if not self.model_run:
            raise InputError("name the model run to use (a training or import run id from "
                             "`python -m core runs`)")
        check_run_id(self.model_run)
        check_choice("weights", self.which, WEIGHTS)
        check_device(self.device)


@dataclass
class EvaluateSpec(ModelJobSpec):
    """Clean metrics, confusion matrix and mistakes of a model on a split."""

    kind: ClassVar[str] = "evaluate"
    split: str = "test"
    n: int | None = None
    batch_size: int = 500

    def validate(self) -> None:
        super().validate()
        check_choice("split", self.split, SPLITS)
        _optional_positive("n", self.n)
        check_positive("batch size", self.batch_size)

    def describe(self) -> str:
        return f"evaluating {self.model_run} on the {self.split} split"


@dataclass
class OneAttackSpec(ModelJobSpec):
    """Base of jobs running one attack. ``params`` are stored resolved (every hyperparameter,
    defaults included); ``strong`` selects the attack's strong setting."""

    attack: str = "pgd"
    params: dict = field(default_factory=dict)
    strong: bool = False
    n: int = 1000
    seed: int = 0
    batch_size: int = 250
    keep: int = 64

    def validate(self) -> None:
        super().validate()
        self.params = attack_settings(self.attack, self.params, self.strong).params()
        check_positive("n", self.n)
        check_positive("batch size", self.batch_size)
        if not isinstance(self.keep, int) or self.keep < 0:
            raise InputError(f"keep must be a whole number >= 0, got {self.keep!r}")

    def settings(self) -> AttackSettings:
        """The attack's hyperparameters."""
        return attack_settings(self.attack, self.params)

    def where(self) -> str:
        """The threat model ('L∞ ε=0.1 (25.5/255)'), or for an attack without one its mode
        or noise level."""
        settings = self.settings()
        threat = settings.threat()
        if threat is not None:
            return threat.label()
        return ", ".join(f"{k} {v}" for k, v in settings.params().items()
                         if k in ("mode", "sigma"))


@dataclass
class AttackSpec(OneAttackSpec):
    """One attack on a seeded sample of ``n`` test images."""

    kind: ClassVar[str] = "attack"

    def describe(self) -> str:
        return f"{self.attack} ({self.where()}) on {self.n:,} test images of {self.model_run}"


def _attack_list(attacks: Any, strong: bool) -> list[dict]:
    if not isinstance(attacks, (list, tuple)) or not attacks:
        raise InputError("a sweep needs at least one attack; valid attacks: "
                         f"{', '.join(ATTACKS)}")
    out = []
    for item in attacks:
        name, params = (item, {}) if isinstance(item, str) else (item.get("name"),
                                                                 item.get("params", {}))
        out.append({"name": name, "params": attack_settings(name, params, strong).params()})
    return out


def check_budgets(budgets: Any, what: str = "budgets") -> list[float]:
    """A non-empty list of numbers in [0, 1], as floats."""
    if not isinstance(budgets, (list, tuple)) or not budgets:
        raise InputError(f"{what} must be a non-empty list of numbers in [0, 1] (pixel units)")
    for b in budgets:
        check_range(f"each of the {what}", b, 0.0, 1.0)
    return [float(b) for b in budgets]


@dataclass
class SweepSpec(ModelJobSpec):
    """Several attacks over a grid of budgets (eps for attacks, sigma for noise)."""

    kind: ClassVar[str] = "sweep"
    attacks: list = field(default_factory=lambda: ["noise", "fgsm", "pgd"])
    budgets: list = field(default_factory=lambda: list(DEFAULT_BUDGETS))
    strong: bool = False
    n: int = 1000
    seed: int = 0
    batch_size: int = 250

    def validate(self) -> None:
        super().validate()
        self.attacks = _attack_list(self.attacks, self.strong)
        self.budgets = check_budgets(self.budgets)
        check_positive("n", self.n)
        check_positive("batch size", self.batch_size)

    def describe(self) -> str:
        names = ", ".join(a["name"] for a in self.attacks)
        return f"sweep of {names} over {len(self.budgets)} budget(s) on {self.n:,} test images"


@dataclass
class GridSpec(OneAttackSpec):
    """One attack over a grid of budgets, each point saved as it completes, with example images
    (the dashboard's epsilon slider)."""

    kind: ClassVar[str] = "grid"
    n: int = 200
    keep: int = 64  # the same first images for every model: flipped ones are among them
    budgets: list = field(default_factory=lambda: list(DEFAULT_GRID))
    first: int | None = None  # the budget computed first (the slider's): the rest in order

    def validate(self) -> None:
        super().validate()
        self.budgets = check_budgets(self.budgets)
        if self.first is not None and not (isinstance(self.first, int) and
                                           0 <= self.first < len(self.budgets)):
            raise InputError(f"grid first must index one of the {len(self.budgets)} budgets, "
                             f"got {self.first!r}")

    def describe(self) -> str:
        return f"{self.attack} grid over {len(self.budgets)} budget(s) on {self.n:,} images"


@dataclass
class AuditSpec(ModelJobSpec):
    """The robustness audit at one threat model: the AutoAttack cascade (``standard``:
    APGD-CE, APGD-T, FAB-T, Square; ``fast``: APGD-CE, APGD-T) on a seeded sample of ``n``
    test images, then the indicators of attack failure."""

    kind: ClassVar[str] = "audit"
    norm: str = "linf"
    eps: float | None = None
    version: str = "standard"
    n: int = 1000
    seed: int = 0
    steps: int = 100
    queries: int = 5000
    batch_size: int = 250
    precision: str = "auto"  # of the search; verdicts are float32 (core.attacks.speed.LowPrecision)

    def validate(self) -> None:
        super().validate()
        check_choice("audit precision", self.precision, PRECISIONS)
        if self.eps is None:
            raise InputError("an audit needs its epsilon (--eps), in pixel units: e.g. 0.3 for "
                             "MNIST, 8/255 = 0.0314 for CIFAR-10")
        if self.norm not in ("linf", "l2"):
            raise InputError(f"an audit needs a bounded threat model; valid norms: linf, l2 "
                             f"(got {self.norm!r})")
        self.threat()
        check_choice("audit version", self.version, AUDIT_VERSIONS)
        for name in ("n", "steps", "queries", "batch_size"):
            check_positive(name.replace("_", " "), getattr(self, name))

    def threat(self) -> ThreatModel:
        """The audited threat model."""
        return ThreatModel(self.norm, self.eps)

    def describe(self) -> str:
        return (f"audit ({self.version}) of {self.model_run} at {self.threat().label()} on "
                f"{self.n:,} test images")


@dataclass
class CurveSpec(ModelJobSpec):
    """A robustness curve: minimum-norm attacks (FMN, FAB) on a seeded sample of ``n`` test
    images, each image's smallest adversarial norm kept, lowered by the adversarial examples
    the lab kept for the same weights and, with ``check``, by the fast audit's attacks at the
    ``at`` budgets; robust accuracy at every epsilon follows. ``steps``: FMN's and the check's
    iterations (FAB's are its own defaults)."""

    kind: ClassVar[str] = "curve"
    norm: str = "linf"
    n: int = 1000
    attacks: list = field(default_factory=lambda: ["fmn", "fab"])
    steps: int = 100
    seed: int = 0
    batch_size: int = 250
    precision: str = "auto"  # of the search; every norm kept is checked in float32
    at: list | None = None  # budgets its figures are printed at (default: the model's audits')
    # the fast audit's attacks on the images still unbroken at the ``at`` budgets
    check: bool = True

    def validate(self) -> None:
        super().validate()
        if self.at is not None:
            self.at = check_budgets(self.at, "--at budgets")
        if self.norm not in ("linf", "l2"):
            raise InputError(f"a curve needs a norm; valid norms: linf, l2 (got {self.norm!r})")
        if isinstance(self.attacks, str):
            self.attacks = [a.strip() for a in self.attacks.split(",") if a.strip()]
        if not self.attacks:
            raise InputError(f"a curve needs at least one attack; valid: {', '.join(MINIMUM_NORM)}")
        for name in self.attacks:
            check_choice("curve attack", name, MINIMUM_NORM)
        self.attacks = list(dict.fromkeys(self.attacks))
        check_choice("curve precision", self.precision, PRECISIONS)
        for name in ("n", "steps", "batch_size"):
            check_positive(name.replace("_", " "), getattr(self, name))

    def attack_list(self) -> list[AttackSettings]:
        """The curve's attacks, in its norm."""
        return [attack_settings(a, {"norm": self.norm, **({"steps": self.steps}
                                                          if a == "fmn" else {})})
                for a in self.attacks]

    def describe(self) -> str:
        return (f"{self.norm} robustness curve of {self.model_run} ({', '.join(self.attacks)}) "
                f"on {self.n:,} test images")


@dataclass
class ReproduceSpec(Spec):
    """The whole seed study into ``artifacts/reports/RUN``; ``quick`` uses small subsets."""

    kind: ClassVar[str] = "reproduce"
    quick: bool = False
    parts: str = "abc"
    data_dir: str | None = None
    device: str = "auto"

    def validate(self) -> None:
        if not isinstance(self.quick, bool):
            raise InputError(f"quick must be true or false, got {self.quick!r}")
        if (not isinstance(self.parts, str) or not self.parts
                or set(self.parts) - set("abc") or len(set(self.parts)) != len(self.parts)):
            raise InputError(f"parts must be some of the letters a, b, c (for example 'c' or "
                             f"'abc'), each once; got {self.parts!r}")
        check_device(self.device)

    def describe(self) -> str:
        which = "" if self.parts == "abc" else f", part {', '.join(self.parts)}"
        return "the seed study" + (" (quick" + which + ")" if self.quick
                                   else f" ({which[2:]})" if which else "")


STUDY_DATASETS = ("mnist", "cifar10")
STUDY_DEFENSES = ("fgsm-at", "fast-at", "pgd-at", "trades", "iat")
STUDY_SCALES = ("cpu", "gpu")


@dataclass
class StudySpec(Spec):
    """The field's standard settings (MNIST at eps 0.3, CIFAR-10 at 8/255): each defense
    trained, evaluated with PGD-40 and audited at its training epsilon. ``scale``: ``cpu``
    (subsets and few steps, about an hour on 2 cores) or ``gpu`` (the papers' settings)."""

    kind: ClassVar[str] = "study"
    datasets: list = field(default_factory=lambda: list(STUDY_DATASETS))
    defenses: list = field(default_factory=lambda: list(STUDY_DEFENSES))
    model: str = "seed-resnet"
    scale: str = "cpu"
    seed: int = 0
    data_dir: str | None = None
    device: str = "auto"

    def validate(self) -> None:
        for name, values, valid in (("dataset", self.datasets, STUDY_DATASETS),
                                    ("defense", self.defenses, STUDY_DEFENSES)):
            if not isinstance(values, list) or not values:
                raise InputError(f"a study needs at least one {name}; valid: {', '.join(valid)}")
            for value in values:
                check_choice(f"study {name}", value, valid)
            if len(set(values)) != len(values):
                raise InputError(f"study {name}s must not repeat, got {values}")
        check_model(self.model, {})
        check_choice("study scale", self.scale, STUDY_SCALES)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise InputError(f"seed must be a whole number >= 0, got {self.seed!r}")
        check_device(self.device)

    def describe(self) -> str:
        return (f"the standard-settings study ({', '.join(self.defenses)} on "
                f"{', '.join(self.datasets)}; {self.model}, {self.scale} scale)")


INPUT_SCALES = (1, 255)
IMPORT_CHECK_IMAGES = 500


@dataclass
class ImportSpec(Spec):
    """Bring a model trained elsewhere into the lab (:mod:`core.imported`): FILE's weights
    (safetensors, a weights-only .pt/.pth, or a TorchScript / torch.export archive with its own
    code), the architecture (``arch`` or the user's ``module`` = PATH.py:FUNCTION), and the
    input convention the network expects, (pixels x input_scale - mean) / std."""

    kind: ClassVar[str] = "import"
    file: str = ""
    dataset: str = "cifar10"
    arch: str | None = None
    module: str | None = None
    mean: list | None = None
    std: list | None = None
    input_scale: int = 1
    classes: list | None = None
    allow_random: bool = False
    n_check: int = IMPORT_CHECK_IMAGES
    seed: int = 0
    data_dir: str | None = None
    device: str = "auto"

    def validate(self) -> None:
        if not isinstance(self.file, str) or not self.file:
            raise InputError("name the model file to import (safetensors, .pt/.pth, "
                             "TorchScript or torch.export)")
        check_dataset(self.dataset)
        if self.arch and self.module:
            raise InputError("give --arch or --module, not both")
        if self.module is not None and (":" not in self.module or
                                        not self.module.rpartition(":")[0].endswith(".py") or
                                        not self.module.rpartition(":")[2].isidentifier()):
            raise InputError(f"--module must be PATH.py:FUNCTION, got {self.module!r}")
        if (self.mean is None) != (self.std is None):
            raise InputError("give --mean and --std together (or neither)")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and (not isinstance(values, list) or not values or not all(
                    isinstance(v, (int, float)) and math.isfinite(v) for v in values)):
                raise InputError(f"--{name} takes one number or one per channel, got {values!r}")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise InputError(f"--std values must be positive, got {self.std}")
        if self.input_scale not in INPUT_SCALES:
            raise InputError(f"--input-scale must be 1 (the model takes [0, 1]) or 255 (it "
                             f"takes [0, 255]), got {self.input_scale!r}")
        if self.classes is not None and (len(self.classes) < 2 or not all(
                isinstance(c, str) and c for c in self.classes)):
            raise InputError("--classes takes two or more class names, comma-separated, in the "
                             "order of the model's outputs")
        check_positive("check images", self.n_check)
        check_device(self.device)

    def describe(self) -> str:
        how = self.arch or self.module or "its own code"
        return f"import {self.file} ({how}) as a {self.dataset} model"


SPECS: dict[str, type[Spec]] = {cls.kind: cls for cls in (
    TrainSpec, EvaluateSpec, AttackSpec, SweepSpec, GridSpec, ReproduceSpec, AuditSpec,
    StudySpec, CurveSpec, ImportSpec)}


# defaults that changed after runs were stored with only the parameters their user gave: a
# stored training spec without the key ran with the old value
FORMER_DEFENSE_DEFAULTS = {"iat": {"craft_mode": "eval"}, "trades": {"batchnorm": "shared"}}


def spec_from_config(kind: str, config: dict) -> Spec:
    """The spec of a stored run (its kind and config JSON)."""
    if kind not in SPECS:
        raise InputError(f"unknown job kind {kind!r}; valid: {', '.join(SPECS)}")
    if kind == "train":
        former = FORMER_DEFENSE_DEFAULTS.get(config.get("defense"), {})
        args = config.get("defense_args") or {}
        config = dict(config, defense_args={**former, **args}) if former and \
            not set(former) <= set(args) else config
    return SPECS[kind].from_dict(config)
