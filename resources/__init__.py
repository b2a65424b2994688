"""Dagster resources wrapping model access and the results store.

Import from the submodules (``resources.models``, ``resources.store``); the names are re-exported
lazily so importing one resource never drags in the others.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "HubResource": "hub",
    "LLMResource": "models",
    "ModelStoreResource": "models",
    "ServingResource": "models",
    "ResultsStoreResource": "store",
    "TeacherEndpointResource": "teacher",
    "TrainerResource": "trainer",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
