"""The XWD reader the Xvfb tests take their screenshots with."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.app.xwd import XwdError, read_xwd, screenshot


def _xwd(width: int, height: int, pixels: list[int], *, lsb: bool, pad: int = 0) -> bytes:
    name = b"screen\0"
    header_size = 100 + len(name)
    bytes_per_line = width * 4 + pad
    header = struct.pack(
        ">25I",
        header_size, 7, 2, 24, width, height, 0, 0 if lsb else 1, 32, 0 if lsb else 1, 32, 32,
        bytes_per_line, 4, 0xFF0000, 0xFF00, 0xFF, 8, 256, 1, width, height, 0, 0, 0,
    )
    colormap = b"\0" * 12
    order = "<" if lsb else ">"
    rows = b"".join(
        struct.pack(f"{order}{width}I", *pixels[y * width : (y + 1) * width]) + b"\xee" * pad
        for y in range(height)
    )
    return header + name + colormap + rows


@pytest.mark.parametrize("lsb", [True, False])
def test_pixels_come_out_in_their_colours_whatever_the_byte_order(lsb: bool) -> None:
    pixels = [0xFF0000, 0x00FF00, 0x0000FF, 0x123456, 0xFFFFFF, 0x000000]
    image = read_xwd(_xwd(3, 2, pixels, lsb=lsb, pad=8))
    assert (image.width(), image.height()) == (3, 2)
    got = [image.pixel(x, y) & 0xFFFFFF for y in range(2) for x in range(3)]
    assert got == pixels


def test_a_format_it_cannot_read_is_named() -> None:
    data = bytearray(_xwd(1, 1, [0], lsb=True))
    struct.pack_into(">I", data, 44, 16)  # bits_per_pixel
    with pytest.raises(XwdError, match="16 bits per pixel"):
        read_xwd(bytes(data))
    with pytest.raises(XwdError, match="header"):
        read_xwd(b"short")
    with pytest.raises(XwdError, match="too short"):
        read_xwd(_xwd(4, 4, [0] * 16, lsb=True)[:-5])


@pytest.mark.gui
@pytest.mark.skipif(not shutil.which("Xvfb"), reason="needs Xvfb")
def test_a_screenshot_of_a_real_xvfb_screen(tmp_path: Path) -> None:
    fbdir = tmp_path / "fb"
    fbdir.mkdir()
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "64x48x24", "-wr",
         "-fbdir", str(fbdir), "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    try:
        with os.fdopen(read) as f:
            assert f.readline().strip().isdigit(), "Xvfb did not report its display"
        image = screenshot(fbdir, tmp_path / "shot.png")
    finally:
        xvfb.terminate()
        xvfb.wait(timeout=10)
    assert (image.width(), image.height()) == (64, 48)
    assert {image.pixel(x, y) & 0xFFFFFF for x in range(64) for y in range(48)} == {0xFFFFFF}
    assert (tmp_path / "shot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
