"""cryonb: literate, notebook-first PyTorch package for cryo-EM heterogeneity analysis.

Submodules are imported lazily (``cryonb.io``, ``cryonb.projection``, ...), so ``import cryonb``
and the ``cryonb`` command start fast.
"""
__version__ = "0.1.0"

import importlib as _importlib

_SUBMODULES = ["core", "distributed", "fourier", "geometry", "ctf", "io", "data", "structure", "restraints", "projection",
               "reconstruction", "simulate", "datasets", "training", "synthetic", "methods", "analysis", "cryobench",
               "widgets", "report", "demo", "commands", "cli"]
__all__ = ["__version__"] + _SUBMODULES


def __getattr__(name):
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'cryonb' has no attribute {name!r}")


def __dir__():
    return __all__
