"""Records and timings that depend on the device or the rank: native bf16 is the training
device's, the throughput clock waits for MPS as for CUDA, and only rank 0 removes a finished
run's leftover resume state (regressions from an audit of the distributed and device paths)."""

from __future__ import annotations

import json

import torch

from realnet.config import load_config
from realnet.engine import checkpoint
from realnet.engine import fit as fit_module
from test_fit_options import tiny_fit


def test_native_bf16_is_recorded_for_the_device_the_fit_trained_on(monkeypatch):
    """Regression: it always described the host CPU, so a bf16 CUDA run recorded native_bf16: false."""
    from realnet.engine import runtime

    monkeypatch.setattr(runtime, "bf16_autocast_available", lambda device: device.type == "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
    assert runtime.compute_environment(torch.device("cuda"))["native_bf16"] is True
    assert runtime.compute_environment(torch.device("cpu"))["native_bf16"] is False


def test_the_throughput_clock_waits_for_an_mps_device(monkeypatch):
    """Regression: only CUDA was synchronised, so MPS timings measured how fast work was queued."""
    from realnet.bench.efficiency import images_per_second

    waits = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waits.append("mps"))
    images = torch.zeros(4, 3, 8, 8)

    class OnMps:  # images that say they are on an MPS device
        device = torch.device("mps")

        def split(self, size):
            return images.split(size)

        def __len__(self):
            return len(images)

    assert images_per_second(lambda batch: None, OnMps(), batch_size=2, warmup=1, repeats=3) > 0
    assert waits == ["mps"] * 8  # before and after each of the 4 passes


def test_only_rank_0_removes_a_finished_runs_leftover_resume_state(tmp_path, monkeypatch):
    """Regression: every torchrun rank unlinked it, and a rank that found it gone failed the resume."""
    tiny_fit(tmp_path, "run")
    leftover = tmp_path / "run" / checkpoint.RESUME_STATE
    request = fit_module.FitRequest(config=load_config("tiny", overrides=["train.steps=4"]), data_root=tmp_path / "data",
                                    category="widget", out=tmp_path / "run", device="cpu", progress=False, resume=True)
    for rank, kept in (("1", True), ("0", False)):
        leftover.write_bytes(b"left by a kill after the model was saved")
        monkeypatch.setenv("RANK", rank)
        assert fit_module.fit(request)["threshold"] == json.loads((tmp_path / "run" / "model.json").read_text())[
            "threshold"]
        assert leftover.exists() is kept
