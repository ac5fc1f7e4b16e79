"""The VHD disk image format: fixed, dynamic and differencing images, streamed in one pass.

Pure structures and plans; file access through :class:`vhd.file.File`. The main entry points:
:class:`Image` (open, read, write, chains), :func:`create`, :func:`convert`, :func:`check`, the
planners in :mod:`vhd.plan` and the import parser :class:`StreamParser`.
"""

from vhd.check import Problem, check
from vhd.convert import convert, open_disk, probe, source_format
from vhd.create import create, create_differencing
from vhd.disk import Disk, RawDisk
from vhd.elements import Copy, Element, Literal, Zeros
from vhd.errors import VhdError
from vhd.image import Image
from vhd.plan import Plan, plan_fixed, plan_raw, plan_vhd
from vhd.stream import Block, Data, End, Metadata, StreamParser

__all__ = [
    "Block",
    "Copy",
    "Data",
    "Disk",
    "Element",
    "End",
    "Image",
    "Literal",
    "Metadata",
    "Plan",
    "Problem",
    "RawDisk",
    "StreamParser",
    "VhdError",
    "Zeros",
    "check",
    "convert",
    "create",
    "create_differencing",
    "open_disk",
    "plan_fixed",
    "plan_raw",
    "plan_vhd",
    "probe",
    "source_format",
]
