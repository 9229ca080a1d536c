"""RobustLab's library: data, models, training, attacks, defenses, evaluation, run store, jobs.

Pixels are floats in [0, 1] everywhere outside a model; every epsilon is in pixel units.
"""
__version__ = "0.1.0"
