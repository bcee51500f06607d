"""The CLI's foundation commands, run as a user would."""

import subprocess
import sys

import numpy as np
import pytest

from specfusion.cli import main


def test_datasets_inspect_esc50(esc50_root, capsys):
    assert main(["datasets", "inspect", "--dataset", "esc50", "--root", str(esc50_root)]) == 0
    out = capsys.readouterr().out
    assert "classes: 50" in out
    assert "dev/1  dev/2  dev/3  dev/4" in out and "test" not in out.split("classes:")[2].splitlines()[2]
    assert "total               400    400    400    400   1600" in out
    assert "problems: none" in out


def test_datasets_inspect_reports_problems(dcase2018_root, capsys):
    assert main(["datasets", "inspect", "--dataset", "dcase2018", "--root", str(dcase2018_root)]) == 0
    out = capsys.readouterr().out
    assert "72972" in out and "audio file(s) not found" in out and "NOT the official folds" in out


def test_melspec_writes_npy_png_and_network_image(formats_dir, tmp_path):
    out, png, image = tmp_path / "m.npy", tmp_path / "m.png", tmp_path / "net.png"
    args = [
        "melspec",
        str(formats_dir / "sins_4ch_16khz_16bit_10s.wav"),
        "--out",
        str(out),
        "--clip-db",
        "-60",
        "--png",
        str(png),
    ]
    assert main(args + ["--image", str(image), "--colormap", "magma"]) == 0
    from PIL import Image

    assert Image.open(image).size == (224, 224) and Image.open(image).mode == "RGB"
    spec = np.load(out)
    assert spec.dtype == np.float32 and spec.shape == (128, 63)
    assert spec.max() == 0 and spec.min() >= -60
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exit_codes(tmp_path, capsys):
    assert main(["melspec", str(tmp_path / "nope.wav"), "--out", str(tmp_path / "x.npy")]) == 1
    assert "nope.wav: file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["melspec"])
    assert info.value.code == 2
    assert main([]) == 2


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "specfusion", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "datasets" in result.stdout and "melspec" in result.stdout
