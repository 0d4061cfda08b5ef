"""`torchrun` data-parallel fit on the CPU with the gloo backend: two ranks each build their shard
of every batch, average gradients, and rank 0 writes the run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dataset_fixtures import make_mvtec_tree

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.slow
def test_two_rank_gloo_fit_writes_one_run(tmp_path):
    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, size=(64, 64))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "realnet", "fit", "--data", str(data), "--category", "widget", "--preset", "tiny",
               "--out", str(out), "--steps", "3"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    meta = json.loads((out / "model.json").read_text())
    assert meta["fit"]["world_size"] == 2
    assert (out / "model.safetensors").exists()


def test_batch_shards_partition_the_single_process_batch():
    from realnet.engine.fit import SyntheticBatches, TrainingImages
    from realnet.synthesis.foreground import NO_FOREGROUND
    from realnet.synthesis.sources import CutPasteSource
    from realnet.synthesis.synthesizer import AnomalySynthesizer, SynthesisConfig

    rng = torch.Generator().manual_seed(0)
    images = (torch.rand(6, 32, 32, 3, generator=rng) * 255).to(torch.uint8).numpy()
    train = TrainingImages(images, images[:0], images[..., 0] >= 0, [])
    synthesizer = AnomalySynthesizer(SynthesisConfig(source_weights={"cutpaste": 1.0}),
                                     {"cutpaste": CutPasteSource()}, NO_FOREGROUND)
    batches = SyntheticBatches(synthesizer, train, batch_size=4, seed=3)
    whole = batches.for_step(5)
    shards = [batches.for_step(5, rank, 2) for rank in range(2)]
    for part in range(len(whole)):
        merged = [None] * 4
        merged[0::2], merged[1::2] = list(shards[0][part]), list(shards[1][part])
        assert all((a == b).all() for a, b in zip(merged, whole[part]))
