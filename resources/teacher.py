"""The teacher endpoint of profiles whose teacher is not served locally (the ``gpu`` profile's
open-weight teacher behind an OpenAI-compatible URL)."""

from __future__ import annotations

import dagster as dg
from pydantic import Field


class TeacherEndpointResource(dg.ConfigurableResource):
    """Endpoint and key for an endpoint teacher whose task YAML names none. ``distil_platform.definitions``
    feeds both from ``dg.EnvVar("DISTIL_TEACHER_API_BASE")`` / ``dg.EnvVar("DISTIL_TEACHER_API_KEY")``
    when those are set, so the UI's resources page shows the source and never the key. The key is
    given only to the client of that endpoint, never to a locally served model."""

    api_base: str | None = Field(default=None, description="OpenAI-compatible .../v1 URL of the teacher.")
    api_key: str | None = Field(default=None, repr=False, description="The endpoint's API key (use dg.EnvVar).")
