#!/usr/bin/python3
"""Paper A ("Training Through Failure") reproduced with Phoenix: checkpointing, chain
replication and the stateless server, each with BSP ("sync") and ASP ("async") training where
the paper had both, plus hybrid and a run without failure; the parameter server is SIGKILLed at
30 s (one kill) or at 30 s and 80 s (two kills), with the paper's 20 s downtime before the
replacement serves, and again with no forced downtime (our real recovery time). Every run lasts
--duration seconds (the paper: about 215 s) and is then stopped by SIGUSR1 (Phoenix ends after
a consistent step).

While a run goes, the driver samples every rank's CPU use and resident memory from /proc
(ranks found as mpirun's children, identified by OMPI_COMM_WORLD_RANK); the metrics CSV gives
test accuracy and processed updates over time. Outputs in --out: runs/*.csv|json (raw),
samples/*.json (CPU, memory), table.md (accuracy at --at seconds beside the paper's), and the
figures accuracy-1kill.png / accuracy-2kills.png (the paper's Figs. 4 and 5), cpu.png,
memory.png, updates.png (Figs. 6-8).

  /usr/bin/python3 apps/scripts/recovery_experiment.py --phoenix build/bin/phoenix \\
      --out docs/results/recovery                       # the whole grid (about 2 hours)
  ... --scenarios 1kill-20s --modes ckpt-sync,stateless --duration 120   # a part of it

Paper settings by default: plain SGD, lr 0.01 constant, batch 32, the cnn; --workers 4 (the
paper's logged runs had 1).
"""
import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time

# The mpirun flag that keeps survivors alive (Open MPI 4: --enable-recovery, 5: --with-ft ulfm).
FT_FLAG = subprocess.run([os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpirun_ft_flag.sh")],
                         capture_output=True, text=True, check=True).stdout.split()

# mode -> (phoenix flags, the paper's column name or None)
MODES = {
    "none-sync": (["--sync", "bsp", "--recovery", "none"], None),
    "none-async": (["--sync", "asp", "--recovery", "none"], None),
    "ckpt-sync": (["--sync", "bsp", "--recovery", "checkpoint", "--checkpoint-every", "100",
                   "--checkpoint-mode", "sync"], "sync ckpt"),
    "ckpt-async": (["--sync", "asp", "--recovery", "checkpoint", "--checkpoint-every", "100",
                    "--checkpoint-mode", "sync"], "async ckpt"),
    "chain-sync": (["--sync", "bsp", "--recovery", "chain", "--chain-mode", "async",
                    "--replicate-every", "100"], "sync chain"),
    "chain-async": (["--sync", "asp", "--recovery", "chain", "--chain-mode", "async",
                     "--replicate-every", "100"], "async chain"),
    "stateless": (["--sync", "asp", "--recovery", "stateless", "--checkpoint-every", "100"], "stateless"),
    "hybrid-sync": (["--sync", "bsp", "--recovery", "hybrid"], None),
    "hybrid-async": (["--sync", "asp", "--recovery", "hybrid"], None),
    # for failures and stragglers at once (--extra "--straggle 2:3"): the straggler-aware schemes
    "none-epsp": (["--sync", "epsp", "--recovery", "none"], None),
    "none-syncopt": (["--sync", "syncopt", "--backup-workers", "1", "--recovery", "none"], None),
    "epsp-chain": (["--sync", "epsp", "--recovery", "chain", "--chain-mode", "async",
                    "--replicate-every", "100"], None),
    "syncopt-chain": (["--sync", "syncopt", "--backup-workers", "1", "--recovery", "chain",
                       "--chain-mode", "async", "--replicate-every", "100"], None),
    "epsp-hybrid": (["--sync", "epsp", "--recovery", "hybrid"], None),
}
# scenario -> (kill times, downtime seconds)
SCENARIOS = {
    "1kill-20s": (["30s"], 20),
    "2kills-20s": (["30s", "80s"], 20),
    "1kill-0s": (["30s"], 0),
    "2kills-0s": (["30s", "80s"], 0),
}
PAPER = {  # accuracy at about 215 s [paper, logs]
    1: {"sync ckpt": 0.765, "async ckpt": 0.758, "sync chain": 0.769, "async chain": 0.723, "stateless": 0.679},
    2: {"sync ckpt": 0.724, "async ckpt": 0.738, "sync chain": 0.756, "async chain": 0.748, "stateless": 0.745},
}


def ranks_of(mpirun_pid):
    """{rank: pid} of mpirun's children that are Phoenix ranks."""
    out = {}
    try:
        kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(mpirun_pid)], capture_output=True,
                              text=True).stdout.split()
    except OSError:
        return out
    for k in kids:
        try:
            env = open(f"/proc/{k}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        for e in env:
            if e.startswith(b"OMPI_COMM_WORLD_RANK="):
                out[int(e.split(b"=")[1])] = int(k)
    return out


def sample(pid):
    """(cpu seconds, rss MiB) of a process, or None when it is gone."""
    try:
        st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        cpu = (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")
        rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:")) / 1024
        return cpu, rss
    except (OSError, StopIteration, IndexError, ValueError):
        return None


def run(a, mode, scenario):
    name = f"{scenario}-{mode}" if not mode.startswith("none") else mode
    base = os.path.join(a.out, "runs", name)
    os.makedirs(os.path.dirname(base), exist_ok=True)
    os.makedirs(os.path.join(a.out, "samples"), exist_ok=True)
    flags, _ = MODES[mode]
    failing = not mode.startswith("none")
    kills, downtime = SCENARIOS[scenario] if failing else ([], 0)
    # servers 1; chain and hybrid: one replica per kill; checkpoint and stateless: one spare per kill
    layout = ["--servers", "1"]
    if failing and ("chain" in mode or "hybrid" in mode):
        layout += ["--replicas", str(len(kills))]
    elif failing:
        layout += ["--spares", str(len(kills))]
    ranks = 1 + (len(kills) if failing else 0) + a.workers
    ckdir = base + "-ckpt"
    subprocess.run(["rm", "-rf", ckdir])
    for f in (base + ".csv", base + ".json"):
        if os.path.exists(f):
            os.remove(f)
    cmd = (["mpirun", "--oversubscribe", "--bind-to", "none", "-n", str(ranks)]
           + (FT_FLAG if failing else [])
           + [a.phoenix, "train", "--model", "cnn", "--epochs", "1000", "--threads", "1",
              "--batch", "32", "--lr", "0.01", "--momentum", "0", "--lr-schedule", "constant",
              "--seed", str(a.seed), "--eval-every", a.eval_every, "--log-level", "warn",
              "--checkpoint-dir", ckdir, "--metrics", base + ".csv", "--summary", base + ".json"]
           + layout + flags)
    cmd += a.extra.split()
    if failing:
        cmd += ["--kill-server", ",".join(kills)]
        if downtime:
            cmd += ["--downtime", str(downtime)]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_WAIT_POLICY="PASSIVE")
    log = open(base + ".log", "w")
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.time()
    samples = []
    stopped = False
    while p.poll() is None:
        now = time.time() - t0
        if now >= a.duration and not stopped:
            os.kill(p.pid, signal.SIGUSR1)  # mpirun forwards it: a clean stop after a step
            stopped = True
        if now >= a.duration + 120:
            os.killpg(p.pid, signal.SIGKILL)  # bounded: never outlives the run by much
            break
        row = {"t": round(now, 2)}
        for r, pid in ranks_of(p.pid).items():
            s = sample(pid)
            if s:
                row[str(r)] = s
        samples.append(row)
        time.sleep(1.0)
    p.wait()
    log.close()
    json.dump({"ranks": ranks, "workers": a.workers, "samples": samples},
              open(os.path.join(a.out, "samples", name + ".json"), "w"))
    if not os.path.exists(base + ".json"):
        return {"name": name, "status": f"failed (rc {p.returncode}), see {base}.log"}
    rows = list(csv.DictReader(open(base + ".csv")))
    curve = [(float(r["time_s"]), float(r["test_accuracy"]), int(r["updates_applied"]))
             for r in rows if r["test_accuracy"]]
    summary = json.load(open(base + ".json"))
    return {"name": name, "mode": mode, "scenario": scenario if failing else "none", "status": "ok",
            "curve": curve, "usage": usage(samples), "summary": {k: summary.get(k) for k in
                                        ("final_test_accuracy", "updates_applied", "failures", "steps_completed")}}


def usage(samples):
    """[t, CPU cores, resident MiB] summed over the ranks, from /proc samples (CPU as the
    difference of cumulative CPU seconds between two samples)."""
    out, prev = [], None
    for row in samples:
        ranks = {k: v for k, v in row.items() if k != "t"}
        cpu = sum(v[0] for v in ranks.values())
        mem = sum(v[1] for v in ranks.values())
        if prev is not None and row["t"] > prev[0]:
            out.append([row["t"], round(max(0.0, (cpu - prev[1]) / (row["t"] - prev[0])), 3), round(mem, 1)])
        prev = (row["t"], cpu)
    return out


def at(curve, t):
    """Test accuracy of the last evaluation at or before t seconds."""
    best = None
    for ts, acc, _ in curve:
        if ts <= t:
            best = acc
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phoenix", required=True)
    ap.add_argument("--out", default="docs/results/recovery")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--duration", type=float, default=220, help="seconds per run, then SIGUSR1")
    ap.add_argument("--at", type=float, default=215, help="the table's accuracy time")
    ap.add_argument("--eval-every", default="5s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra", default="", help="further phoenix train flags for every run (e.g. --straggle 5:3)")
    ap.add_argument("--target", type=float, default=0.89, help="the table's time-to-accuracy target")
    ap.add_argument("--merge", action="store_true",
                    help="keep the runs of --out/results.json that this call does not repeat")
    ap.add_argument("--report-only", action="store_true",
                    help="no runs: table and figures from --out/results.json")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "results.json")
    if a.report_only:
        if not os.path.exists(path):
            sys.exit(f"{path} does not exist: run the experiment first (without --report-only)")
        results = json.load(open(path))
        for r in results:  # runs recorded before usage was kept in results.json
            f = os.path.join(a.out, "samples", r["name"] + ".json")
            if r["status"] == "ok" and "usage" not in r and os.path.exists(f):
                r["usage"] = usage(json.load(open(f))["samples"])
        json.dump(results, open(path, "w"), indent=1)
        report(a, results)
        return
    results = []
    modes = a.modes.split(",")
    for m in modes:
        if m not in MODES:
            sys.exit(f"unknown mode {m} (known: {', '.join(MODES)})")
    for sc in a.scenarios.split(","):
        if sc not in SCENARIOS:
            sys.exit(f"unknown scenario {sc} (known: {', '.join(SCENARIOS)})")
    done_baselines = set()
    for sc in a.scenarios.split(","):
        for m in modes:
            if m.startswith("none"):
                if m in done_baselines:
                    continue
                done_baselines.add(m)
            r = run(a, m, sc)
            results.append(r)
            acc = at(r["curve"], a.at) if r["status"] == "ok" else None
            print(f"{r['name']:24s} {r['status']}" + (f", accuracy at {a.at:g} s: {acc}" if acc is not None else ""),
                  flush=True)
    if a.merge and os.path.exists(path):
        fresh = {r["name"] for r in results}
        results = [r for r in json.load(open(path)) if r["name"] not in fresh] + results
    order = {sc: i for i, sc in enumerate(["none"] + list(SCENARIOS))}
    results.sort(key=lambda r: (order.get(r.get("scenario", "none"), 99), list(MODES).index(r["mode"])
                                if r.get("mode") in MODES else 99))
    json.dump(results, open(path, "w"), indent=1)
    report(a, results)


def reach(curve, target):
    """Seconds to the first evaluation at or above target, or None."""
    for ts, acc, _ in curve:
        if acc >= target:
            return ts
    return None


def report(a, results):
    ok = [r for r in results if r["status"] == "ok"]
    rows = []
    for r in ok:
        kills = len(SCENARIOS[r["scenario"]][0]) if r["scenario"] != "none" else 0
        down = f"{SCENARIOS[r['scenario']][1]} s" if kills else "-"
        # (the paper's runs all had its 20 s downtime)
        paper = PAPER.get(kills, {}).get(MODES[r["mode"]][1]) if kills and SCENARIOS[r["scenario"]][1] == 20 else None
        rec = ", ".join(str(f.get("recovered_ms")) for f in (r["summary"]["failures"] or [])) or "-"
        acc = at(r["curve"], a.at)
        t = reach(r["curve"], a.target)
        rows.append([r["mode"], str(kills), down, str(acc) if acc is not None else "-",
                     str(paper) if paper is not None else "-", f"{t:.1f}" if t is not None else "not reached",
                     str(r["summary"]["updates_applied"]), rec])
    for r in results:
        if r["status"] != "ok":
            rows.append([r["name"], "", "", r["status"], "", "", "", ""])
    head = ["run", "kills", "downtime", f"accuracy at {a.at:g} s", "paper", f"s to {a.target * 100:g} %",
            "updates applied", "recovery ms"]
    if all(row[4] in ("-", "") for row in rows):  # no run the paper made: no paper column
        head.pop(4)
        rows = [row[:4] + row[5:] for row in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    open(os.path.join(a.out, "table.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    note = f" ({a.extra})" if a.extra else ""
    for sc_name, title, fname in (("1kill", "one kill at 30 s", "accuracy-1kill.png"),
                                  ("2kills", "kills at 30 s and 80 s", "accuracy-2kills.png")):
        downs = [d for d in ("20s", "0s") if any(r["scenario"] == f"{sc_name}-{d}" for r in ok)]
        if not downs:
            continue
        fig, axes = plt.subplots(1, len(downs), figsize=(6.5 * len(downs), 4.5), squeeze=False)
        for ax, down in zip(axes[0], downs):
            for r in ok:
                if r["scenario"] == f"{sc_name}-{down}" or r["scenario"] == "none":
                    ax.plot([c[0] for c in r["curve"]], [c[1] for c in r["curve"]], label=r["mode"],
                            linestyle=":" if r["scenario"] == "none" else "-")
            for k in SCENARIOS[f"{sc_name}-20s"][0]:
                ax.axvline(float(k[:-1]), color="red", linewidth=0.8, alpha=0.5)
            ax.set_title(f"{title}, {'20 s downtime (paper)' if down == '20s' else 'no forced downtime'}{note}",
                         fontsize=9)
            ax.set_xlabel("wall time (s)")
            ax.set_ylabel("test accuracy")
            ax.set_ylim(0.5, 0.95)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, fname), dpi=100)
        plt.close(fig)
    # Figs. 6-8: CPU use (cores), memory (MiB) summed over the ranks, processed updates, for the
    # one-kill paper scenario (else the first failure scenario that was run).
    present = [sc for sc in SCENARIOS if any(r["scenario"] == sc for r in ok)]
    fig_sc = "1kill-20s" if "1kill-20s" in present else (present[0] if present else "none")
    for what, fname, ylabel in (("cpu", "cpu.png", "CPU use of all ranks (cores)"),
                                ("mem", "memory.png", "resident memory of all ranks (MiB)"),
                                ("upd", "updates.png", "updates applied (shard 0)")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in ok:
            if r["scenario"] not in (fig_sc, "none"):
                continue
            if what == "upd":
                ax.plot([c[0] for c in r["curve"]], [c[2] for c in r["curve"]], label=r["mode"])
                continue
            ts = [u[0] for u in r.get("usage", [])]
            ys = [u[1] if what == "cpu" else u[2] for u in r.get("usage", [])]
            ax.plot(ts, ys, label=r["mode"])
        for k in SCENARIOS.get(fig_sc, ([], 0))[0]:
            ax.axvline(float(k[:-1]), color="red", linewidth=0.8, alpha=0.5)
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel(ylabel)
        kills, down = SCENARIOS.get(fig_sc, ([], 0))
        ax.set_title(f"{len(kills)} kill(s) at {', '.join(kills)}, {down} s downtime{note}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, fname), dpi=100)
        plt.close(fig)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
