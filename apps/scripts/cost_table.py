#!/usr/bin/python3
"""Cost per strategy to reach a target accuracy, from the measured runs of the straggler and
recovery experiments (their results.json). Paper A argued cost only in words ("rented
accelerators cost the same whether busy or idle"); this puts numbers on it under stated
assumptions:

- every worker rank is one GPU, billed for the whole wall time to the target, busy or not;
- every server, replica and spare rank is one CPU instance, billed the same way (a replica or
  a spare costs money while it only waits);
- prices: --gpu-price per GPU-hour (default 2.50 USD, an on-demand H100-class price) and
  --cpu-price per CPU-instance-hour (default 0.20 USD);
- wall times are this 2-core VM's: absolute hours would be shorter on GPUs, so read the ratios.
  Times are scaled by --scale (default 1) for a what-if.

  /usr/bin/python3 apps/scripts/cost_table.py --stragglers docs/results/stragglers/results.json \\
      --recovery docs/results/recovery/results.json --recovery docs/results/mixed/results.json \\
      --out docs/results/cost.md
"""
import argparse
import json
import os
import statistics


def money(workers, others, seconds, a):
    hours = seconds * a.scale / 3600.0
    return workers * hours, workers * hours * a.gpu_price + others * hours * a.cpu_price


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stragglers")
    ap.add_argument("--recovery", action="append", default=[],
                    help="a recovery_experiment.py results.json (repeatable: each file's runs are "
                         "named after its folder)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--gpu-price", type=float, default=2.50)
    ap.add_argument("--cpu-price", type=float, default=0.20)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--recovery-target", type=float, default=0.80)
    a = ap.parse_args()
    lines = [f"Assumptions: {a.workers} worker ranks = {a.workers} GPUs at {a.gpu_price:.2f} USD per "
             f"GPU-hour; every server, replica or spare rank = one CPU instance at {a.cpu_price:.2f} "
             f"USD per hour; all billed for the whole wall time to the target; times measured on "
             f"the 2-core VM (x {a.scale:g}).", ""]
    if a.stragglers:
        res = json.load(open(a.stragglers))
        lines += ["| straggler setting | policy | median time to 85 % (s) | GPU-seconds | USD per 1000 runs |",
                  "|---|---|---|---|---|"]
        for setting, by_policy in res.items():
            for policy, runs in by_policy.items():
                reach = [r["reach_s"] for r in runs if r.get("status") == "ok" and r.get("reach_s") is not None]
                if not reach:
                    lines.append(f"| {setting} | {policy} | not reached | - | - |")
                    continue
                t = statistics.median(reach)
                gpu_h, usd = money(a.workers, 1, t, a)
                lines.append(f"| {setting} | {policy} | {t:.1f} | {gpu_h * 3600:.1f} | {usd * 1000:.2f} |")
        lines.append("")
    if a.recovery:
        lines += [f"| recovery run | extra ranks | time to {a.recovery_target:.0%} (s) | GPU-seconds | "
                  f"USD per 1000 runs |", "|---|---|---|---|---|"]
    for path in a.recovery:
        res = json.load(open(path))
        prefix = os.path.basename(os.path.dirname(os.path.abspath(path))) + "/" if len(a.recovery) > 1 else ""
        for r in res:
            if r.get("status") != "ok":
                continue
            t = next((c[0] for c in r["curve"] if c[1] >= a.recovery_target), None)
            kills = len(r["summary"].get("failures") or [])
            extra = 0 if r["mode"].startswith("none") else max(1, kills)
            if t is None:
                lines.append(f"| {prefix}{r['name']} | {extra} | not reached | - | - |")
                continue
            gpu_h, usd = money(a.workers, 1 + extra, t, a)
            lines.append(f"| {prefix}{r['name']} | {extra} | {t:.1f} | {gpu_h * 3600:.1f} | {usd * 1000:.2f} |")
    open(a.out, "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
