"""The upload half of the Store's write API: a writer for the bytes, the attr record built
and signed, the hand-off to the group commit, and S3 buckets (an object's name is part of
its upload). ``Store`` inherits it; it uses the store's config, disks, mode, view, node
identity and committer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from . import attrs as A
from . import buckets, ids
from . import layout as L
from . import modes as M
from . import wal as W
from .catalog import CatalogEntry
from .errors import ChecksumMismatch, ModeNotAllowed, UploadTooLarge, ValidationError
from .groupcommit import PreparedUpload
from .ingest import DIRECT_BYTES, BufferedUpload, UploadWriter

PERMANENT, TEMPORARY = "permanent", "temporary"
TTL_DAYS_MIN, TTL_DAYS_MAX, TTL_DAYS_DEFAULT = 1, 365, 30


@dataclass(frozen=True)
class UploadRequest:
    """What a client says about an upload besides its bytes (already parsed, not yet
    validated: ``Store.prepare_upload`` validates)."""

    original_filename: str | None
    content_type: str | None = None
    description: str | None = None
    custom_attributes: dict | None = None
    retention_policy: str | None = None
    ttl_days: int | None = None
    declared_sha256: str | None = None
    bucket: str | None = None         # an S3 name (engine.buckets): the bucket must exist
    object_key: str | None = None


class Uploads:
    """Store's upload methods (Store inherits them; see the module docstring)."""

    def begin_upload(self, expected_size: int = 0) -> UploadWriter:
        """A writer for a new upload on the disk with the most room.

        Raises ModeNotAllowed, UploadTooLarge (``expected_size`` over the limit) or
        StorageFull before any byte is written.
        """
        self.require(M.UPLOAD)
        if expected_size > self.config.max_upload_bytes:
            raise UploadTooLarge(
                f"upload of {expected_size} bytes exceeds the limit of "
                f"{self.config.max_upload_bytes}", limit=self.config.max_upload_bytes)
        disk, _ = self.disks.choose(expected_size)
        return UploadWriter(self.disks, disk, self.config.max_upload_bytes,
                            direct=expected_size >= DIRECT_BYTES)

    def retention_for(self, policy: str | None, ttl_days: int | None) -> tuple[str, int | None]:
        """(policy, ttl_days) after defaults and the mode's rules; raises ValidationError or
        ModeNotAllowed (a permanent upload to an edit element)."""
        mode = self.mode
        if policy in (None, ""):
            policy = TEMPORARY if mode == M.EDIT else PERMANENT
        if policy not in (PERMANENT, TEMPORARY):
            raise ValidationError(f"retention_policy must be {PERMANENT} or {TEMPORARY}",
                                  code="invalid_retention")
        if policy == PERMANENT:
            if mode == M.EDIT:
                raise ModeNotAllowed("an edit element keeps only temporary files",
                                     mode=mode, operation="upload_permanent")
            if ttl_days is not None:
                raise ValidationError("ttl_days applies to temporary files only",
                                      code="invalid_retention")
            return policy, None
        ttl = TTL_DAYS_DEFAULT if ttl_days is None else ttl_days
        if not isinstance(ttl, int) or isinstance(ttl, bool) or \
                not TTL_DAYS_MIN <= ttl <= TTL_DAYS_MAX:
            raise ValidationError(f"ttl_days must be {TTL_DAYS_MIN}-{TTL_DAYS_MAX}",
                                  code="invalid_retention")
        return policy, ttl

    def finish_upload(self, writer: UploadWriter, request: UploadRequest,
                      actor: W.Actor) -> PreparedUpload:
        """``writer.finish()`` then ``prepare_upload``: one call, so that a shell makes one
        thread hop for both. Raises what either raises; the caller then aborts the writer."""
        writer.finish()
        return self.prepare_upload(writer, request, actor)

    def prepare_upload(self, writer: UploadWriter, request: UploadRequest,
                       actor: W.Actor) -> PreparedUpload:
        """Validate the finished upload and build its attr record.

        ``writer.finish()`` must have been called. Raises ChecksumMismatch, ValidationError,
        AttrTooLarge or ModeNotAllowed; the caller then aborts the writer (nothing is kept).
        """
        name = A.validate_original_filename(request.original_filename)
        policy, ttl = self.retention_for(request.retention_policy, request.ttl_days)
        if request.declared_sha256 is not None:
            declared = request.declared_sha256.strip().lower()
            if declared != writer.sha256_hex:
                raise ChecksumMismatch(
                    f"declared sha256 {declared[:64]} but the content hashes to "
                    f"{writer.sha256_hex}", declared=declared[:64], actual=writer.sha256_hex)
        now = _now()
        file_id = ids.new_file_id(now.timestamp())
        storage_name = L.storage_filename(name, actor.name, now, file_id)
        attr = {
            "schema_version": A.SCHEMA_VERSION,
            "file_id": file_id,
            "original_filename": name,
            "storage_filename": storage_name,
            "file_size": writer.size,
            "content_type": A.validate_content_type(request.content_type),
            "created_at": A.format_time(now),
            "created_by_id": actor.id,
            "created_by_username": actor.name,
            "description": A.validate_description(request.description),
            "version": 1,
            "checksum_sha256": writer.sha256_hex,
            "custom_attributes": A.validate_custom_attributes(request.custom_attributes),
            **self._s3_name(request),
            "xxh3_128": writer.xxh3_hex,
            "origin_node": self.node.node_id,
            "retention_policy": policy,
            "expires_at": A.format_time(now + timedelta(days=ttl)) if ttl else None,
            "updated_at": None, "updated_by_id": None, "updated_by_username": None,
        }
        attr["signature"] = self.node.sign(A.fixity_payload(attr))
        attr["change_signature"] = self.node.sign(A.record_payload(attr))
        data = A.encode(attr)
        entry = CatalogEntry(attr=attr, disk=writer.disk.disk_id,
                             rel=L.object_relpath(now, storage_name))
        return PreparedUpload(writer=writer, entry=entry, attr_bytes=data, actor=actor)

    def _s3_name(self, request: UploadRequest) -> dict:
        """The attr fields of an upload's S3 name; none without one. NotFound
        ``bucket_not_found``, ValidationError for a bad key."""
        if request.bucket is None and request.object_key is None:
            return {}
        key = buckets.validate_object_key(request.object_key)
        with self.view.snapshot() as snap:
            snap.buckets().require_bucket(request.bucket or "")
        return {"bucket": request.bucket, "object_key": key}

    def create_bucket(self, name: str, actor: W.Actor) -> dict:
        """See ``buckets.create`` (durable on return; Conflict ``bucket_exists``)."""
        record = buckets.create(self.env, name, actor)
        self.notify_committed()
        return record

    def delete_bucket(self, name: str, actor: W.Actor) -> None:
        """See ``buckets.delete`` (NotFound, Conflict ``bucket_not_empty``)."""
        buckets.delete(self.env, name, actor)
        self.notify_committed()

    def commit_upload(self, prepared: PreparedUpload):
        """Hand a prepared upload to the group commit; returns a concurrent Future that
        resolves to the attr record once the file, its sidecar and its catalog entry are
        durable (or to the error, the files removed)."""
        return self.committer.submit(prepared)

    def prepare_buffered(self, chunks, request: UploadRequest,
                         actor: W.Actor) -> PreparedUpload:
        """A PreparedUpload for content already in memory: no disk I/O here (the group commit
        writes it with its batch), so an event loop may call it directly. Raises what
        ``begin_upload`` and ``prepare_upload`` raise; then nothing stays claimed."""
        buffered = self.buffer(chunks)
        try:
            return self.prepare_upload(buffered, request, actor)
        except BaseException:
            buffered.abort()   # its size was claimed on the disk
            raise

    def buffer(self, chunks) -> BufferedUpload:
        """An upload of bytes already in memory, on the disk with the most room: hashed
        now, written by the group commit with its batch (no disk I/O here). Raises
        ModeNotAllowed, UploadTooLarge, StorageFull."""
        self.require(M.UPLOAD)
        chunks = list(chunks)
        disk, _ = self.disks.choose(sum(len(c) for c in chunks))
        return BufferedUpload(self.disks, disk, self.config.max_upload_bytes, chunks)

    def ingest(self, chunks, request: UploadRequest, actor: W.Actor) -> dict:
        """Blocking upload of an iterable of byte chunks; returns the attr record."""
        writer = self.begin_upload()
        try:
            writer.write_many(list(chunks))
            prepared = self.finish_upload(writer, request, actor)
        except BaseException:
            writer.abort()
            raise
        return self.commit_upload(prepared).result()


def _now() -> datetime:
    return datetime.now(timezone.utc)
