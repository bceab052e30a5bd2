"""Every failure a caller of the engine can act on, as one exception type each.

Each class carries a stable problem ``code`` (the ``code`` member of problem+json, part of
the API contract: never rename one) and an HTTP ``status`` hint. The HTTP layer maps them
in one place (``artstored.api.problems``), the CLI to one line and an exit code, the FUSE
adapter to an errno. The engine itself never imports HTTP code: the status is only a hint.
"""

from __future__ import annotations


class ArtStoreError(Exception):
    """Base of all engine errors. ``detail`` is safe to show to the caller."""

    code = "internal_error"
    status = 500
    title = "Internal error"

    def __init__(self, detail: str | None = None, *, code: str | None = None, **extra):
        self.detail = detail or self.title
        if code:  # a more specific stable code than the class's own
            self.code = code
        # Extra members end up in the problem document (e.g. the current mode).
        self.extra = extra
        super().__init__(self.detail)


# --- the caller sent something wrong (4xx) -----------------------------------------------


class ValidationError(ArtStoreError):
    """A field of the request is invalid; ``code`` names which rule was broken."""

    code = "validation_failed"
    status = 422
    title = "Invalid request"


class BadRequest(ValidationError):
    """The request is malformed (syntax rather than content)."""

    code = "bad_request"
    status = 400
    title = "Malformed request"


class ChecksumMismatch(ArtStoreError):
    code = "checksum_mismatch"
    status = 422
    title = "Declared checksum does not match the content"


class AttrTooLarge(ArtStoreError):
    code = "attr_too_large"
    status = 422
    title = "Metadata too large"


class UploadTooLarge(ArtStoreError):
    code = "upload_too_large"
    status = 413
    title = "Upload exceeds the size limit"


class NotFound(ArtStoreError):
    code = "not_found"
    status = 404
    title = "Not found"


class FileNotFound(NotFound):
    code = "file_not_found"
    title = "No such file"


class PreconditionFailed(ArtStoreError):
    code = "precondition_failed"
    status = 412
    title = "Precondition failed"


class RangeNotSatisfiable(ArtStoreError):
    code = "range_not_satisfiable"
    status = 416
    title = "Range not satisfiable"


# --- the element's state refuses the operation (409) -------------------------------------


class ModeNotAllowed(ArtStoreError):
    """The element's mode does not allow this operation; ``extra['mode']`` names the mode."""

    code = "mode_not_allowed"
    status = 409
    title = "Operation not allowed in the element's mode"


class TransitionNotAllowed(ArtStoreError):
    code = "transition_not_allowed"
    status = 409
    title = "Mode transition not allowed"


class ConfirmationRequired(ArtStoreError):
    code = "confirmation_required"
    status = 409
    title = "This mode transition needs an explicit confirmation"


class FileDeleted(ArtStoreError):
    """The file was deleted here: a replica of it is not taken (no resurrection)."""

    code = "file_deleted"
    status = 410
    title = "File was deleted"


class Conflict(ArtStoreError):
    code = "conflict"
    status = 409
    title = "Conflict"


# --- capacity ------------------------------------------------------------------------------


class StorageFull(ArtStoreError):
    """No disk root can take the upload without crossing its reserve."""

    code = "storage_full"
    status = 507
    title = "Insufficient storage"


class DiskOffline(ArtStoreError):
    """A configured disk root is not usable (not mounted, identity file missing): its files
    cannot be read or written until it is back. Nothing is ever written in its place."""

    code = "disk_offline"
    status = 503
    title = "A disk is offline"


class Busy(ArtStoreError):
    """The file is being moved into place by a commit that has not finished; try again."""

    code = "busy"
    status = 503
    title = "Try again"


def storage_error(exc: OSError) -> BaseException:
    """The error a caller can act on for an OSError from a write: StorageFull for ENOSPC and
    EDQUOT (507), the OSError itself otherwise."""
    if exc.errno in (28, 122):  # ENOSPC, EDQUOT
        err = StorageFull(f"the disk is full: {exc.strerror}")
        err.__cause__ = exc
        return err
    return exc


# --- authentication and authorisation (raised by artstored.auth) -------------------------


class Unauthorized(ArtStoreError):
    code = "unauthorized"
    status = 401
    title = "Authentication required"


class Forbidden(ArtStoreError):
    code = "forbidden"
    status = 403
    title = "Not allowed for this account"


# --- the store itself ---------------------------------------------------------------------


class StoreLocked(ArtStoreError):
    """Another process (a daemon, or an offline command) holds the data directory."""

    code = "store_locked"
    status = 503
    title = "Data directory in use by another process"


class StoreCorrupt(ArtStoreError):
    code = "store_corrupt"
    status = 500
    title = "Store is inconsistent"


class NotReady(ArtStoreError):
    code = "not_ready"
    status = 503
    title = "Service is starting"
