#!/usr/bin/python3
"""Phoenix vs PyTorch (Debian's python3-torch) training throughput, side by side.

For each model, batch and thread count, runs one PyTorch training measurement and one Phoenix
measurement (`phoenix bench kernels`) back to back, on the same random data shape, and prints
samples/s and the ratio. PyTorch gets its best CPU configuration: torch.set_num_threads(T),
OPENBLAS_NUM_THREADS=1 (no second thread pool) and OpenBLAS's fast kernels for this CPU
(OPENBLAS_CORETYPE removed from its environment only; Phoenix does not use OpenBLAS).

Usage: /usr/bin/python3 apps/scripts/bench_vs_torch.py --phoenix build/bin/phoenix [--seconds 3]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

TORCH_CHILD = r'''
import sys, time, torch, torch.nn as nn
model, batch, threads, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
if model == "cnn":
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(1568, 512), nn.ReLU(), nn.Dropout(0.25), nn.Linear(512, 10))
else:
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256),
                        nn.ReLU(), nn.Linear(256, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
x = torch.rand(batch, 1, 28, 28) * 2 - 1
y = torch.randint(0, 10, (batch,))
def step():
    opt.zero_grad()
    loss_fn(net(x), y).backward()
    opt.step()
for _ in range(10):
    step()
steps, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    for _ in range(10):
        step()
    steps += 10
print(steps * batch / (time.perf_counter() - t0))
'''


def torch_rate(model, batch, threads, seconds):
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env["OPENBLAS_NUM_THREADS"] = "1"
    env["OMP_NUM_THREADS"] = str(threads)
    out = subprocess.run([sys.executable, "-c", TORCH_CHILD, model, str(batch), str(threads),
                          str(seconds)], env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def phoenix_rate(phx, model, batch, threads, seconds):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([phx, "bench", "kernels", "--models", model, "--batches", str(batch),
                        "--threads", str(threads), "--seconds", str(seconds), "--json", f.name],
                       check=True, capture_output=True, text=True)
        return json.load(open(f.name))[0]["samples_per_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phoenix", required=True)
    ap.add_argument("--models", default="cnn,mlp")
    ap.add_argument("--batches", default="32,128")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs; the best counts")
    ap.add_argument("--markdown", help="also write the table as Markdown to this file")
    a = ap.parse_args()
    import torch  # noqa: F401  (fail early with a clear message if missing)
    rows = []
    print(f"{'model':6} {'batch':>5} {'thr':>3} {'pytorch/s':>10} {'phoenix/s':>10} {'ratio':>6}")
    for model in a.models.split(","):
        for threads in map(int, a.threads.split(",")):
            for batch in map(int, a.batches.split(",")):
                t = p = 0.0
                for _ in range(a.repeats):
                    t = max(t, torch_rate(model, batch, threads, a.seconds))
                    p = max(p, phoenix_rate(a.phoenix, model, batch, threads, a.seconds))
                rows.append((model, batch, threads, t, p, p / t))
                print(f"{model:6} {batch:5d} {threads:3d} {t:10.0f} {p:10.0f} {p / t:6.2f}",
                      flush=True)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write("| model | batch | threads | PyTorch samples/s | Phoenix samples/s | ratio |\n")
            f.write("|---|---|---|---|---|---|\n")
            for m, b, th, t, p, r in rows:
                f.write(f"| {m} | {b} | {th} | {t:.0f} | {p:.0f} | {r:.2f} |\n")


if __name__ == "__main__":
    main()
