"""The KD terms, one file each, registered by name (``distill.<name>``); see :mod:`.base` for the interface.

The built-in terms run in the order of ``BUILTIN`` (the order of the losses in every log); a term registered later
(a plugin, a test file) runs after them.
"""
import importlib

from .base import (
    BuildContext,
    FeatureConfig,
    FeatureTerm,
    KDInputs,
    Term,
    get_term,
    register_term,
    term_configs,
    term_types,
    unregister_term,
)

#: The built-in terms, one module each, imported (hence registered) in this order.
BUILTIN = ("pixel", "cwd", "icsd", "holistic", "cwd_feat", "pairwise", "hetero")
for _module in BUILTIN:
    importlib.import_module(f".{_module}", __name__)

__all__ = ["BUILTIN", "BuildContext", "FeatureConfig", "FeatureTerm", "KDInputs", "Term", "get_term", "register_term",
           "term_configs", "term_types", "unregister_term"]
