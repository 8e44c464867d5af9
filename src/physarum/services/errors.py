"""Allocation failures, shared by the allocator, placement and the client proxy (which answers
503 with their reason)."""

from __future__ import annotations

from physarum.errors import PhysarumError


class AllocationError(PhysarumError):
    """An allocation that failed; ``code`` says why (also on the wire)."""

    code = "failed"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class AtCapacityError(AllocationError):
    code = "capacity"


class NoAllocatorError(AllocationError):
    """No allocator could be found or reached."""

    code = "no-allocator"


__all__ = ["AllocationError", "AtCapacityError", "NoAllocatorError"]
