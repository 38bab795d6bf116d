"""The two ways an S3 transfer fails, free of either side's error types: the CLI maps them to its exit
codes (scipioncloud.commands.common.translate), the agent to its HTTP answers."""

from __future__ import annotations


class S3Error(Exception):
    """Any failure of this library that is not a bug."""


class BadRequest(S3Error):
    """The caller named something that cannot work (not an S3 address, no such storage class, a bad rate)."""


class TransferFailed(S3Error):
    """The request was sound but the transfer failed or was refused (a file changed, no space, a checksum
    mismatch, S3 said no)."""
