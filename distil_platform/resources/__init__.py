"""Dagster resources wrapping model access and the results store."""

from .models import LLMResource, ModelStoreResource, ServingResource
from .store import ResultsStoreResource

__all__ = ["LLMResource", "ModelStoreResource", "ResultsStoreResource", "ServingResource"]
