"""The robustness audit: the AutoAttack cascade (:mod:`core.audit.cascade`) and automatic checks
for attack failure with the verdict they give (:mod:`core.audit.failure`)."""
from core.audit.cascade import ROBUST, VERSIONS, Stage, cascade, stages
from core.audit.failure import CHECKS, indicators, report, verdict

__all__ = ["CHECKS", "ROBUST", "VERSIONS", "Stage", "cascade", "stages", "indicators", "report",
           "verdict"]
