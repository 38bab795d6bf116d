"""The two ways a command fails: the operator asked for something that does not exist or cannot work
(exit 2, like a usage error), or AWS/the instance refused or broke while doing it (exit 1)."""

from __future__ import annotations

from botocore.exceptions import ClientError


class CliError(Exception):
    """A failure the CLI reports in one line; `data` adds fields to the --json error document (e.g. the
    id of an instance that exists although the command failed), so scripts need not parse the text."""

    exit_code = 1

    def __init__(self, message: str, **data) -> None:
        super().__init__(message)
        self.data = data


class BadInput(CliError):
    """Unknown image, region, instance, volume, type, or an impossible combination: exit status 2."""

    exit_code = 2


class OperationFailed(CliError):
    """The request was sound but the work failed or was refused (AWS error, safety check): exit status 1."""

    exit_code = 1


class Interrupted(CliError):
    """Ctrl-C: what exists now and how to remove it is in the message; exit status 130, as a shell says."""

    exit_code = 130


# AWS error codes that mean "the thing you named does not exist": the operator's input, not our failure.
NOT_FOUND_CODES = {
    "InvalidInstanceID.NotFound": "instance",
    "InvalidInstanceID.Malformed": "instance",
    "InvalidAMIID.NotFound": "image",
    "InvalidAMIID.Malformed": "image",
    "InvalidVolume.NotFound": "volume",
    "InvalidVolumeID.Malformed": "volume",
    "InvalidSnapshot.NotFound": "snapshot",
    "InvalidKeyPair.NotFound": "key pair",
    "InvalidInstanceType": "instance type",
    "InvalidParameterValue": "parameter",
}


def from_client_error(exc: ClientError, what: str = "") -> Exception:
    """Turn a boto3 ClientError into BadInput (unknown thing) or OperationFailed, with AWS's message."""
    code = exc.response.get("Error", {}).get("Code", "")
    message = exc.response.get("Error", {}).get("Message", str(exc))
    prefix = f"{what}: " if what else ""
    if code in NOT_FOUND_CODES:
        return BadInput(f"{prefix}{message} ({code})")
    return OperationFailed(f"{prefix}AWS refused: {message} ({code})")
