"""The one exception every malformed or unusable VHD image or stream ends in."""

from __future__ import annotations


class VhdError(Exception):
    """A VHD image or stream is malformed or cannot be used.

    ``field`` names the structure field at fault and ``offset`` its absolute byte offset in the
    file or stream, when there is one; ``path`` names the file.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        offset: int | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.offset = offset
        self.path = path

    def __str__(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.field is not None:
            where.append(self.field)
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def at(self, path: str) -> VhdError:
        """This error with ``path`` filled in where it was missing."""
        if self.path is None:
            self.path = path
        return self
