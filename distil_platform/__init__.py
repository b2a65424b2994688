"""distil-platform: prove, per task, that a small distilled model can replace a frontier LLM.

The top-level package is the plain-Python domain core (no Dagster imports outside
``assets/``, ``resources/``, ``sensors/`` and ``definitions.py``).
"""

__version__ = "0.1.0"
