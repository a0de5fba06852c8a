"""Screenshots of an Xvfb screen without ImageMagick: read the XWD file Xvfb keeps.

``Xvfb :N -screen 0 WxHx24 -fbdir DIR`` keeps its framebuffer in
``DIR/Xvfb_screen0`` as an XWD image (a big-endian header, a colormap, then
the pixels). A 24-bit screen is stored as a 32-bit ZPixmap, which is all this
reader accepts; anything else is a clear error rather than a garbled picture.
"""

from __future__ import annotations

import struct
from pathlib import Path

from app.qt import QtGui

_HEADER = struct.Struct(">25I")
_ZPIXMAP = 2
_LSB_FIRST = 0
_COLOR_ENTRY = 12  # pixel CARD32, r g b CARD16, flags and pad CARD8


class XwdError(ValueError):
    """The file is not an XWD image this reader understands."""


def read_xwd(data: bytes) -> QtGui.QImage:
    """Decode a 32-bit ZPixmap XWD image (what Xvfb writes for a 24-bit screen).

    Args:
        data: The whole XWD file.

    Returns:
        The picture as an RGB888 image (a copy; ``data`` may be released).

    Raises:
        XwdError: The header is short or the format is not 32-bit ZPixmap RGB.
    """
    if len(data) < _HEADER.size:
        raise XwdError(f"an XWD header needs {_HEADER.size} bytes, got {len(data)}")
    (header_size, version, fmt, _depth, width, height, _xoff, byte_order, _unit, _bit_order,
     _pad, bits_per_pixel, bytes_per_line, _visual, red, green, blue, _bits_rgb, _entries,
     ncolors, *_window) = _HEADER.unpack_from(data)
    if version != 7 or fmt != _ZPIXMAP or bits_per_pixel != 32:
        raise XwdError(
            f"only XWD version 7, 32-bit ZPixmap images are read (got version {version}, "
            f"format {fmt}, {bits_per_pixel} bits per pixel)"
        )
    if (red, green, blue) != (0xFF0000, 0xFF00, 0xFF):
        raise XwdError(f"unexpected colour masks {red:#x}/{green:#x}/{blue:#x}")
    start = header_size + ncolors * _COLOR_ENTRY
    if bytes_per_line < width * 4 or len(data) < start + bytes_per_line * height:
        raise XwdError(f"the file is too short for a {width}x{height} image")
    rows = b"".join(
        data[start + y * bytes_per_line : start + y * bytes_per_line + width * 4]
        for y in range(height)
    )
    # Each pixel is one 32-bit word 0x00RRGGBB, stored in the file's byte order.
    r, g, b = (2, 1, 0) if byte_order == _LSB_FIRST else (1, 2, 3)
    rgb = bytearray(width * height * 3)
    rgb[0::3], rgb[1::3], rgb[2::3] = rows[r::4], rows[g::4], rows[b::4]
    image = QtGui.QImage(bytes(rgb), width, height, width * 3, QtGui.QImage.Format.Format_RGB888)
    return image.copy()


def screenshot(fbdir: Path, out: Path) -> QtGui.QImage:
    """Save screen 0 of the Xvfb started with ``-fbdir fbdir`` as a PNG and return it.

    Raises:
        XwdError: The framebuffer file is not a readable XWD image.
        OSError: The framebuffer file or ``out`` cannot be read or written.
    """
    image = read_xwd((fbdir / "Xvfb_screen0").read_bytes())
    if not image.save(str(out), "PNG"):
        raise OSError(f"cannot save the screenshot to {out}")
    return image
