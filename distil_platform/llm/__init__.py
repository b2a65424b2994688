"""Async batch LLM client over litellm (cache, retries, budget). Imports no ML library at load."""

from distil_platform.llm.cache import cache_key, default_identity, normalise_identity, serving_identity
from distil_platform.llm.chat import (
    BudgetExceeded,
    ChatRequest,
    ChatResult,
    EndpointGone,
    ErrorRateExceeded,
    LLMError,
    StoreUnavailable,
    UnknownPriceError,
    request_timeout_s,
)
from distil_platform.llm.client import LLMClient
from distil_platform.llm.prices import chain_price_lookups, default_price_lookup, litellm_price_lookup

__all__ = [
    "BudgetExceeded",
    "ChatRequest",
    "ChatResult",
    "EndpointGone",
    "ErrorRateExceeded",
    "LLMClient",
    "LLMError",
    "StoreUnavailable",
    "UnknownPriceError",
    "cache_key",
    "chain_price_lookups",
    "default_identity",
    "default_price_lookup",
    "litellm_price_lookup",
    "normalise_identity",
    "request_timeout_s",
    "serving_identity",
]
