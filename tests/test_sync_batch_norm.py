"""SyncBatchNorm / SyncBatchNormReLU2d over torch.distributed: two processes
on gloo (loopback, file rendezvous) must give what one process running
torch.nn.BatchNorm over the concatenated batch gives (outputs, input
gradients, summed parameter gradients, running statistics), and eval mode
must not communicate. Also the single-process behaviour, the conversion
helper and the new ops' checks."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cnnkernels
import cnnkernels.nn as knn
from conftest import DEVICES

WORLD = 2
SIZES = [3, 5]  # unequal shares of the batch of 8
# (name, module class, input shape of the whole batch, channels_last)
CASES = [
    ("bn_nchw", "SyncBatchNorm", (8, 4, 5, 6), False),
    ("bnrelu_nhwc", "SyncBatchNormReLU2d", (8, 4, 5, 6), True),
    ("bn_2d", "SyncBatchNorm", (8, 6), False),
    ("bn_3d", "SyncBatchNorm", (8, 3, 7), False),
]


def _case_data(shape, channels_last):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5
    gy = torch.randn(shape, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        gy = gy.contiguous(memory_format=torch.channels_last)
    return x, gy


def _make(cls_name, C):
    torch.manual_seed(7)
    m = getattr(knn, cls_name)(C, momentum=0.3).double()
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
    return m


def _worker(rank, tmpdir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmpdir}/rendezvous", rank=rank,
                            world_size=WORLD)
    try:
        out = {}
        lo = sum(SIZES[:rank])
        for name, cls_name, shape, cl in CASES:
            x_all, gy_all = _case_data(shape, cl)
            x = x_all[lo:lo + SIZES[rank]].clone().requires_grad_()
            gy = gy_all[lo:lo + SIZES[rank]]
            m = _make(cls_name, shape[1])
            for _ in range(2):  # two steps: running statistics accumulate
                x.grad = None
                m.zero_grad()
                y = m(x)
                y.backward(gy)
            out[name] = dict(y=y.detach(), gx=x.grad, gw=m.weight.grad, gb=m.bias.grad,
                             rm=m.running_mean, rv=m.running_var, nbt=m.num_batches_tracked,
                             y_cl=y.is_contiguous(memory_format=torch.channels_last))
        # eval mode: no communication at all
        m = _make("SyncBatchNorm", 4).eval()

        def fail(*a, **k):
            raise AssertionError("communication in eval mode")

        saved = dist.all_gather, dist.all_reduce
        dist.all_gather = dist.all_reduce = fail
        try:
            out["eval"] = m(torch.randn(2, 4, 3, 3, dtype=torch.float64)).shape
        finally:
            dist.all_gather, dist.all_reduce = saved
        torch.save(out, os.path.join(tmpdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    tmpdir = str(tmp_path_factory.mktemp("syncbn"))
    mp.start_processes(_worker, args=(tmpdir,), nprocs=WORLD, join=True, start_method="spawn")
    return [torch.load(os.path.join(tmpdir, f"rank{r}.pt")) for r in range(WORLD)]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_two_processes_match_one_batch(distributed_results, case):
    name, cls_name, shape, cl = case
    x_all, gy_all = _case_data(shape, cl)
    x_all.requires_grad_()
    bn = torch.nn.BatchNorm1d if len(shape) < 4 else torch.nn.BatchNorm2d
    ref = bn(shape[1], momentum=0.3).double()
    ref.load_state_dict(_make(cls_name, shape[1]).state_dict())
    relu = cls_name.endswith("ReLU2d")
    for _ in range(2):
        x_all.grad = None
        ref.zero_grad()
        y_all = ref(x_all)
        if relu:
            y_all = torch.relu(y_all)
        y_all.backward(gy_all)
    tol = dict(rtol=1e-10, atol=1e-12)
    lo = 0
    for rank, n in enumerate(SIZES):
        r = distributed_results[rank][name]
        torch.testing.assert_close(r["y"], y_all.detach()[lo:lo + n], **tol)
        torch.testing.assert_close(r["gx"], x_all.grad[lo:lo + n], **tol)
        torch.testing.assert_close(r["rm"], ref.running_mean, **tol)
        torch.testing.assert_close(r["rv"], ref.running_var, **tol)
        assert int(r["nbt"]) == 2
        assert r["y_cl"] == cl
        lo += n
    # each process returns its own share of the parameter gradients (DDP sums them)
    gw = sum(distributed_results[r][name]["gw"] for r in range(WORLD))
    gb = sum(distributed_results[r][name]["gb"] for r in range(WORLD))
    torch.testing.assert_close(gw, ref.weight.grad, **tol)
    torch.testing.assert_close(gb, ref.bias.grad, **tol)


def test_eval_does_not_communicate(distributed_results):
    assert all(r["eval"] == torch.Size([2, 4, 3, 3]) for r in distributed_results)


@pytest.mark.parametrize("relu", [False, True])
def test_single_process_is_batch_norm(relu):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    ours = (knn.SyncBatchNormReLU2d if relu else knn.SyncBatchNorm)(3).double()
    ref = torch.nn.BatchNorm2d(3).double()
    y, yr = ours(x), ref(x)
    if relu:
        yr = torch.relu(yr)
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(ours.running_var, ref.running_var)


def test_convert_sync_batchnorm():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.BatchNorm1d(4)), torch.nn.SyncBatchNorm(4),
    )
    model = cnnkernels.convert(model)
    keys = list(model.state_dict().keys())
    weight = model[1].weight
    model = knn.SyncBatchNorm.convert_sync_batchnorm(model, process_group="pg")
    assert type(model[1]) is knn.SyncBatchNormReLU2d and model[1].weight is weight
    assert model[1].process_group == "pg"
    assert type(model[3][0]) is knn.SyncBatchNorm and type(model[4]) is knn.SyncBatchNorm
    assert type(model[0]) is knn.Conv2d
    assert list(model.state_dict().keys()) == keys
    with pytest.raises(ValueError, match="expected 4D input"):
        knn.SyncBatchNormReLU2d(4)(torch.randn(2, 4))


def test_stats_and_elemt_ops():
    ops = torch.ops.cnnkernels
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    mean, var = ops.batch_norm_stats(x)
    torch.testing.assert_close(mean, x.mean((0, 2)))
    torch.testing.assert_close(var, x.var((0, 2), unbiased=False))
    # a single value per channel is fine here (the batch spans processes)
    m1, v1 = ops.batch_norm_stats(x[:1, :, :1])
    torch.testing.assert_close(m1, x[0, :, 0]) and torch.testing.assert_close(v1, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="batch_norm_stats: input should have at least 2"):
        ops.batch_norm_stats(torch.randn(3))
    with pytest.raises(RuntimeError, match="batch_norm_stats: input dtype should be float32 or float64"):
        ops.batch_norm_stats(torch.randn(3, 4).half())
    # elemt with the local sums and count equals training batch_norm_backward
    gy = torch.randn_like(x)
    w = torch.rand(4, dtype=torch.float64) + 0.5
    b = torch.randn(4, dtype=torch.float64)
    _, smean, sinv = ops.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5, 1, 0.0)
    gx, sdx, sd = ops.batch_norm_backward(gy, x, w, b, smean, sinv, True, 1, 0.0, [True, True, True])
    gx2 = ops.batch_norm_backward_elemt(gy, x, w, b, smean, sinv, sd, sdx, 15, 1, 0.0)
    torch.testing.assert_close(gx2, gx, rtol=1e-12, atol=1e-14)
    with pytest.raises(RuntimeError, match=r"batch_norm_backward_elemt: count .* should be at least this input's 15"):
        ops.batch_norm_backward_elemt(gy, x, w, b, smean, sinv, sd, sdx, 3, 1, 0.0)
    with pytest.raises(RuntimeError, match=r"batch_norm_backward_elemt: sum_dy should be a 1-D tensor of C=4"):
        ops.batch_norm_backward_elemt(gy, x, w, b, smean, sinv, sd[:2], sdx, 15, 1, 0.0)


def opcheck_cases(device):
    x = torch.randn(3, 4, 5, device=device)
    gy = torch.randn_like(x)
    w = torch.rand(4, device=device) + 0.5
    b = torch.randn(4, device=device)
    mean, var = torch.ops.cnnkernels.batch_norm_stats(x)
    inv = (var + 1e-5).rsqrt()
    return [
        (torch.ops.cnnkernels.batch_norm_stats, (x,)),
        (torch.ops.cnnkernels.batch_norm_backward_elemt,
         (gy, x, w, b, mean, inv, gy.sum((0, 2)), gy.mean((0, 2)), 30, 1, 0.0)),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args in opcheck_cases(device):
        torch.library.opcheck(op, args)


def test_zero_channels_and_regrouping():
    with pytest.raises(ValueError, match="number of input channels should be non-zero"):
        knn.SyncBatchNorm(0)(torch.randn(2, 0, 3))
    m = knn.SyncBatchNorm.convert_sync_batchnorm(knn.SyncBatchNormReLU2d(3), process_group="g2")
    assert type(m) is knn.SyncBatchNormReLU2d and m.process_group == "g2"
