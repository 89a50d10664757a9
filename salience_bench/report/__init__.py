"""Results on disk: tidy CSV tables, the JSON manifest, and figures."""

from .io import MANIFEST, atomic_path, git_commit, package_versions, write_csv, write_json, write_text

__all__ = ["MANIFEST", "atomic_path", "git_commit", "package_versions", "write_csv", "write_json", "write_text"]
