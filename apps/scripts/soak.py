#!/usr/bin/python3
"""Chaos soak: long mpirun jobs with kills and freezes of random roles at random times, and
SIGUSR1 stops with resumes, on every recovery mode in turn (docs/recovery.md "Chaos soak").

Each mode runs once without failures (the reference), then chaos runs until the time budget
is spent, cycling checkpoint, chain, stateless, hybrid. A chaos run has 1 server shard, a
replica under chain/hybrid, spares and 3 workers; at seeded random steps it SIGKILLs or
SIGSTOPs (never resumed) a random rank of a random role: the server, the replica, a spare, a
worker, the chief (the lowest live worker). Spare-consuming events (server, replica, spare)
are at most the spares of the job, worker-side ones at most one, so that recovery is always
possible; chain runs kill no worker (a dead worker's acknowledged pushes cannot be counted).
Every second run of checkpoint and stateless also gets SIGUSR1 on every live rank (what
`scancel --signal=USR1` and sbatch --signal do) and is resumed with --resume to its end.

Checked per run: it completes (summary, every step, not stopped); chain sync: 0 acknowledged
pushes lost; stateless/hybrid: no buffered update dropped or overflowed; accuracy within
--accuracy-points (2) of the mode's reference; RSS and open descriptors of every rank that
lived through the run flat (last third against the first third after warm-up: at most
+max(24 MiB, 15 %) and +8 fds); no process of the run left behind (found by a marker in their
environment, stopped by PID if any is). Every process runs under a timeout and is signalled by PID.

Usage: soak.py PHOENIX --minutes M [--steps N] [--seed S] [--json FILE]
Exit 0 when every check held.
"""
import argparse
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ap = argparse.ArgumentParser()
ap.add_argument("phoenix")
ap.add_argument("--minutes", type=float, default=30)
ap.add_argument("--steps", type=int, default=600, help="steps per worker of every run")
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--spares", type=int, default=2)
ap.add_argument("--events", type=int, default=3, help="kills/freezes per chaos run")
ap.add_argument("--accuracy-points", type=float, default=2.0)
ap.add_argument("--modes", default="checkpoint,chain,stateless,hybrid")
ap.add_argument("--json", default="")
ap.add_argument("--keep", default="", help="directory that keeps the logs of failed runs")
ap.add_argument("--replay", default="", help="one chaos run instead of the soak, e.g. "
                "'stateless:spare@155,server@292,chief@366;usr1@366' (a failed run's events)")
ap.add_argument("--repeat", type=int, default=1, help="--replay: times to run it")
args = ap.parse_args()

PHX = os.path.abspath(args.phoenix)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMP_WAIT_POLICY="PASSIVE", OMPI_MCA_btl_tcp_if_include="lo")
ft = subprocess.run([os.path.join(ROOT, "apps/scripts/mpirun_ft_flag.sh")], capture_output=True,
                    text=True).stdout.split()
MPIRUN = ["mpirun", "--oversubscribe", "--bind-to", "none", *ft]
if ft[:1] == ["--with-ft"]:
    MPIRUN += ["--mca", "btl", "self,sm,tcp"]
else:
    env["OMPI_MCA_oob_tcp_if_include"] = "lo"
if os.geteuid() == 0:
    MPIRUN.append("--allow-run-as-root")

rng = random.Random(args.seed)
tmp = tempfile.mkdtemp(prefix="phx-soak-")
if args.keep:
    os.makedirs(args.keep, exist_ok=True)
deadline = time.time() + args.minutes * 60
results, problems = [], []
WORKERS = 3
# "flat": over a run's settled tail, RSS may grow by at most max(8 MiB, 5 %), open fds by 2
RSS_BOUND_KIB, RSS_BOUND_FRACTION, FD_BOUND = 8 * 1024, 0.05, 2
SANITIZED = bool(os.environ.get("PHX_SANITIZED"))  # make test-asan sets it
PAGE_KIB = 4


def layout(mode):
    replicas = 1 if mode in ("chain", "hybrid") else 0
    return replicas, 1 + replicas + args.spares + WORKERS


def marked(tag):
    """PIDs of live processes whose environment holds PHX_SOAK_TAG=tag."""
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            if f"PHX_SOAK_TAG={tag}".encode() in open(f"/proc/{p}/environ", "rb").read().split(b"\0"):
                found.append(int(p))
        except OSError:
            pass
    return found


def sample(pid):
    try:
        rss = int(open(f"/proc/{pid}/statm").read().split()[1]) * PAGE_KIB
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss, fds
    except OSError:
        return None


class Job:
    def __init__(self, name, mode, extra, tag):
        replicas, n = layout(mode)
        self.d = os.path.join(tmp, name)
        os.makedirs(self.d, exist_ok=True)
        self.log = os.path.join(self.d, "log")
        self.summary = os.path.join(self.d, "s.json")
        cmd = ["timeout", "600", *MPIRUN, "-n", str(n), PHX, "train", "--model", "mlp", "--threads", "1",
               "--steps", str(args.steps), "--seed", str(args.seed), "--servers", "1", "--spares", str(args.spares),
               "--recovery", mode, "--eval-samples", "1000", "--progress-every", "0.3",
               "--failure-timeout-ms", "500", "--summary", self.summary]
        if replicas:
            cmd += ["--replicas", str(replicas)]
        if mode in ("checkpoint", "stateless"):
            cmd += ["--checkpoint-every", "100", "--checkpoint-dir", os.path.join(tmp, tag + ".ckpt")]
        cmd += extra
        self.tag, self.n = tag, n
        self.p = subprocess.Popen(cmd, cwd=self.d, env=dict(env, PHX_SOAK_TAG=tag), stdout=open(self.log, "w"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        self.roles, self.pids = {}, {}
        self.samples = {}  # pid -> [(t, rss_kib, fds)]
        self.t0 = time.time()

    def text(self):
        try:
            return open(self.log, errors="replace").read()
        except OSError:
            return ""

    def poll_roles(self):
        # ranks by the marker and OMPI_COMM_WORLD_RANK in their environment; roles from the layout
        # line "N ranks: S server(s) (ranks a-b), R replica(s), K spare(s), W worker(s) ..."
        if len(self.pids) == self.n:
            return
        m = re.search(r"(\d+) ranks: (\d+) server\(s\) \(ranks [\d-]+\), (\d+) replica\(s\), (\d+) spare", self.text())
        if not m:
            return
        n, servers, replicas, spares = (int(x) for x in m.groups())
        for pid in marked(self.tag):
            try:
                env_ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
                if open(f"/proc/{pid}/comm").read().strip() != "phoenix":
                    continue
            except OSError:
                continue
            for kv in env_:
                if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                    r = int(kv.split(b"=")[1])
                    if r not in self.pids:
                        self.pids[r] = pid
                        self.roles[r] = ("server" if r < servers else "replica" if r < servers * (1 + replicas)
                                         else "spare" if r < servers * (1 + replicas) + spares else "worker")

    def step(self):
        m = re.findall(r"step (\d+)/%d" % args.steps, self.text())
        return int(m[-1]) if m else 0

    def measure(self):
        now = time.time() - self.t0
        for r, pid in self.pids.items():
            s = sample(pid)
            if s:
                self.samples.setdefault(pid, []).append((now, *s))


def flat(job, lived, settled_after):
    """Per rank that lived through the run: growth of RSS and open fds over the settled tail of
    the run (from 3 s after the last kill or freeze, or from 20 % of the run without one, to the
    end): the first quarter of the tail's samples against its last quarter. A transient (a
    buffered backlog, a spare becoming a server) is over by then; a leak per step or per
    message keeps growing. Tails shorter than 12 samples (3 s) are not judged."""
    out = {}
    for pid in lived:
        s = [x for x in job.samples.get(pid, []) if x[0] >= settled_after]
        if len(s) < 12:
            continue
        k = len(s) // 4
        first, last = s[:k], s[-k:]
        out[pid] = (max(x[1] for x in first), max(x[1] for x in last),
                    max(x[2] for x in first), max(x[2] for x in last))
    return out


def plan(mode):
    """The run's events: (step, action, role), at most args.spares spare-consuming ones and one
    worker-side one (none under chain: its acknowledged pushes of a dead worker are not counted)."""
    roles = ["server", "spare", "freeze-server"] + (["replica"] if mode in ("chain", "hybrid") else [])
    worker_side = [] if mode == "chain" else ["worker", "chief", "freeze-worker"]
    evs, spare_used, worker_used = [], 0, 0
    for _ in range(args.events):
        choices = (roles if spare_used < args.spares else []) + (worker_side if worker_used < 1 else [])
        if not choices:
            break
        c = rng.choice(choices)
        if c in worker_side:
            worker_used += 1
        else:
            spare_used += 1
        evs.append(c)
    steps = sorted(rng.sample(range(int(args.steps * 0.15), int(args.steps * 0.8)), len(evs)))
    return list(zip(steps, evs))


def current_server(job, dead):
    # the rank serving shard 0 now: the last takeover, else the original server
    t = job.text()
    m = re.findall(r"rank (\d+) takes over|spare rank (\d+) takes over shard 0|(?:replica|rank) (\d+) (?:is promoted|becomes)", t)
    cands = [int(next(x for x in g if x)) for g in m]
    for r in reversed(cands):
        if r not in dead:
            return r
    orig = [r for r, ro in job.roles.items() if ro == "server" and r not in dead]
    return orig[0] if orig else None


def victim(job, what, dead):
    live = lambda role: sorted(r for r, ro in job.roles.items() if ro == role and r not in dead)
    if what in ("server", "freeze-server"):
        return current_server(job, dead)
    if what == "replica":
        r = live("replica")
        return r[0] if r else None
    if what == "spare":
        # a spare not yet serving
        taken = set(int(x) for x in re.findall(r"spare rank (\d+) takes over", job.text()))
        r = [x for x in live("spare") if x not in taken]
        return r[-1] if r else None
    workers = live("worker")
    if what == "chief":
        return workers[0] if workers else None
    return workers[-1] if len(workers) > 1 else None  # worker, freeze-worker: not the chief


def run(name, mode, events=(), usr1_at=None, extra=(), tag=None):
    tag = tag or f"{name}-{os.getpid()}"
    job = Job(name, mode, list(extra), tag)
    pending, done, dead, stopped_at = list(events), [], set(), None
    while job.p.poll() is None:
        time.sleep(0.25)
        job.poll_roles()
        job.measure()
        step = job.step()
        if pending and step >= pending[0][0]:
            at, what = pending.pop(0)
            r = victim(job, what, dead)
            if r is not None and r in job.pids:
                sig = signal.SIGSTOP if what.startswith("freeze") else signal.SIGKILL
                try:
                    os.kill(job.pids[r], sig)
                    dead.add(r)
                    done.append({"step": step, "what": what, "rank": r, "signal": sig.name,
                                 "t": time.time() - job.t0})
                except ProcessLookupError:
                    pass
        if usr1_at is not None and stopped_at is None and step >= usr1_at:
            for r, pid in job.pids.items():
                if r not in dead:
                    try:
                        os.kill(pid, signal.SIGUSR1)
                    except ProcessLookupError:
                        pass
            stopped_at = step
    rc = job.p.wait()
    lived = [pid for r, pid in job.pids.items() if r not in dead]
    time.sleep(0.5)
    left = marked(tag)
    for pid in left:  # report, then clean up by PID
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        s = json.load(open(job.summary))
    except (OSError, ValueError):
        s = {}
    elapsed = time.time() - job.t0
    settled = done[-1]["t"] + 3 if done else 0.2 * elapsed
    if usr1_at is not None:
        settled = elapsed + 1  # a stopped run ends early: no settled tail to judge
    if args.keep and (rc != 0 or not s or left):
        shutil.copy(job.log, os.path.join(args.keep, name + ".log"))
    return job, rc, s, done, left, flat(job, lived, settled), stopped_at


def check(res, ok, what):
    if not ok:
        res["problems"].append(what)
        problems.append(f"{res['name']}: {what}")


if args.replay:
    head, _, usr = args.replay.partition(";")
    mode, _, evs = head.partition(":")
    plan_ = [(int(e.split("@")[1]), e.split("@")[0]) for e in evs.split(",") if e]
    usr1_at = int(usr.split("@")[1]) if usr else None
    bad_runs = 0
    for k in range(args.repeat):
        job, rc, s, done, left, fl, stopped_at = run(f"replay{k}", mode, plan_, usr1_at)
        # RSS and descriptors over the settled tail, as the soak judges them; the timeline of a
        # rank that grew past the bound (to tell a leak from a late one-time step)
        for pid, (r0, r1, f0, f1) in fl.items():
            over = r1 - r0 > max(RSS_BOUND_KIB, RSS_BOUND_FRACTION * r0)
            print(f"  pid {pid}: RSS {r0} -> {r1} KiB, fds {f0} -> {f1}{' OVER THE BOUND' if over else ''}")
            if over:
                t0_ = job.samples[pid][0][0]
                print("   ", " ".join(f"{t - t0_:.1f}s:{r // 1024}M" for t, r, _ in job.samples[pid][::8]))
        good = bool(s) and (s.get("stopped_by_signal") is True if usr1_at is not None else s.get("steps_completed") == args.steps)
        bad_runs += 0 if good else 1
        if not s and os.path.exists(job.summary):
            print("unreadable summary:", open(job.summary).read()[:3000])
        print(f"replay {k}: rc {rc}, summary stopped {s.get('stopped_by_signal')} steps {s.get('steps_completed')}, events {[(e['what'], e['step']) for e in done]}, usr1 {stopped_at}, "
              f"{'ok' if good else 'FAILED'}" + ("" if good else "\n" + job.text()[-3000:]), flush=True)
    sys.exit(1 if bad_runs else 0)

modes = args.modes.split(",")
refs = {}
for mode in modes:
    job, rc, s, _, left, _, _ = run(f"ref-{mode}", mode)
    refs[mode] = s.get("final_test_accuracy", -1)
    if not s or s.get("steps_completed") != args.steps:
        problems.append(f"ref-{mode}: did not complete (rc {rc}): {job.text()[-600:]}")
    print(f"reference {mode}: accuracy {100 * refs[mode]:.2f} %", flush=True)

i = 0
while time.time() < deadline or i < len(modes):
    mode = modes[i % len(modes)]
    usr1 = mode in ("checkpoint", "stateless") and (i // len(modes)) % 2 == 0
    name = f"chaos{i}-{mode}"
    evs = plan(mode)
    usr1_at = rng.randrange(int(args.steps * 0.3), int(args.steps * 0.7)) if usr1 else None
    t0 = time.time()
    job, rc, s, done, left, fl, stopped_at = run(name, mode, evs, usr1_at, tag=name)
    res = {"name": name, "mode": mode, "events": done, "problems": [], "usr1_at": stopped_at}
    first_failures = len(s.get("failures", []))
    if usr1 and (stopped_at is None or s.get("stopped_by_signal") is not True):
        check(res, False, f"SIGUSR1 (planned at step {usr1_at}, sent at {stopped_at}) did not stop the job (rc {rc})")
    elif usr1:
        ck = os.path.join(tmp, name + ".ckpt")
        job2, rc, s, done2, left2, fl2, _ = run(name + "-resumed", mode, (), None, ["--resume", ck], tag=name + "r")
        left += left2
        m = re.search(r"resuming from .* at step (\d+)", job2.text())
        res["resumed_from"] = int(m.group(1)) if m else None
        check(res, res["resumed_from"] is not None, "the resumed run did not say where it resumed")
    res["seconds"] = round(time.time() - t0, 1)
    check(res, bool(s) and s.get("steps_completed") == args.steps and s.get("stopped_by_signal") is False,
          f"did not complete (rc {rc}): {job.text()[-800:]}")
    acc = s.get("final_test_accuracy", -1)
    res["accuracy"] = acc
    res["failures"] = first_failures if usr1 else len(s.get("failures", []))
    check(res, abs(acc - refs[mode]) * 100 <= args.accuracy_points,
          f"accuracy {100 * acc:.2f} % vs reference {100 * refs[mode]:.2f} %")
    if mode == "chain":
        check(res, s.get("acknowledged_pushes_lost") == 0, f"acknowledged pushes lost: {s.get('acknowledged_pushes_lost')}")
    if mode in ("stateless", "hybrid"):
        check(res, s.get("gradients_dropped", 0) == 0 and s.get("buffer_overflow", 0) == 0,
              f"buffered updates dropped {s.get('gradients_dropped')} overflow {s.get('buffer_overflow')}")
    check(res, not left, f"processes left behind: {left}")
    growth = [(r1 - r0, f1 - f0) for r0, r1, f0, f1 in fl.values()]
    res["max_rss_growth_kib"] = max((g[0] for g in growth), default=0)
    res["max_fd_growth"] = max((g[1] for g in growth), default=0)
    res["ranks_judged"] = len(fl)
    for pid, (r0, r1, f0, f1) in fl.items():
        # (under AddressSanitizer freed memory stays resident in its quarantine: RSS is not judged)
        if not SANITIZED:
            check(res, r1 - r0 <= max(RSS_BOUND_KIB, RSS_BOUND_FRACTION * r0), f"pid {pid} RSS {r0} -> {r1} KiB")
        check(res, f1 - f0 <= FD_BOUND, f"pid {pid} fds {f0} -> {f1}")
    if res["problems"] and args.keep:
        for f in glob.glob(os.path.join(tmp, name + "*", "log")):
            shutil.copy(f, os.path.join(args.keep, os.path.basename(os.path.dirname(f)) + ".log"))
    res["peak_rss_mib"] = round(max((r1 for _, r1, _, _ in fl.values()), default=0) / 1024, 1)
    results.append(res)
    ev = ", ".join(f"{e['signal'][3:].lower()} {e['what']} r{e['rank']}@{e['step']}" for e in done)
    print(f"{name}: {res['seconds']} s, {res['failures']} failure(s) [{ev}]"
          f"{' usr1@%s resumed@%s' % (stopped_at, res.get('resumed_from')) if usr1 else ''}, accuracy "
          f"{100 * acc:.2f} % (ref {100 * refs[mode]:.2f}), settled tail of {res['ranks_judged']} rank(s): RSS "
          f"+{res['max_rss_growth_kib']} KiB, fds +{res['max_fd_growth']}: {'ok' if not res['problems'] else 'FAILED'}",
          flush=True)
    i += 1

summary = {"runs": len(results), "events": sum(len(r["events"]) for r in results),
           "failures_recovered": sum(r["failures"] for r in results),
           "ranks_judged": sum(r["ranks_judged"] for r in results),
           "stops": sum(1 for r in results if r["usr1_at"] is not None),
           "problems": problems, "references": refs, "results": results,
           "max_accuracy_gap_points": max((abs(r["accuracy"] - refs[r["mode"]]) * 100 for r in results), default=0),
           "max_rss_growth_kib": max((r["max_rss_growth_kib"] for r in results), default=0),
           "max_fd_growth": max((r["max_fd_growth"] for r in results), default=0)}
if args.json:
    json.dump(summary, open(args.json, "w"), indent=1)
print(f"soak: {summary['runs']} chaos runs, {summary['events']} kills/freezes ({summary['failures_recovered']} in the "
      f"summaries), {summary['stops']} SIGUSR1 stops "
      f"resumed; largest accuracy gap {summary['max_accuracy_gap_points']:.2f} points, RSS growth "
      f"{summary['max_rss_growth_kib']} KiB, fd growth {summary['max_fd_growth']} over {summary['ranks_judged']} settled "
      f"rank tails; {len(problems)} problem(s)")
for p in problems:
    print("FAIL:", p[:1500])
shutil.rmtree(tmp, ignore_errors=True)
sys.exit(1 if problems else 0)
