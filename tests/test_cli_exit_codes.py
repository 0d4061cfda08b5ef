"""`realnet`'s exit statuses and where its error lines go: 2 and one stderr line for a refused input
or a file system failure, 1 for inputs that failed, 130 for Ctrl-C; stdout stays clean."""

from __future__ import annotations

import errno

import pytest

from realnet.cli.main import main
from realnet.errors import RealnetError


@pytest.mark.parametrize("raised, status, needle", [
    (RealnetError("the run is damaged"), 2, "realnet: error: the run is damaged"),
    (OSError(errno.EACCES, "Permission denied", "/some/where"), 2, "realnet: error: /some/where: Permission denied"),
    (KeyboardInterrupt(), 130, "realnet: interrupted"),
])
def test_errors_are_one_stderr_line_with_their_status(raised, status, needle, tmp_path, monkeypatch, capsys):
    import realnet.engine.predict as predict_module

    def failing(*args, **kwargs):
        raise raised

    monkeypatch.setattr(predict_module, "predict", failing)
    assert main(["predict", "--run", str(tmp_path), "x.png"]) == status
    captured = capsys.readouterr()
    assert captured.err.strip() == needle and captured.out == ""


def test_an_input_that_failed_is_status_1_and_none_is_0(tmp_path, monkeypatch, capsys):
    import realnet.engine.predict as predict_module

    monkeypatch.setattr(predict_module, "predict", lambda *args, **kwargs: ["x.png"])
    assert main(["predict", "--run", str(tmp_path), "x.png"]) == 1
    monkeypatch.setattr(predict_module, "predict", lambda *args, **kwargs: [])
    assert main(["predict", "--run", str(tmp_path), "x.png"]) == 0


def test_sigterm_is_status_143_with_one_line(tmp_path, monkeypatch, capsys):
    import os
    import signal

    import realnet.engine.predict as predict_module

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler main() installs raises at once
        return []

    monkeypatch.setattr(predict_module, "predict", terminated)
    assert main(["predict", "--run", str(tmp_path), "x.png"]) == 143  # 128 + SIGTERM, as a shell reports it
    assert capsys.readouterr().err.strip() == "realnet: terminated"
