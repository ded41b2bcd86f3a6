"""Stores beside the queue: blobs (files) for results and large payloads."""

from __future__ import annotations

from .blobs import BLOB_REF_PREFIX, BlobStore, FileBlobStore, open_blobs

__all__ = ["BLOB_REF_PREFIX", "BlobStore", "FileBlobStore", "open_blobs"]
