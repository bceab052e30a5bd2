"""Multipart upload (not yet): every call is NotImplemented, listed as such."""

from __future__ import annotations

from .app import not_implemented


def route(method: str, query: dict):
    return not_implemented("multipart upload")


list_uploads = not_implemented("ListMultipartUploads")
