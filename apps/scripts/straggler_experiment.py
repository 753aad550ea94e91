#!/usr/bin/python3
"""The straggler experiment (the Falcon paper's comparison): every consistency policy on the
Fashion-MNIST cnn with 4 workers, once with one worker slowed 3x and once with transient
stragglers, several seeds each; the median wall time to reach the target test accuracy and the
final accuracy, as a markdown table and a PNG plot.

Emulation (--emulation): `budget` (default) gives every rank its own CPU budget (a cgroup CPU
quota, apps/scripts/cpu_budget.sh; root): the machine's cores split evenly over the ranks, the
straggler at 1/FACTOR of that, so a straggler's slowness frees nothing for the others, as on a
cluster; transient stragglers are windows in which one worker's budget drops (each worker once,
in turn, --window seconds). `sleep` is the older emulation (`--straggle` / `--straggle-random`:
the straggler sleeps (FACTOR-1) x its compute time, handing its CPU to the others).

  /usr/bin/python3 apps/scripts/straggler_experiment.py --phoenix build/bin/phoenix \
      --out docs/results/stragglers

Each job is a real `mpirun` (1 server + the workers), bounded by --timeout; a policy the binary
does not know yet is reported as such, not skipped silently.
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys

POLICIES = {
    "bsp": ["--sync", "bsp"],
    "ssp": ["--sync", "ssp", "--staleness", "3"],
    "syncopt": ["--sync", "syncopt", "--backup-workers", "1"],
    "flexrr": ["--sync", "flexrr"],
    "consgd": ["--sync", "consgd"],
    "dynsgd": ["--sync", "dynsgd"],
    "epsp-enforced": ["--sync", "epsp", "--epsp-mode", "enforced"],
    "epsp-slack": ["--sync", "epsp", "--epsp-mode", "slack"],
    # ablations (not in the default list): EPSP without task transfer, without elastic lanes
    "epsp-notransfer": ["--sync", "epsp", "--epsp-mode", "enforced", "--transfer", "off"],
    "epsp-p1": ["--sync", "epsp", "--epsp-mode", "enforced", "--max-parallelism", "1"],
}
DEFAULT_POLICIES = ["bsp", "ssp", "syncopt", "flexrr", "consgd", "dynsgd", "epsp-enforced", "epsp-slack"]


BUDGET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_budget.sh")


def settings(a):
    # The straggler is the last worker rank (rank 0 is the server). Sleep emulation: phoenix
    # flags; budget emulation: the cpu_budget.sh spec (ranks not named get the even share).
    workers, factor = a.workers, a.factor
    if a.emulation == "sleep":
        return {"fixed": {"flags": ["--straggle", f"{workers}:{factor}"]},
                "random": {"flags": ["--straggle-random", f"{a.prob}:{factor}"]}}
    share = (os.cpu_count() or 2) / (workers + 1)
    slow = share / factor
    windows = ",".join(f"{r}:{slow:.4f}@{a.window * (2 * (r - 1)) + 2:g}-{a.window * (2 * (r - 1) + 1) + 2:g}"
                       for r in range(1, workers + 1))
    return {"fixed": {"flags": [], "budgets": f"{workers}:{slow:.4f}", "share": share},
            "transient": {"flags": [], "budgets": windows, "share": share}}


def run_job(a, name, policy, setting_flags, seed):
    base = os.path.join(a.out, "runs", f"{name}-{policy}-s{seed}")
    os.makedirs(os.path.dirname(base), exist_ok=True)
    launch = ["mpirun", "--oversubscribe", "--bind-to", "none", "-n", str(a.workers + 1)]
    if "budgets" in setting_flags:
        launch = ([BUDGET, "run", "--budgets", setting_flags["budgets"], "--default",
                   f"{setting_flags['share']:.4f}", "--"] + launch + [BUDGET, "exec"])
    length = ["--steps", str(a.steps)] if a.steps else ["--epochs", str(a.epochs)]  # one of the two
    cmd = (launch + [a.phoenix, "train", "--servers", "1", "--model", a.model, *length, "--threads", "1",
            "--seed", str(seed), "--eval-every", a.eval_every, "--log-level", "warn",
            "--metrics", base + ".csv", "--summary", base + ".json"]
           + POLICIES[policy] + setting_flags["flags"])
    cmd += a.extra.split()
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_WAIT_POLICY="PASSIVE")
    for f in (base + ".csv", base + ".json"):
        if os.path.exists(f):
            os.remove(f)
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
        out = p.stdout + p.stderr
    except subprocess.TimeoutExpired:
        return {"status": "timeout"}
    if "is not known" in out or "not in {" in out or "not in [" in out:
        return {"status": "not built"}
    if p.returncode != 0 or not os.path.exists(base + ".json"):
        return {"status": f"failed (rc {p.returncode}): {out.strip().splitlines()[-1] if out.strip() else ''}"}
    rows = list(csv.DictReader(open(base + ".csv")))
    curve = [(float(r["time_s"]), float(r["test_accuracy"])) for r in rows if r["test_accuracy"]]
    reach = next((t for t, acc in curve if acc >= a.target), None)
    summary = json.load(open(base + ".json"))
    return {"status": "ok", "reach_s": reach, "final": summary["final_test_accuracy"], "curve": curve,
            "seconds": summary.get("train_seconds")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phoenix", required=True)
    ap.add_argument("--out", default="docs/results/stragglers")
    ap.add_argument("--policies", default=",".join(DEFAULT_POLICIES))
    ap.add_argument("--settings", default="", help="default: fixed,transient (budget) or fixed,random (sleep)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=0, help="per worker (0: --epochs); for smoke runs")
    ap.add_argument("--target", type=float, default=0.85)
    ap.add_argument("--factor", type=float, default=3.0)
    ap.add_argument("--prob", type=float, default=0.1, help="--straggle-random probability (sleep emulation)")
    ap.add_argument("--emulation", choices=["budget", "sleep"], default="budget",
                    help="budget: per-rank CPU quotas (root); sleep: the straggler sleeps")
    ap.add_argument("--window", type=float, default=5.0,
                    help="budget emulation, transient stragglers: seconds each worker is slowed, in turn")
    ap.add_argument("--eval-every", default="2s")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--extra", default="", help="further phoenix train flags for every job")
    ap.add_argument("--report-only", action="store_true", help="only redo table and plot from OUT/results.json")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other policies' results from OUT/results.json (rerun a few only)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    results = {}
    if (a.merge or a.report_only) and os.path.exists(os.path.join(a.out, "results.json")):
        results = json.load(open(os.path.join(a.out, "results.json")))
    all_settings = settings(a)
    if not a.settings:
        a.settings = ",".join(all_settings)
    for policy in a.policies.split(","):
        if policy not in POLICIES:
            sys.exit(f"unknown policy {policy} (known: {', '.join(POLICIES)})")
    # Seed-major order: every policy's run of one seed and setting comes before the next seed,
    # so that a drift in the machine's speed (a VM's neighbours) spreads over all policies
    # instead of favouring the ones run first.
    unbuilt = set()
    for seed in ([] if a.report_only else [int(s) for s in a.seeds.split(",")]):
        for name in a.settings.split(","):
            for policy in a.policies.split(","):
                if policy in unbuilt:
                    continue
                r = run_job(a, name, policy, all_settings[name], seed)
                runs = results.setdefault(name, {}).setdefault(policy, [])
                if seed == int(a.seeds.split(",")[0]):
                    runs.clear()  # --merge: this policy's earlier runs are replaced
                runs.append(r)
                print(f"{name:7s} {policy:14s} seed {seed}: {r['status']}"
                      + (f", {a.target:.0%} at {r['reach_s']} s, final {r['final']:.4f}" if r["status"] == "ok" else ""),
                      flush=True)
                if r["status"] == "not built":
                    unbuilt.add(policy)  # the other seeds would say the same

    lines = [f"| setting | policy | median time to {a.target:.0%} (s) | runs reaching it | median final accuracy | vs BSP "
             f"| median time for {a.epochs} epochs (s) |",
             "|---|---|---|---|---|---|---|"]
    medians = {}
    for name, by_policy in results.items():
        for policy, runs in by_policy.items():
            ok = [r for r in runs if r["status"] == "ok"]
            reach = [r["reach_s"] for r in ok if r["reach_s"] is not None]
            med = statistics.median(reach) if reach and len(reach) * 2 > len(ok) else None
            medians[(name, policy)] = med
            status = "" if ok else runs[0]["status"]
            final = f"{statistics.median(r['final'] for r in ok):.4f}" if ok else status
            secs = [r["seconds"] for r in ok if r.get("seconds")]
            whole = f"{statistics.median(secs):.1f}" if secs else "-"
            lines.append(f"| {name} | {policy} | {f'{med:.1f}' if med is not None else (status or 'not reached')} | "
                         f"{len(reach)}/{len(runs)} | {final} | PLACEHOLDER-{name}-{policy} | {whole} |")
    table = "\n".join(lines)
    for name in results:
        base = medians.get((name, "bsp"))
        for policy in results[name]:
            m = medians.get((name, policy))
            ratio = f"{m / base:.2f}x" if m is not None and base else "-"
            table = table.replace(f"PLACEHOLDER-{name}-{policy}", ratio)
    # Falcon's comparison: EPSP's time to the target against each baseline, as a change in
    # percent (negative: EPSP is sooner), beside the reductions the paper reports.
    falcon = {"flexrr": -61.83, "syncopt": -55.19, "consgd": -38.92, "dynsgd": -23.68}
    cmp = ["", f"EPSP (enforced) against each baseline: change of the median time to {a.target:.0%} "
               "(negative: EPSP sooner)", "",
           "| setting | baseline | baseline (s) | EPSP (s) | change | Falcon reports |", "|---|---|---|---|---|---|"]
    for name in results:
        e = medians.get((name, "epsp-enforced"))
        for policy in results[name]:
            if policy.startswith("epsp"):
                continue
            m = medians.get((name, policy))
            change = f"{(e / m - 1) * 100:+.1f} %" if e is not None and m else "-"
            cmp.append(f"| {name} | {policy} | {f'{m:.1f}' if m is not None else 'not reached'} | "
                       f"{f'{e:.1f}' if e is not None else 'not reached'} | {change} | "
                       f"{f'{falcon[policy]:+.2f} %' if policy in falcon else '-'} |")
    table += "\n" + "\n".join(cmp)
    # Where the time goes (the per-iteration timelines of the first seed, iterations 100 on):
    # the mean ms per iteration of the slowed worker and of the others.
    first = int(a.seeds.split(",")[0])
    tl = ["", f"Where an iteration's time goes (seed {first}, iterations from 100 on, mean ms; the slowed "
              f"worker is worker {a.workers - 1} in the fixed setting):", "",
          "| setting | policy | ms per iteration | others: compute / steal / exchange | slowed: compute / steal / exchange |",
          "|---|---|---|---|---|"]
    for name in results:
        for policy in results[name]:
            rows = []
            for w in range(a.workers):
                f = os.path.join(a.out, "runs", f"{name}-{policy}-s{first}.csv.worker{w}.csv")
                try:
                    with open(f) as fh:  # (a failed run's file may end in a cut-off row)
                        rows.append([r for r in csv.DictReader(fh)
                                     if all(r.get(k) not in (None, "") for k in ("time_s", "compute_ms", "steal_ms", "exchange_ms"))][100:])
                except OSError:
                    rows = []
                    break
            if not rows or not all(rows) or "compute_ms" not in rows[0][0]:
                continue
            def mean(rs, k):
                return statistics.mean(float(r[k]) for r in rs)
            per = (float(rows[0][-1]["time_s"]) - float(rows[0][0]["time_s"])) / max(1, len(rows[0]) - 1) * 1e3
            others = [r for rs in rows[:-1] for r in rs]
            fmt = lambda rs: " / ".join(f"{mean(rs, k):.1f}" for k in ("compute_ms", "steal_ms", "exchange_ms"))
            tl.append(f"| {name} | {policy} | {per:.1f} | {fmt(others)} | {fmt(rows[-1])} |")
    if len(tl) > 5:
        table += "\n" + "\n".join(tl)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(table)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (name, by_policy) in zip(axes[0], results.items()):
        for policy, runs in by_policy.items():
            ok = [r for r in runs if r["status"] == "ok" and r["curve"]]
            if not ok:
                continue
            r = sorted(ok, key=lambda r: r["final"])[len(ok) // 2]  # the median seed's curve
            ax.plot([t for t, _ in r["curve"]], [acc for _, acc in r["curve"]], label=policy)
        ax.axhline(a.target, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{name} stragglers ({a.workers} workers, factor {a.factor:g}, {a.emulation})")
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "stragglers.png"), dpi=110)
    print("wrote", os.path.join(a.out, "table.md"), "and", os.path.join(a.out, "stragglers.png"))


if __name__ == "__main__":
    main()
