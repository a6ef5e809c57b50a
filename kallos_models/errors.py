"""User-facing errors.

Every exception a user can cause (bad flag, bad file, unknown asset, unreachable database)
derives from :class:`KallosError`. The CLI turns these into one ``Error: ...`` line and exit
status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class KallosError(Exception):
    """Base class of every error caused by input rather than by a bug."""


class ConfigError(KallosError):
    """Invalid settings: unknown config key, bad value, unparseable date."""


class DatabaseError(KallosError):
    """The database cannot be reached, or refused the credentials."""


class DataError(KallosError):
    """Input data is missing, malformed or insufficient."""


class ModelError(KallosError):
    """Unknown model or parameters the model does not accept."""


class ArtifactError(KallosError):
    """A model bundle is missing, tampered with, or would be overwritten."""


class TrackingError(KallosError):
    """MLflow refused a request, or a registry name, version or alias does not exist."""


class PromotionError(KallosError):
    """A version was not promoted: it fails a threshold, has no evaluation, or is retired."""


class GateRefusal(PromotionError):
    """A version was not promoted because its evaluation fails a threshold (not an error of
    the run: the CLI exits with status 3, as the drift alarm of ``score`` does)."""
