"""Which side is right for CUDA avg_pool2d backward, channels_last + padding:
compare ours (CUDA), torch (CUDA) and torch (CPU, float64) gradients."""
import torch
import torch.nn.functional as F
import cnnkernels.functional as CF

torch.manual_seed(0)
for cfg in [(3, 2, 1, True, False), (3, 1, 1, False, False), (2, 2, 0, False, True)]:
    k, s, p, ceil, cip = cfg
    x = torch.randn(2, 3, 12, 17, dtype=torch.float64)
    g = torch.randn_like(F.avg_pool2d(x, k, s, p, ceil, cip))
    res = {}
    for name, dev, fn, cl in [("cpu-ref", "cpu", F.avg_pool2d, False), ("torch-cuda-cl", "cuda", F.avg_pool2d, True),
                              ("ours-cuda-cl", "cuda", CF.avg_pool2d, True), ("ours-cuda-nchw", "cuda", CF.avg_pool2d, False),
                              ("ours-cpu-cl", "cpu", CF.avg_pool2d, True)]:
        xx = x.detach().clone().to(dev)
        if cl:
            xx = xx.contiguous(memory_format=torch.channels_last)
        xx = xx.detach().requires_grad_()
        out = fn(xx, k, s, p, ceil, cip)
        out.backward(g.to(dev).contiguous(memory_format=torch.channels_last) if cl else g.to(dev))
        res[name] = (xx.grad.cpu(), xx.grad.stride(), out.stride())
    ref = res["cpu-ref"][0]
    print(cfg, {n: (float((v[0] - ref).abs().max()), v[1], v[2]) for n, v in res.items()})
