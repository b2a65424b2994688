"""Push a bundle to the Hugging Face hub (optional; the token comes from the ``hub`` resource, i.e.
``dg.EnvVar("HF_TOKEN")``, never from run config or logs)."""

from __future__ import annotations

from pathlib import Path

TOKEN_ENV = "HF_TOKEN"


class HubTokenMissingError(RuntimeError):
    """No token to push with."""


def push_bundle(bundle_dir: str | Path, repo_id: str, *, token: str | None, private: bool = True,
                commit_message: str | None = None) -> str:
    """Create (if needed) the model repo ``repo_id`` and upload the bundle directory to it; returns
    the repo's URL. Raises :class:`HubTokenMissingError` without a token, before any network call."""
    bundle_dir = Path(bundle_dir)
    if not token:
        raise HubTokenMissingError(
            f"pushing {bundle_dir.name} to the hub repo {repo_id!r} needs a Hugging Face token with write access: "
            f"set {TOKEN_ENV} in the environment Dagster runs in (the `hub` resource reads it as "
            f"dg.EnvVar({TOKEN_ENV!r})), or leave `push_to_hub` unset. The bundle is on disk at {bundle_dir}")
    if not (bundle_dir / "README.md").is_file():
        raise FileNotFoundError(f"{bundle_dir}: not a bundle (README.md missing)")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(bundle_dir), repo_id=repo_id, repo_type="model",
                      commit_message=commit_message or f"distil-platform bundle {bundle_dir.name}")
    return f"https://huggingface.co/{repo_id}"
