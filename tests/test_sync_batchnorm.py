"""`SyncBatchNorm2d` against torch.nn.BatchNorm2d: two gloo ranks holding shards of one batch
(of unequal sizes, as torch.nn.SyncBatchNorm allows) must give the outputs, gradients and running
statistics of one process on the whole batch."""

import pytest
import torch

SCENARIOS = {  # name: (layer options, dtype, rows on rank 0 and on rank 1, training forwards)
    "unequal shards": (dict(momentum=0.3), torch.float32, (4, 2), 2),
    "momentum None, no affine": (dict(affine=False, momentum=None), torch.float32, (4, 2), 3),
    "no running statistics": (dict(track_running_stats=False), torch.float32, (4, 2), 1),
    "an empty shard": (dict(momentum=0.3), torch.float32, (6, 0), 2),
    "float64": (dict(momentum=0.3), torch.float64, (3, 3), 2),
}


def _layer(cls, options: dict, dtype: torch.dtype) -> torch.nn.BatchNorm2d:
    layer = cls(3, **options).to(dtype)
    if layer.affine:
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
            layer.bias.copy_(torch.tensor([0.1, -0.3, 1.0]))
    return layer


def _batch_and_output_grad(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    batch = torch.randn(6, 3, 5, 5, generator=generator, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.2])[:, None, None] + 2
    return batch.to(dtype), torch.randn(6, 3, 5, 5, generator=generator, dtype=torch.float64).to(dtype)


def _run(layer: torch.nn.BatchNorm2d, batch: torch.Tensor, output_grad: torch.Tensor, forwards: int) -> dict:
    """`forwards` training passes, the last backpropagating sum(output * output_grad)."""
    layer.train()
    batch = batch.clone().requires_grad_(True)
    for _ in range(forwards - 1):
        layer(batch)
    output = layer(batch)
    (output * output_grad).sum().backward()
    result = {"output": output.detach(), "input_grad": batch.grad}
    result.update({name: p.grad for name, p in layer.named_parameters()})
    result.update(dict(layer.named_buffers()))
    if not layer.track_running_stats:
        result["eval_output"] = layer.eval()(batch.detach())  # batch statistics of this rank's own shard
    return result


def _worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    from realnet.engine.distributed import SyncBatchNorm2d

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        results = {}
        for name, (options, dtype, rows, forwards) in SCENARIOS.items():
            batch, output_grad = _batch_and_output_grad(dtype)
            start = sum(rows[:rank])
            shard = slice(start, start + rows[rank])
            results[name] = _run(_layer(SyncBatchNorm2d, options, dtype), batch[shard], output_grad[shard], forwards)
        torch.save(results, f"{out_file}.{rank}")
        dist.barrier()  # every rank done before any tears its gloo connections down
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("sync_bn")
    mp.spawn(_worker, args=(2, str(folder / "init"), str(folder / "out")), nprocs=2, join=True)
    return [torch.load(folder / f"out.{rank}") for rank in range(2)]


@pytest.mark.parametrize("name", SCENARIOS)
def test_two_ranks_match_one_process_on_the_whole_batch(two_ranks, name):
    options, dtype, rows, forwards = SCENARIOS[name]
    batch, output_grad = _batch_and_output_grad(dtype)
    expected = _run(_layer(torch.nn.BatchNorm2d, options, dtype), batch, output_grad, forwards)
    ranks = [results[name] for results in two_ranks]
    tolerance = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
    for key in ("output", "input_grad"):  # each rank holds its rows of the whole batch's
        torch.testing.assert_close(torch.cat([r[key] for r in ranks]), expected[key], **tolerance, msg=lambda m, key=key: f"{key}: {m}")
    for key in ("weight", "bias"):  # the summed loss's gradient, split over the ranks
        if key in expected:
            torch.testing.assert_close(ranks[0][key] + ranks[1][key], expected[key], **tolerance, msg=lambda m, key=key: f"{key}: {m}")
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        if key in expected:
            for r in ranks:
                torch.testing.assert_close(r[key], expected[key], **tolerance, msg=lambda m, key=key: f"{key}: {m}")
    if "eval_output" in expected:  # outside training no statistics travel, as in torch.nn.SyncBatchNorm
        for rank, r in enumerate(ranks):
            start = sum(rows[:rank])
            shard = batch[start:start + rows[rank]]
            torch.testing.assert_close(r["eval_output"], _layer(torch.nn.BatchNorm2d, options, dtype).eval()(shard))


def test_an_empty_child_slot_is_skipped_not_descended_into():
    """Modules may register None children (torch's convert_sync_batchnorm skips them); replacing
    then failed with AttributeError on None._modules."""
    from realnet.engine.distributed import DistributedContext, SyncBatchNorm2d, synchronize_batchnorm

    network = torch.nn.Sequential(torch.nn.BatchNorm2d(2))
    network.register_module("unused", None)
    synchronize_batchnorm(network, DistributedContext(0, 2))
    assert isinstance(network[0], SyncBatchNorm2d) and network.unused is None


def _pretend_two_ranks(monkeypatch, gather) -> None:
    """A process group of two as the layer sees it, with `gather` standing in for the all_gather."""
    import torch.distributed as dist

    from realnet.engine import distributed

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *args: 2)
    monkeypatch.setattr(distributed._GatherRows, "apply", gather)


def test_evaluation_uses_the_running_statistics_without_communicating(monkeypatch):
    from realnet.engine.distributed import SyncBatchNorm2d

    def refuse(values):
        raise AssertionError("an eval forward communicated (a rank scoring alone would hang)")

    _pretend_two_ranks(monkeypatch, refuse)
    synced, plain = _layer(SyncBatchNorm2d, {}, torch.float32), _layer(torch.nn.BatchNorm2d, {}, torch.float32)
    for layer in (synced, plain):
        layer.running_mean.fill_(0.5)
        layer.running_var.fill_(2.0)
    batch, _ = _batch_and_output_grad(torch.float32)
    assert torch.equal(synced.eval()(batch), plain.eval()(batch))


def test_bf16_autocast_keeps_float32_statistics_and_the_input_dtype(monkeypatch):
    """As BatchNorm2d under autocast: bf16 activations in and out, statistics and running buffers in
    float32 (one rank's rows, so the merged statistics are that rank's)."""
    from realnet.engine.distributed import SyncBatchNorm2d

    _pretend_two_ranks(monkeypatch, lambda values: values[None])
    batch, _ = _batch_and_output_grad(torch.float32)
    outputs, buffers = [], []
    for cls in (SyncBatchNorm2d, torch.nn.BatchNorm2d):
        layer = _layer(cls, dict(momentum=0.3), torch.float32).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs.append(layer(batch.bfloat16()))
        buffers.append(layer.running_var)
    assert outputs[0].dtype == torch.bfloat16 and buffers[0].dtype == torch.float32
    torch.testing.assert_close(outputs[0].float(), outputs[1].float(), atol=0.02, rtol=0.01)
    torch.testing.assert_close(buffers[0], buffers[1])
