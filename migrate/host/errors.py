"""The XenAPI error: a code and its string parameters, as every face of the host reports it.

The codes are xapi's (``ocaml/xapi-consts/api_errors.ml``); clients such as Xen Orchestra
branch on them, so no code here is invented.
"""

from __future__ import annotations

# Calls and sessions
MESSAGE_METHOD_UNKNOWN = "MESSAGE_METHOD_UNKNOWN"
MESSAGE_PARAMETER_COUNT_MISMATCH = "MESSAGE_PARAMETER_COUNT_MISMATCH"
SESSION_AUTHENTICATION_FAILED = "SESSION_AUTHENTICATION_FAILED"
SESSION_INVALID = "SESSION_INVALID"
SESSION_NOT_REGISTERED = "SESSION_NOT_REGISTERED"
INTERNAL_ERROR = "INTERNAL_ERROR"

# Values and records
HANDLE_INVALID = "HANDLE_INVALID"
UUID_INVALID = "UUID_INVALID"
FIELD_TYPE_ERROR = "FIELD_TYPE_ERROR"
INVALID_VALUE = "INVALID_VALUE"
EVENT_FROM_TOKEN_PARSE_FAILURE = "EVENT_FROM_TOKEN_PARSE_FAILURE"

# Operations
OPERATION_NOT_ALLOWED = "OPERATION_NOT_ALLOWED"
TASK_CANCELLED = "TASK_CANCELLED"
VDI_IN_USE = "VDI_IN_USE"
VDI_IO_ERROR = "VDI_IO_ERROR"
VDI_TOO_SMALL = "VDI_TOO_SMALL"
IMPORT_ERROR = "IMPORT_ERROR"
SR_FULL = "SR_FULL"
OTHER_OPERATION_IN_PROGRESS = "OTHER_OPERATION_IN_PROGRESS"

# VMs, their disks and migration
VM_BAD_POWER_STATE = "VM_BAD_POWER_STATE"
VM_MIGRATE_FAILED = "VM_MIGRATE_FAILED"
DEVICE_ALREADY_EXISTS = "DEVICE_ALREADY_EXISTS"
HOST_NOT_ENOUGH_FREE_MEMORY = "HOST_NOT_ENOUGH_FREE_MEMORY"
HOST_CANNOT_ATTACH_NETWORK = "HOST_CANNOT_ATTACH_NETWORK"
INTERFACE_HAS_NO_IP = "INTERFACE_HAS_NO_IP"


class ApiError(Exception):
    """A XenAPI failure: an error code and its string parameters (``ErrorDescription``)."""

    def __init__(self, code: str, *params: object) -> None:
        self.code = code
        self.params = [str(p) for p in params]
        super().__init__(code, *self.params)

    @property
    def description(self) -> list[str]:
        """``[code, param, ...]`` as it travels."""
        return [self.code, *self.params]
