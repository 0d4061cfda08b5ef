"""Outputs that cannot be written, and option mistakes, are one line that names what the user
gave: the file or folder they chose (never an internal temporary name) or the option itself."""

from __future__ import annotations

import errno
import os
import tempfile

import pytest
import torch

import realnet
from realnet.errors import RealnetError


def _refused(*args, **kwargs):
    raise PermissionError(errno.EPERM, "Operation not permitted", "/somewhere/.grid.png.k3j2l1.tmp")


def test_a_file_named_near_the_limit_is_written_and_a_failed_write_leaves_no_folder(tmp_path):
    """Regression: `synth preview --out grids/<240-byte name>.png` failed "File name too long" (the
    temporary's name adds 14 bytes) and left grids/, which it had created, behind."""
    from realnet.engine.checkpoint import atomic_write

    target = tmp_path / "grids" / ("L" * 246 + ".png")
    atomic_write(target, lambda tmp: tmp.write_text("x"))
    assert os.listdir(target.parent) == [target.name] and target.read_text() == "x"

    def fails(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RealnetError, match="No space left on device"):
        atomic_write(tmp_path / "a" / "b" / "grid.png", fails)
    assert not (tmp_path / "a").exists()


def test_a_full_disk_while_saving_safetensors_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """safetensors reports a full disk as SafetensorError, not OSError: `fit` and `sdas train` ended
    in a traceback (exit 1)."""
    import safetensors.torch

    from realnet.engine.checkpoint import atomic_write

    def full_disk(tensors, filename, metadata=None):
        open(filename, "wb").close()
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    target = tmp_path / "run" / "model.safetensors"
    with pytest.raises(RealnetError) as raised:
        atomic_write(target, lambda tmp: safetensors.torch.save_file({"w": torch.zeros(2)}, str(tmp)))
    assert str(raised.value) == (f"{target}: cannot write there (Error while serializing: I/O error: "
                                 "No space left on device (os error 28))")
    assert not (tmp_path / "run").exists()


def test_an_unwritable_folder_is_named_not_the_temporary_file(tmp_path, monkeypatch):
    from realnet.engine.checkpoint import atomic_write

    target = tmp_path / "grid.png"
    monkeypatch.setattr(tempfile, "mkstemp", _refused)
    with pytest.raises(RealnetError) as raised:
        atomic_write(target, lambda tmp: tmp.write_text("x"))
    assert str(raised.value) == f"{target}: cannot write there (Operation not permitted)"
    monkeypatch.undo()

    def replace_refused(source, destination):
        raise PermissionError(errno.EPERM, "Operation not permitted", source)

    monkeypatch.setattr("os.replace", replace_refused)
    with pytest.raises(RealnetError, match=f"^{target}: cannot write there"):
        atomic_write(target, lambda tmp: tmp.write_text("x"))
    assert list(tmp_path.iterdir()) == []  # and the temporary file is gone


def test_export_into_an_unwritable_folder_names_the_folder(tiny_run, tmp_path, monkeypatch):
    import realnet.export.onnx as onnx_export
    from realnet.engine.evaluate import load_run

    model, meta = load_run(tiny_run[1], torch.device("cpu"))
    monkeypatch.setattr(onnx_export.tempfile, "TemporaryDirectory", _refused)
    out = tmp_path / "models" / "m.onnx"
    with pytest.raises(RealnetError) as raised:
        onnx_export.export_onnx(model, out, image_size=meta["config"]["train"]["image_size"], metadata={},
                                parity_images=torch.zeros(1, 3, 64, 64))
    assert str(raised.value) == f"--out {out}: cannot write in {out.parent} (Operation not permitted)"


@pytest.mark.parametrize("specs, message", [
    (["shade", "shade:0.2"], "--source shade is given twice"),
    (["shade:0"], "--source 'shade:0': a weight must be > 0"),
    (["shade:-1"], "--source 'shade:-1': a weight must be > 0"),
])
def test_source_weights_that_would_be_dropped_or_overwritten_are_refused(specs, message):
    """Regression: shade:0 was refused as `synthesis.source_weights ... got {}` (another name, the
    entry gone), and a repeated source silently kept its last weight."""
    from realnet.cli.detector import parse_sources

    with pytest.raises(RealnetError, match=message):
        parse_sources(specs)
    assert parse_sources(["dtd", "shade:0.5"]) == {"dtd": 1.0, "shade": 0.5}


def test_a_config_folder_is_not_called_missing(tmp_path):
    from realnet.config import load_config

    with pytest.raises(RealnetError, match=f"config file {tmp_path} is a folder; give a YAML file"):
        load_config("tiny", tmp_path)


@pytest.mark.parametrize("failure, reason", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79 GiB"),
     "CUDA out of memory. Tried to allocate 20.00 GiB"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 1000 bytes. Error code 12 (Cannot allocate memory)"),
     "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1000 bytes. Error code 12 (Cannot allocate memory)"),
    # regression: TorchScript (the frozen backbone) rethrows CUDA's error as a plain RuntimeError, which
    # ended in a traceback (pytorch/pytorch#148642)
    (RuntimeError("The following operation failed in the TorchScript interpreter.\nTraceback of TorchScript "
                  "(most recent call last):\n  File \"<string>\", line 1\nRuntimeError: CUDA out of memory. Tried "
                  "to allocate 2.00 GiB. GPU 0 has a total capacity of 79 GiB\n"),
     "CUDA out of memory. Tried to allocate 2.00 GiB"),
])
def test_out_of_memory_is_one_line_with_what_to_lower(failure, reason, tiny_run, monkeypatch, capsys):
    """Regression: a batch too large for the device ended every command in a long traceback."""
    from realnet.cli.main import main

    def allocate(*args, **kwargs):
        raise failure

    monkeypatch.setattr("realnet.engine.evaluate.evaluate", allocate)
    assert main(["test", "--run", str(tiny_run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"realnet: error: out of memory ({reason}); use a smaller --batch-size (train.batch_size for fit, "
                   "--batch for sdas) or image size"]


def test_other_runtime_errors_still_show_their_traceback(tiny_run, monkeypatch):
    from realnet.cli.main import main

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("realnet.engine.evaluate.evaluate", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["test", "--run", str(tiny_run)])


def test_a_second_ctrl_c_while_an_interrupted_command_exits_prints_no_traceback(tmp_path):
    """Regression: two SIGINTs 10 ms apart during fit printed "realnet: interrupted" and then a
    KeyboardInterrupt traceback from torch's exit handlers. The process's own command ignores
    Ctrl-C once interrupted; an in-process caller (argv given) gets its handler back."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "twice.py"
    script.write_text(
        "import os, signal, sys\n"
        "import realnet.cli.detector as detector\n"
        "from realnet.cli.main import main\n"
        "def stopped(args):\n"
        "    raise KeyboardInterrupt\n"
        "detector.run_predict = stopped\n"
        "sys.argv = ['realnet', 'predict', '--run', 'r', 'x.png']\n"
        "handler = signal.getsignal(signal.SIGINT)\n"
        "assert main(['predict', '--run', 'r', 'x.png']) == 130 and signal.getsignal(signal.SIGINT) is handler\n"
        "code = main()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "print('exited quietly', code)\n")
    src = Path(realnet.__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(src)})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "exited quietly 130\n"
    assert result.stderr == "realnet: interrupted\nrealnet: interrupted\n"


@pytest.mark.parametrize("arguments, message", [
    (["predict", "--run", "RUN", ""], "argument IMAGE_OR_DIR: empty path (an unset shell variable?)"),
    (["predict", "--run", "", "a.png"], "argument --run: empty path"),
    (["fit", "--data", "", "--category", "c", "--out", "o"], "argument --data: empty path"),
    (["export", "--run", "RUN", "--out", "models/"], "argument --out: models/ names a folder; give the path of the "
                                                     "file to write"),
    (["export", "--run", "RUN", "--out", "."], "argument --out: . names a folder"),
    (["synth", "preview", "--data", "d", "--category", "c", "--out", "grids/"], "argument --out: grids/ names a folder"),
])
def test_empty_paths_and_folders_given_as_output_files_are_refused(arguments, message, capsys):
    """Regression: an empty argument (an unset "$IMG") meant the current folder, so predict scored every
    image below it; `export --out models/` wrote a file named models; `--out .` ended in a traceback."""
    from realnet.cli.main import main

    with pytest.raises(SystemExit) as exit_code:
        main(arguments)
    assert exit_code.value.code == 2 and message in capsys.readouterr().err


def test_export_to_the_current_folder_is_one_line_from_python_too(tiny_run):
    from realnet.export.onnx import export_run

    with pytest.raises(RealnetError, match=r"--out \. is a folder; give the path of the .onnx file"):
        export_run(tiny_run[1], ".")
