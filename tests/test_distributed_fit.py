"""`torchrun` data-parallel fit on the CPU with the gloo backend: two ranks each build their shard
of every batch, average gradients, and rank 0 writes the run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import realnet
from dataset_fixtures import make_mvtec_tree

SRC = Path(realnet.__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_rank_gloo_fit_writes_one_run(tmp_path):
    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, size=(64, 64))
    bad = sorted((data / "widget" / "train" / "good").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:40])
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "realnet", "fit", "--data", str(data), "--category", "widget", "--preset", "tiny",
               "--out", str(out), "--steps", "3", "--skip-bad"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    meta = json.loads((out / "model.json").read_text())
    assert meta["fit"]["world_size"] == 2
    assert (out / "model.safetensors").exists()
    summaries = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, result.stdout  # every rank printed its own summary
    assert result.stderr.count(f"skipped {bad}") == 1 and "skipped" not in result.stdout, result.stdout  # one rank, on stderr


@pytest.mark.slow
def test_two_ranks_train_the_weights_one_process_trains(tmp_path):
    """With each rank building its shard of the same batches and the BatchNorm statistics shared,
    `torchrun --nproc-per-node 2` ends with the single process's weights, up to float rounding
    (before, each rank's BatchNorm normalised its own half of the batch)."""
    from safetensors.torch import load_file

    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=10, n_test_good=2, size=(64, 64))
    fit = ["-m", "realnet", "fit", "--data", str(data), "--category", "widget", "--preset", "tiny", "--steps", "3"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launches = {"two": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
                "one": [sys.executable]}
    weights = {}
    for name, launch in launches.items():
        result = subprocess.run([*launch, *fit, "--out", str(tmp_path / name)], env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        weights[name] = load_file(tmp_path / name / "model.safetensors")
    assert weights["two"].keys() == weights["one"].keys()
    for key, value in weights["one"].items():  # Adam's first steps magnify rounding to ~2e-4; unsynchronised
        # BatchNorm statistics differed by up to 1286 (running variance) and the U-Nets' weights by 1e-3
        assert torch.allclose(weights["two"][key].float(), value.float(), atol=5e-4, rtol=1e-3), key


def _broadcast_worker(rank: int, world_size: int, init_file: str) -> None:
    import torch.distributed as dist

    from realnet.engine.distributed import DistributedContext, broadcast_buffers

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        norm = torch.nn.BatchNorm2d(3).train()
        norm(torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(rank)))  # each rank's own shard
        broadcast_buffers(norm, DistributedContext(rank, world_size))
        gathered = [torch.empty(3) for _ in range(world_size)]
        dist.all_gather(gathered, norm.running_mean)
        assert torch.equal(gathered[0], gathered[1]) and not torch.equal(gathered[0], torch.zeros(3))
        dist.barrier()  # every rank done before any tears its gloo connections down
    finally:
        dist.destroy_process_group()


def test_ranks_share_rank_zeros_batchnorm_statistics_after_a_step(tmp_path):
    """Gradients were averaged but the BatchNorm running statistics of RRS and the discriminator
    were not synchronised, so the ranks ended with different models."""
    import torch.multiprocessing as mp

    mp.spawn(_broadcast_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


def test_batch_size_must_split_evenly_over_the_ranks(tmp_path, monkeypatch):
    from realnet.config import load_config
    from realnet.engine import distributed
    from realnet.engine.fit import FitRequest, fit
    from realnet.errors import RealnetError

    monkeypatch.setattr(distributed, "init_distributed", lambda backend=None: distributed.DistributedContext(0, 3))
    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=4, size=(64, 64))
    with pytest.raises(RealnetError, match="train.batch_size=4 must be a multiple of the 3 processes"):
        fit(FitRequest(config=load_config("tiny"), data_root=data, category="widget", out=tmp_path / "run",
                       device="cpu", progress=False))


def test_batch_shards_partition_the_single_process_batch():
    from realnet.engine.fit import SyntheticBatches, TrainingImages
    from realnet.synthesis.foreground import NO_FOREGROUND
    from realnet.synthesis.sources import CutPasteSource
    from realnet.synthesis.synthesizer import AnomalySynthesizer, SynthesisConfig

    rng = torch.Generator().manual_seed(0)
    images = (torch.rand(6, 32, 32, 3, generator=rng) * 255).to(torch.uint8).numpy()
    train = TrainingImages(images, images[:0], images[..., 0] >= 0)
    synthesizer = AnomalySynthesizer(SynthesisConfig(source_weights={"cutpaste": 1.0}),
                                     {"cutpaste": CutPasteSource()}, NO_FOREGROUND)
    batches = SyntheticBatches(synthesizer, train, batch_size=4, seed=3)
    whole = batches.for_step(5)
    shards = [batches.for_step(5, rank, 2) for rank in range(2)]
    for part in range(len(whole)):
        merged = [None] * 4
        merged[0::2], merged[1::2] = list(shards[0][part]), list(shards[1][part])
        assert all((a == b).all() for a, b in zip(merged, whole[part]))


def _state_worker(rank: int, world_size: int, init_file: str) -> None:
    import torch.distributed as dist

    from realnet.engine.distributed import DistributedContext, all_ranks_agree, average_scalars, broadcast_state

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        context = DistributedContext(rank, world_size)
        torch.manual_seed(rank)  # ranks that built their initial weights apart
        layer = torch.nn.Linear(3, 2)
        layer.register_buffer("indices", torch.tensor([rank, 5]))
        broadcast_state(layer, context)
        for tensor in (layer.weight.detach(), layer.indices):
            gathered = [torch.empty_like(tensor) for _ in range(world_size)]
            dist.all_gather(gathered, tensor.contiguous())
            assert torch.equal(gathered[0], gathered[1])
        assert layer.indices.tolist() == [0, 5] and layer.weight.requires_grad
        assert average_scalars({"loss": float(rank), "seg": 2.0}, context) == {"loss": 0.5, "seg": 2.0}
        # a rank that found no resume.pt (-1) while the other resumes at step 8: both must stop
        assert all_ranks_agree(8, context) and not all_ranks_agree(8 if rank == 0 else -1, context)
        dist.barrier()  # every rank done before any tears its gloo connections down
    finally:
        dist.destroy_process_group()


def test_ranks_start_from_rank_zeros_state_and_report_the_mean_loss(tmp_path):
    """Regressions: nothing was broadcast before step 0 (ranks relied on computing the same initial
    weights and AFS indices); model.json recorded rank 0's shard loss as the batch's; ranks that
    saw different resume states (no shared file system) started apart and hung."""
    import torch.multiprocessing as mp

    mp.spawn(_state_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


def test_a_named_device_under_torchrun_is_refused(monkeypatch):
    """Regression: --device cuda:1 or mps was silently replaced by each rank's cuda:LOCAL_RANK."""
    from realnet.engine import distributed
    from realnet.errors import RealnetError

    monkeypatch.setenv("WORLD_SIZE", "2")
    asked = []
    monkeypatch.setattr(distributed, "init_distributed", lambda backend=None: asked.append(backend))
    for name in ("cuda:1", "mps"):
        with pytest.raises(RealnetError, match=f"--device {name}: under torchrun"):
            distributed.init_for_device(name)
    distributed.init_for_device("cpu")
    distributed.init_for_device("auto")
    assert asked == ["gloo", None]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # it fell back to gloo on the CPU
    with pytest.raises(RealnetError, match="--device cuda was requested but CUDA is not available"):
        distributed.init_for_device("cuda")


def test_a_failure_after_the_run_is_saved_keeps_the_run(tmp_path, monkeypatch):
    """Regression: the clean-up of a failed fit removed the folder it created even when the
    finished model was already in it (e.g. a failing barrier after saving)."""
    from realnet.config import load_config
    from realnet.engine import distributed
    from realnet.engine.fit import FitRequest, fit

    def broken_barrier(context):
        raise RuntimeError("barrier timed out")

    monkeypatch.setattr(distributed, "barrier", broken_barrier)
    data = make_mvtec_tree(tmp_path / "data", "widget", n_train=4, size=(64, 64))
    with pytest.raises(RuntimeError, match="barrier"):
        fit(FitRequest(config=load_config("tiny", overrides=["train.steps=2"]), data_root=data, category="widget",
                       out=tmp_path / "run", device="cpu", progress=False))
    assert (tmp_path / "run" / "model.json").exists()


def test_devices_that_cannot_work_are_refused_in_one_line(monkeypatch):
    """Regression: cuda:7 on a one-GPU machine and 'meta' passed and failed later with a traceback."""
    from realnet.engine.runtime import resolve_device
    from realnet.errors import RealnetError

    with pytest.raises(RealnetError, match="--device 'meta': use auto, cpu"):
        resolve_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RealnetError, match="--device cuda:7: this machine has 1 CUDA device"):
        resolve_device("cuda:7")
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    # regression: cuda:N was never made current, so bf16 support and synchronize() answered for cuda:0
    assert current == [torch.device("cuda", 0)]


def fake_torchrun_on_gpus(monkeypatch, world_size: int, rank: int, local_rank: int, gpus: int) -> None:
    """The environment torchrun gives one process, on a machine with `gpus` CUDA devices."""
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)


def test_more_torchrun_ranks_than_gpus_are_refused_in_one_line(monkeypatch):
    """Regression: LOCAL_RANK 1 on a one-GPU machine ended in 'CUDA error: invalid device ordinal'."""
    from realnet.engine import distributed
    from realnet.errors import RealnetError

    fake_torchrun_on_gpus(monkeypatch, world_size=2, rank=1, local_rank=1, gpus=1)
    with pytest.raises(RealnetError, match="LOCAL_RANK 1, but this machine has 1 CUDA device.*--nproc-per-node"):
        distributed.init_distributed()


def test_throughput_on_a_gpu_waits_for_that_gpu(monkeypatch):
    """Regression: torch.cuda.synchronize() without a device waited for cuda:0 only, so timings on
    cuda:1 measured kernel launches."""
    from realnet.bench.efficiency import images_per_second

    class OnSecondGpu:
        device = torch.device("cuda", 1)

        def split(self, size):
            return torch.zeros(4, 1).split(size)

        def __len__(self):
            return 4

    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    images_per_second(lambda batch: None, OnSecondGpu(), batch_size=2, warmup=0, repeats=1)
    assert waited == [torch.device("cuda", 1)] * 2


def test_average_gradients_divides_the_summed_gradients_by_the_world_size(monkeypatch):
    """DDP semantics: every rank ends with the mean of the ranks' gradients (here 4 ranks whose
    gradients are g, 2g, 3g, 4g, so the mean is 2.5 g), bucket by bucket, any dtype."""
    from realnet.engine import distributed

    def all_reduce(tensor, op):
        assert op == distributed.dist.ReduceOp.SUM
        tensor.mul_(1 + 2 + 3 + 4)

    monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce)
    parameters = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(5)),
                  torch.nn.Parameter(torch.zeros(4, dtype=torch.float64)), torch.nn.Parameter(torch.zeros(2))]
    for index, p in enumerate(parameters[:3]):
        p.grad = torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) + index
    expected = [2.5 * p.grad.clone() for p in parameters[:3]]
    distributed.average_gradients(parameters, distributed.DistributedContext(1, 4), bucket_elements=6)
    for p, e in zip(parameters, expected):
        torch.testing.assert_close(p.grad, e)
    assert parameters[3].grad is None and parameters[2].grad.dtype == torch.float64


def test_state_and_buffers_are_broadcast_from_rank_zero(monkeypatch):
    """Rank 0's initial state and BatchNorm statistics, the ones it writes to the run."""
    from realnet.engine import distributed

    sources = []
    monkeypatch.setattr(distributed.dist, "broadcast", lambda tensor, src: sources.append(src))
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    for rank in (1, 2):
        distributed.broadcast_state(module, distributed.DistributedContext(rank, 3))
        distributed.broadcast_buffers(module, distributed.DistributedContext(rank, 3))
    assert len(sources) == 2 * (4 + 3 + 3) and set(sources) == {0}


def _tiny_bn_network() -> torch.nn.Sequential:
    """A conv, a BatchNorm with affine parameters and one without (as in RRS), and a conv."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.BatchNorm2d(4, affine=False, momentum=0.9), torch.nn.Conv2d(4, 2, 1))


def _whole_batch() -> torch.Tensor:
    return torch.randn(6, 3, 5, 5, generator=torch.Generator().manual_seed(7)) * 3 + 1


def _two_steps(network: torch.nn.Sequential, shard: torch.Tensor, context) -> dict:
    """Two SGD steps on the mean squared output of `shard`, gradients averaged over ranks as fit does."""
    from realnet.engine.distributed import average_gradients

    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        network(shard).pow(2).mean().backward()
        average_gradients(network.parameters(), context)
        optimizer.step()
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def _sync_bn_worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    from realnet.engine.distributed import DistributedContext, SyncBatchNorm2d, synchronize_batchnorm

    import warnings

    warnings.simplefilter("error")  # torch.distributed.nn.functional's deprecation printed on every rank
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        context = DistributedContext(rank, world_size)
        network = synchronize_batchnorm(_tiny_bn_network(), context)
        assert sum(isinstance(m, SyncBatchNorm2d) for m in network.modules()) == 2
        shard = _whole_batch().chunk(world_size)[rank]
        state = _two_steps(network, shard, context)
        if rank == 0:
            torch.save(state, out_file)
        dist.barrier()  # every rank done before any tears its gloo connections down
    finally:
        dist.destroy_process_group()


def test_synchronised_batchnorm_trains_two_shards_like_one_process_on_the_whole_batch(tmp_path):
    """Each rank's BatchNorm saw only its shard, so a run's weights depended on the number of
    processes; the authors convert the model with SyncBatchNorm. Two gloo ranks with 3 images each
    now end with the weights and running statistics of one process trained on all 6."""
    import torch.multiprocessing as mp

    from realnet.engine.distributed import DistributedContext

    out = tmp_path / "rank0.pt"
    mp.spawn(_sync_bn_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    two_ranks = torch.load(out)
    one_process = _two_steps(_tiny_bn_network(), _whole_batch(), DistributedContext())
    assert two_ranks.keys() == one_process.keys()  # same parameters and buffers: checkpoints unchanged
    for name, value in one_process.items():
        assert torch.allclose(two_ranks[name].float(), value.float(), atol=1e-5), name
    assert not torch.allclose(one_process["3.running_var"], torch.ones(4))  # the statistics did move


def test_synchronised_batchnorm_is_plain_batchnorm_outside_a_process_group():
    from realnet.engine.distributed import DistributedContext, SyncBatchNorm2d, synchronize_batchnorm

    network = _tiny_bn_network()
    assert synchronize_batchnorm(network, DistributedContext()) is network
    assert not any(isinstance(m, SyncBatchNorm2d) for m in network.modules())
    synced = SyncBatchNorm2d(3)
    plain = torch.nn.BatchNorm2d(3)
    batch = _whole_batch()
    assert torch.equal(synced(batch), plain(batch)) and torch.equal(synced.running_var, plain.running_var)


def test_synchronised_batchnorm_takes_over_the_layers_own_parameters_and_buffers():
    """The replacement keeps the very tensors (so their device, dtype and requires_grad), and a
    layer used in two places stays one layer (named_children() lists it once)."""
    from realnet.engine.distributed import DistributedContext, SyncBatchNorm2d, synchronize_batchnorm

    shared = torch.nn.BatchNorm2d(4).double()
    shared.weight.requires_grad_(False)
    weight, running_var = shared.weight, shared.running_var
    network = torch.nn.Sequential(shared, torch.nn.ReLU(), shared, torch.nn.BatchNorm2d(4, track_running_stats=False))
    synchronize_batchnorm(network, DistributedContext(0, 2))
    assert isinstance(network[0], SyncBatchNorm2d) and network[0] is network[2]
    assert network[0].weight is weight and network[0].running_var is running_var
    assert network[0].weight.dtype == torch.float64 and not network[0].weight.requires_grad
    assert isinstance(network[3], SyncBatchNorm2d) and network[3].running_mean is None
    assert network[3].weight.device.type == "cpu"  # not left on the meta device it was built on


class _RecalibrationStub(torch.nn.Module):
    """What `recalibrate_batch_statistics` uses of RealNet: a reconstruction of zeros (so the
    residuals are the squared features), RRS keeping every channel, and a discriminator with BatchNorm."""

    def __init__(self):
        from realnet.model.rrs import ResidualSelection

        super().__init__()
        torch.manual_seed(0)
        self.residual_selection = ResidualSelection(3, mode="all")
        self.discriminator = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))

    def reconstruction(self, features):
        return [torch.zeros_like(f) for f in features]


class _StepBatches:
    """Each step's batch of 4 small feature maps; `for_step` hands out a rank's rows as fit's does."""

    def for_step(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        whole = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(step)) * 2 + 1
        return whole[rank::world_size]


def _recalibrate(model: _RecalibrationStub, context) -> dict:
    from realnet.engine.fit import recalibrate_batch_statistics

    recalibrate_batch_statistics(model, _StepBatches(), lambda batch: (None, [batch]), 0, 3, discriminator=True,
                                 rank=context.rank, world_size=context.world_size)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _recalibration_worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    from realnet.engine.distributed import DistributedContext, synchronize_batchnorm

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        context = DistributedContext(rank, world_size)
        model = _RecalibrationStub()
        synchronize_batchnorm(model, context)
        torch.save(_recalibrate(model, context), f"{out_file}.{rank}")
        dist.barrier()  # every rank done before any tears its gloo connections down
    finally:
        dist.destroy_process_group()


def test_recalibrated_discriminator_statistics_match_one_process(tmp_path):
    """After an EMA run fit recomputes the discriminator's statistics with update_bn, whose
    training-mode forwards go through the synchronised BatchNorm. Every rank fed it the whole
    batch, so the statistics counted each value once per rank (running variance N*W/(N*W-1)
    instead of N/(N-1)); each rank now feeds its shard, as in training."""
    import torch.multiprocessing as mp

    from realnet.engine.distributed import DistributedContext

    out = tmp_path / "state"
    mp.spawn(_recalibration_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    one_process = _recalibrate(_RecalibrationStub(), DistributedContext())
    for rank in range(2):
        two_ranks = torch.load(f"{out}.{rank}")
        for name, value in one_process.items():
            torch.testing.assert_close(two_ranks[name], value, msg=lambda m, name=name: f"rank {rank} {name}: {m}")


def _cuda_only_group_worker(rank: int, init_file: str, results: str) -> None:
    """Joins a group built like CUDA_BACKENDS, with a gloo-backed stand-in for NCCL that, like
    NCCL, serves CUDA tensors only, then runs the run's scalar collectives on CPU tensors."""
    import torch.distributed as dist

    from realnet.engine import distributed

    dist.Backend.register_backend("cudaonly", lambda store, r, size, timeout: dist.ProcessGroupGloo(
        store, r, size, timeout), devices=["cuda"])
    dist.init_process_group(distributed.CUDA_BACKENDS.replace("nccl", "cudaonly"), init_method=f"file://{init_file}",
                            rank=rank, world_size=2)
    context = distributed.DistributedContext(rank, 2)
    agreed = distributed.all_ranks_agree(7, context)
    mean = distributed.average_scalars({"loss": float(rank)}, context)["loss"]
    Path(results, f"rank{rank}").write_text(f"{agreed} {mean}")
    dist.barrier()  # every rank done before any tears its gloo connections down
    dist.destroy_process_group()


def test_scalar_collectives_work_in_a_group_whose_gpu_backend_takes_cuda_tensors_only(tmp_path, monkeypatch):
    """Regression: under torchrun on GPUs the group was plain NCCL, which takes no CPU tensor, so
    the CPU scalars of all_ranks_agree (before step 0 of every fit) and average_scalars failed with
    'No backend type associated with device type cpu'."""
    import torch.multiprocessing as mp
    import torch.distributed as dist

    from realnet.engine import distributed

    asked = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: asked.append(backend))
    distributed.init_distributed()
    assert asked == [distributed.CUDA_BACKENDS]
    monkeypatch.undo()

    mp.spawn(_cuda_only_group_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    assert [Path(tmp_path, f"rank{r}").read_text() for r in range(2)] == ["True 0.5"] * 2


def test_each_rank_of_a_multi_node_run_takes_the_gpu_of_its_local_rank(monkeypatch):
    """Rank 3 of two nodes with two GPUs each is LOCAL_RANK 1 on its node: cuda:1, not cuda:3."""
    from realnet.engine import distributed

    fake_torchrun_on_gpus(monkeypatch, world_size=4, rank=3, local_rank=1, gpus=2)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)  # no process group to join here
    context = distributed.init_distributed()
    assert (context.rank, context.local_rank, context.world_size) == (3, 1, 4)
    assert context.device == torch.device("cuda", 1) and chosen == [torch.device("cuda", 1)]
