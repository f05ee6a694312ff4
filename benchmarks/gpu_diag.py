"""Small checks run in subprocesses on the GPU machine (a crash in one does
not hide the others): good and bad calls on the CPU and on CUDA."""
import subprocess
import sys

CASES = {
    "cpu good": "CF.max_pool2d(torch.randn(1,1,4,4), 2)",
    "cpu bad (exception)": "CF.max_pool2d(torch.randn(4,4), 2)",
    "cpu plain TORCH_CHECK via dtype": "CF.max_pool2d(torch.randn(1,1,4,4).int(), 2)",
    "cuda good": "print(CF.max_pool2d(torch.randn(1,1,4,4,device='cuda'), 2).cpu())",
    "cuda bad (exception)": "CF.max_pool2d(torch.randn(4,4,device='cuda'), 2)",
    "torch own error": "torch.ops.aten.max_pool2d(torch.randn(4), [2])",
}
for name, stmt in CASES.items():
    code = f"import torch, cnnkernels.functional as CF\ntry:\n    {stmt}\n    print('ok')\nexcept Exception as e:\n    print('raised', type(e).__name__, str(e)[:120])\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    print(f"{name:36s} rc={r.returncode} {r.stdout.strip()[-200:]} {r.stderr.strip()[-300:] if r.returncode else ''}")
