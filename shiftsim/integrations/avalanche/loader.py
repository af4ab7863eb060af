"""Importing Avalanche: on first use only, with the torchvision compatibility step.

Avalanche imports torchvision. A CPU build of torch (e.g. ``torch==2.13.0+cpu``) with the PyPI
torchvision wheel of the same release fails at ``import torchvision`` with ``operator
torchvision::nms does not exist``: the wheel's compiled operators do not load against that torch
build, and torchvision then registers fake kernels for two operators it never defined.
:func:`import_avalanche` first imports torchvision as it is; only when that fails with exactly
this error does it define the two missing operator schemas (``torchvision::nms``,
``torchvision::qnms``) with ``torch.library`` and import torchvision again. Where torchvision
imports normally the step does nothing. Afterwards only ``torchvision.ops`` kernels (detection
operators) stay unusable; Avalanche's classification code never calls them. Once shiftsim has
imported Avalanche (any function of the integration does), user code can ``import avalanche``
normally in the same process.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import re
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from ...errors import ShiftsimError

INSTALL_HINT = ("the Avalanche integration needs the extra: pip install 'shiftsim[avalanche]' "
                "(avalanche-lib>=0.6 and a torchvision matching your torch)")

#: schemas torchvision's ``_meta_registrations`` needs when its compiled ops did not load
_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
#: the one error the compatibility step answers (any other import failure is raised as it is)
_MISSING_OPERATOR = re.compile(r"\boperator torchvision::\w+ does not exist\b")
#: the torch.library fragment holding those schemas, when the compatibility step ran
_compat_library: torch.library.Library | None = None
#: EvaluationPlugin(loggers=[]) says so at every construction; shiftsim asks for that on purpose
_NO_LOGGERS = "No loggers specified"



def _forget_torchvision() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def _is_missing_operator(exc: BaseException) -> bool:
    """Whether ``exc`` is exactly the failure the compatibility step repairs: torchvision's
    ``_meta_registrations`` asking for an operator its compiled extension never defined
    (``RuntimeError: operator torchvision::nms does not exist``)."""
    return isinstance(exc, RuntimeError) and _MISSING_OPERATOR.search(str(exc)) is not None


def _import_torchvision(importer: Callable[[str], ModuleType] = importlib.import_module,
                        library: Callable[[str, str], Any] | None = None) -> bool:
    """Import torchvision; apply the compatibility step only if the plain import fails with the
    missing-operator error (see the module docstring). Returns whether the step ran.

    ``importer`` and ``library`` (``torch.library.Library``) are parameters so that tests can
    show the step does nothing unless exactly that error happens.
    """
    global _compat_library
    try:
        importer("torchvision")
        return False  # torchvision imports normally: nothing to do
    except ImportError as exc:
        raise ShiftsimError(f"torchvision is not installed; {INSTALL_HINT}") from exc
    except RuntimeError as exc:
        if not _is_missing_operator(exc):
            raise
        first_error = exc
    # Compatibility step. torchvision's compiled extension (_C.so) did not load against this
    # torch build (a CPU torch with the PyPI torchvision wheel, built for the CUDA torch), so
    # the "torchvision::nms" / "torchvision::qnms" operators were never defined, and
    # torchvision/_meta_registrations.py fails registering fake kernels for them. Defining the
    # two schemas (no kernels) lets torchvision import; calling torchvision.ops.nms still fails
    # cleanly ("Couldn't load custom C++ ops"), and Avalanche never calls it.
    _forget_torchvision()  # drop the half-imported package before trying again
    lib = (library or torch.library.Library)("torchvision", "FRAGMENT")
    for schema in _TORCHVISION_SCHEMAS:
        with contextlib.suppress(RuntimeError):  # already defined: keep that definition
            lib.define(schema)
    _compat_library = lib
    try:
        importer("torchvision")
    except Exception as exc:
        _forget_torchvision()
        raise ShiftsimError(
            f"torchvision does not import with this torch ({torch.__version__}): {first_error}; "
            f"install the torchvision release that matches torch. {INSTALL_HINT}") from exc
    return True


def import_avalanche() -> ModuleType:
    """Import Avalanche (with the torchvision compatibility step when needed) and return it.

    Raises :class:`~shiftsim.errors.ShiftsimError` with the install command when the extra is
    missing. Every function of this module calls it; call it yourself before ``import
    avalanche...`` on a machine where torchvision does not import by itself.
    """
    if "avalanche.training" in sys.modules:
        return sys.modules["avalanche"]
    if importlib.util.find_spec("avalanche") is None:
        raise ShiftsimError(f"avalanche-lib is not installed; {INSTALL_HINT}")
    _import_torchvision()
    with warnings.catch_warnings():
        # qpsolvers (pulled in by Avalanche's GEM) warns at import that no QP solver is installed
        warnings.filterwarnings("ignore", message="no QP solver", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        avalanche = importlib.import_module("avalanche")
        version = getattr(avalanche, "__version__", "0")
        major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
        if major_minor < (0, 6):
            raise ShiftsimError(f"avalanche-lib {version} is too old; {INSTALL_HINT}")
        for sub in ("avalanche.benchmarks.scenarios", "avalanche.benchmarks.scenarios.online",
                    "avalanche.benchmarks.utils", "avalanche.core", "avalanche.training",
                    "avalanche.training.plugins"):
            importlib.import_module(sub)
    return avalanche


def available() -> bool:
    """Whether the Avalanche extra is installed and importable here (imports it)."""
    try:
        import_avalanche()
    except ShiftsimError:
        return False
    return True
