"""Adversarial attacks: one module per attack family, each holding its settings class (the
hyperparameters, their defaults and their checks) beside its computation, and the contract
they share (:mod:`core.attacks.contract`). This registry builds them by name.

Importing this package does not import torch (the attack modules load it on first use), so a
job spec validates an attack's settings in milliseconds.

    from core.attacks import build_attack
    x_adv = build_attack("pgd", eps=0.1, steps=40)(model, x, y)   # x in [0, 1]
"""
from __future__ import annotations

from core.attacks.apgd import APGD, APGDT
from core.attacks.contract import (NORMS, Attack, AttackSettings, BallSettings, MinimumNorm,
                                   MinimumNormSettings)
from core.attacks.cw import CarliniWagner
from core.attacks.fab import FABMinimum, FABT
from core.attacks.fmn import FMN
from core.attacks.fgsm import FGSM
from core.attacks.noise import Noise
from core.attacks.pgd import PGD
from core.attacks.semantic import Semantic
from core.attacks.square import Square
from core.checks import build_registered

__all__ = ["ATTACKS", "NORMS", "Attack", "AttackSettings", "BallSettings", "build_attack",
           "attack_settings", "with_budget", "APGD", "APGDT", "CarliniWagner", "FABT", "FGSM",
           "Noise", "PGD", "Semantic", "Square", "FMN", "FABMinimum", "MinimumNorm",
           "MinimumNormSettings", "MINIMUM_NORM"]

# name -> attack class (each is also its own settings: constructing one checks them)
ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (Noise, FGSM, PGD, Semantic, CarliniWagner, APGD, APGDT, FABT,
                              Square, FMN, FABMinimum)}
# the minimum-norm attacks, from which a robustness curve is made
MINIMUM_NORM = tuple(name for name, cls in ATTACKS.items() if issubclass(cls, MinimumNorm))


def attack_settings(name: str, params: dict | None = None, strong: bool = False) -> Attack:
    """The validated attack ``name`` (with its strong setting when asked); explicit ``params``
    win over the strong setting. Unknown names or parameters get an error listing the valid
    ones. Needs no torch until the attack is called."""
    cls = ATTACKS.get(name)
    merged = dict(cls.strong if cls and strong else {}, **(params or {}))
    return build_registered("attack", ATTACKS, name, merged)


def build_attack(name: str, strong: bool = False, **params) -> Attack:
    """Build a registered attack (its strong setting with ``strong``)."""
    return attack_settings(name, params, strong)


def with_budget(attack: AttackSettings, value: float) -> Attack:
    """A copy of ``attack`` with its budget (eps or sigma) set to ``value``."""
    params = attack.params()
    if attack.budget is not None:
        params[attack.budget] = value
    return build_attack(attack.name, **params)
