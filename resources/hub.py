"""The Hugging Face hub, where ``<task>_student_bundle`` pushes a bundle when its run config names a repo."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field


class HubResource(dg.ConfigurableResource):
    """A write token for the hub. ``distil_platform.definitions`` feeds it from ``dg.EnvVar("HF_TOKEN")``
    when that is set (the UI's resources page shows the variable, never the token); without one a push
    fails with what to set, and nothing else needs it."""

    token: str | None = Field(default=None, repr=False, description="Hugging Face write token (use dg.EnvVar).")

    def push(self, bundle_dir: str | Path, repo_id: str, *, private: bool = True) -> str:
        from distil_platform.bundle.hub import push_bundle

        return push_bundle(bundle_dir, repo_id, token=self.token, private=private)
