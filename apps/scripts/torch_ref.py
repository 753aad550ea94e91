#!/usr/bin/python3
"""PyTorch reference training of the papers' CNN on Fashion-MNIST (the accuracy anchor).

Reads the same gzipped IDX files, normalises with mean 0.5 / std 0.5, trains with the given
batch, lr and momentum, and prints the test accuracy after every epoch as
`epoch E test_accuracy A`. Usage:
  /usr/bin/python3 apps/scripts/torch_ref.py --epochs 3 --batch 32 --lr 0.01 --momentum 0 --seed 0
"""
import argparse
import gzip
import time

import numpy as np
import torch
import torch.nn as nn


def load(path, header):
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (PyTorch CUDA, for the GPU check)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    d = a.data_dir
    xtr = torch.tensor(load(f"{d}/train-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28))
    ytr = torch.tensor(load(f"{d}/train-labels-idx1-ubyte.gz", 8).astype(np.int64))
    xte = torch.tensor(load(f"{d}/t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28))
    yte = torch.tensor(load(f"{d}/t10k-labels-idx1-ubyte.gz", 8).astype(np.int64))
    norm = lambda x: (x.float() / 255.0 - 0.5) / 0.5
    xtr, xte = norm(xtr).to(dev), norm(xte).to(dev)
    ytr, yte = ytr.to(dev), yte.to(dev)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(1568, 512), nn.ReLU(), nn.Dropout(0.25), nn.Linear(512, 10)).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=a.momentum)
    lf = nn.CrossEntropyLoss()
    t0 = time.time()
    for epoch in range(1, a.epochs + 1):
        net.train()
        perm = torch.randperm(len(xtr), device=dev)
        for i in range(0, len(xtr), a.batch):
            idx = perm[i:i + a.batch]
            opt.zero_grad()
            lf(net(xtr[idx]), ytr[idx]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = sum((net(xte[i:i + 1000]).argmax(1) == yte[i:i + 1000]).sum().item()
                      for i in range(0, len(xte), 1000)) / len(xte)
        el = time.time() - t0
        print(f"epoch {epoch} test_accuracy {acc:.4f} time_s {el:.1f} samples_per_s {epoch * len(xtr) / el:.0f}",
              flush=True)


if __name__ == "__main__":
    main()
