"""Blobs as objects in an S3-compatible bucket (``[files] storage = "s3"``): every node of a pool
serves every file from the bucket, and the database stays small.

The client is aiobotocore (botocore's request signing and retries, on aiohttp, which the node
runs already): every request is a coroutine on the event loop, bodies stream in both directions,
and no thread is held per transfer as boto3 would need. It is imported only when this backend is
configured (``pip install 'chatserver[s3]'``).

A blob is the object ``PREFIX + ID``. An upload is buffered up to ``s3_part_mb`` (at least
5 MiB, S3's smallest part): a smaller file is one ``PutObject``, a larger one a multipart upload
whose parts go as they fill (so an upload holds at most one part in memory). An upload that
fails is aborted; what a killed node left (an unfinished multipart upload) is aborted by the
sweep of orphans (``delete(..., unfinished=True)``). Ranges are ``GetObject`` with ``Range``,
streamed.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...config import FilesConfig

log = logging.getLogger(__name__)

MIN_PART = 5 * 1024 * 1024  # S3's smallest part (but the last)
PAGE = 1000  # keys a DeleteObjects or a ListObjectsV2 page takes


class _ObjectWriter:
    def __init__(self, blobs: S3Blobs, key: str) -> None:
        self._blobs, self._key = blobs, key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    async def write(self, index: int, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= self._blobs.part_size:
            await self._put_part()

    async def _put_part(self) -> None:
        client, bucket = self._blobs.client, self._blobs.bucket
        if self._upload_id is None:
            created = await client.create_multipart_upload(Bucket=bucket, Key=self._key)
            self._upload_id = str(created["UploadId"])
        number = len(self._parts) + 1
        body, self._buffer = io.BytesIO(self._buffer), bytearray()
        put = await client.upload_part(
            Bucket=bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=body
        )
        self._parts.append({"PartNumber": number, "ETag": put["ETag"]})

    async def finish(self) -> None:
        client, bucket = self._blobs.client, self._blobs.bucket
        if self._upload_id is None:
            body, self._buffer = io.BytesIO(self._buffer), bytearray()
            await client.put_object(Bucket=bucket, Key=self._key, Body=body)
            return
        if self._buffer:
            await self._put_part()
        await client.complete_multipart_upload(
            Bucket=bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    async def abort(self) -> None:
        self._buffer = bytearray()
        client, bucket = self._blobs.client, self._blobs.bucket
        if self._upload_id is not None:
            with contextlib.suppress(client.exceptions.NoSuchUpload):
                await client.abort_multipart_upload(
                    Bucket=bucket, Key=self._key, UploadId=self._upload_id
                )
        await client.delete_object(Bucket=bucket, Key=self._key)


class S3Blobs:
    kind = "s3"
    in_database = False
    writes_ahead = 1  # parts go in order, one at a time

    def __init__(self, client: Any, stack: contextlib.AsyncExitStack, config: FilesConfig) -> None:
        self.client = client
        self._stack = stack
        self.bucket = config.s3_bucket
        self.prefix = config.s3_prefix
        self.part_size = max(MIN_PART, config.s3_part_mb * 1024 * 1024)

    @classmethod
    async def open(cls, config: FilesConfig) -> S3Blobs:
        """A client for the configured endpoint; the bucket must exist (checked here, so a
        wrong name or credential stops the node at its start, not at the first upload)."""
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=config.s3_endpoint or None,
                region_name=config.s3_region,
                aws_access_key_id=config.s3_access_key or None,
                aws_secret_access_key=config.s3_secret_key or None,
                config=AioConfig(
                    s3={"addressing_style": "path"},
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=10,
                    read_timeout=60,
                ),
            )
        )
        try:
            await client.head_bucket(Bucket=config.s3_bucket)
        except BaseException:
            await stack.aclose()
            raise
        return cls(client, stack, config)

    def key(self, blob: int) -> str:
        return f"{self.prefix}{blob}"

    def writer(self, blob: int, chunk_size: int) -> _ObjectWriter:
        return _ObjectWriter(self, self.key(blob))

    async def read(self, blob: int, chunk_size: int, start: int, end: int) -> AsyncIterator[bytes]:
        try:
            got = await self.client.get_object(
                Bucket=self.bucket, Key=self.key(blob), Range=f"bytes={start}-{end}"
            )
        except self.client.exceptions.NoSuchKey:
            return
        async with got["Body"] as body:
            while data := await body.read(chunk_size):
                yield data

    async def delete(self, blobs: list[int], *, unfinished: bool = False) -> None:
        for at in range(0, len(blobs), PAGE):
            keys = [{"Key": self.key(blob)} for blob in blobs[at : at + PAGE]]
            await self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
            )
        if unfinished:
            for blob in blobs:
                listed = await self.client.list_multipart_uploads(
                    Bucket=self.bucket, Prefix=self.key(blob)
                )
                for upload in listed.get("Uploads", ()):
                    if upload["Key"] == self.key(blob):
                        with contextlib.suppress(self.client.exceptions.NoSuchUpload):
                            await self.client.abort_multipart_upload(
                                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                            )

    async def stored(self) -> AsyncIterator[list[int]]:
        """Objects, then unfinished multipart uploads (a killed node's)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix, PaginationConfig={"PageSize": PAGE}
        )
        async for page in pages:
            found = self._blobs(item["Key"] for item in page.get("Contents", ()))
            if found:
                yield found
        uploads = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        async for page in uploads:
            found = self._blobs(item["Key"] for item in page.get("Uploads", ()))
            if found:
                yield found

    def _blobs(self, keys: Any) -> list[int]:
        out = []
        for key in keys:
            tail = key[len(self.prefix) :]
            if tail.isdigit():
                out.append(int(tail))
        return out

    async def close(self) -> None:
        await self._stack.aclose()
