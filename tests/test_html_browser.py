"""The HTML report renders in a real headless browser (Chromium from the OS packages)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import models
import numpy as np
import pytest
from typer.testing import CliRunner

from quantcli.cli.app import app

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
WIDTH, HEIGHT = 1100, 1400
# Set to a path to keep the screenshot (how docs/report-screenshot.png was made).
KEEP = os.environ.get("QUANTCLI_SCREENSHOT")


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ]
    assert CHROMIUM is not None
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=False)


def _png_pixels(path: Path) -> tuple[int, int, set[bytes]]:
    """Width, height and the set of distinct RGB pixels of a non-interlaced 8-bit PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks += body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6)
    channels = 3 if color == 2 else 4
    raw = zlib.decompress(chunks)
    stride = width * channels
    previous = bytearray(stride)
    colors: set[bytes] = set()
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, up_left = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else up_left)) & 0xFF
        if row % 8 == 0:
            colors.update(bytes(line[i : i + 3]) for i in range(0, stride, channels * 4))
        previous = line
    return width, height, colors


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (CI installs it: apt-get install chromium)")
def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    model = models.save(models.outlier_mlp(), tmp_path)
    np.savez(tmp_path / "calib.npz", **models.outlier_mlp_data(32, outlier=2000.0))
    np.savez(tmp_path / "eval.npz", **models.outlier_mlp_data(16, seed=2))
    page = tmp_path / "report.html"
    result = CliRunner().invoke(
        app,
        [
            *("convert", str(model), "-o", str(tmp_path / "q.onnx"), "--data", str(tmp_path / "calib.npz")),
            *("--eval-data", str(tmp_path / "eval.npz"), "--min-sqnr", "25", "--auto-fallback"),
            *("--report-html", str(page), "--quiet", "--mode", "static"),
        ],
    )
    assert result.exit_code == 0, result.output
    dom = _chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr
    assert 'id="sqnr-chart"' in dom.stdout and dom.stdout.count('class="bar"') >= 5
    assert "Automatic fallback" in dom.stdout
    shot = tmp_path / "report.png"
    run = _chromium(
        f"--screenshot={shot}",
        f"--window-size={WIDTH},{HEIGHT}",
        "--hide-scrollbars",
        page.as_uri(),
        profile=tmp_path / "profile-shot",
    )
    assert run.returncode == 0 and shot.exists(), run.stderr
    width, height, colors = _png_pixels(shot)
    assert (width, height) == (WIDTH, HEIGHT)
    assert shot.stat().st_size > 10_000
    assert len(colors) > 20  # text, tables and coloured bars, not a blank page
    if KEEP:
        shutil.copyfile(shot, KEEP)
    assert bytes((0x09, 0x69, 0xDA)) in colors or bytes((0xCF, 0x22, 0x2E)) in colors  # chart bars
