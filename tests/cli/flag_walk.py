#!/usr/bin/python3
"""Every flag of `phoenix train` either takes effect or is rejected with a reason.

Walks the flags listed by `phoenix train --help` through one process and through a small
mpirun job (3-4 ranks, survivors kept alive). Each flag has a row per case: the extra
arguments, and what must follow: "reject" (exit 2 and "FLAG would have no effect ..." or
another message naming the flag) or a check of what the run did (the summary JSON, the log,
files it wrote). A flag of --help missing from a table fails the walk, so a new flag cannot
be added without saying what it does in both cases.

Usage: flag_walk.py PATH/TO/phoenix
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

PHX = os.path.abspath(sys.argv[1])
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = "/usr/share/datasets/fashion-mnist"
env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMP_WAIT_POLICY="PASSIVE", OMPI_MCA_btl_tcp_if_include="lo")
ft = subprocess.run([os.path.join(ROOT, "apps/scripts/mpirun_ft_flag.sh")], capture_output=True,
                    text=True).stdout.split()
if ft[:1] != ["--with-ft"]:
    env["OMPI_MCA_oob_tcp_if_include"] = "lo"
MPIRUN = ["mpirun", "--oversubscribe", "--bind-to", "none", *ft]
if ft[:1] == ["--with-ft"]:
    MPIRUN += ["--mca", "btl", "self,sm,tcp"]
if os.geteuid() == 0:
    MPIRUN.append("--allow-run-as-root")

tmp = tempfile.mkdtemp(prefix="phx-flagwalk-")
passed = failed = 0


class Run:
    def __init__(self, rc, out, d, job):
        self.rc, self.out, self.d, self.job = rc, out, d, job
        try:
            self.s = json.load(open(os.path.join(d, "s.json")))
        except (OSError, ValueError):
            self.s = {}

    def snaps(self, sub="ck"):
        return sorted(glob.glob(os.path.join(self.d, sub, "shard0", "snap-*.h5")))

    def rows(self):
        try:
            return open(os.path.join(self.d, "m.csv")).read().splitlines()[1:]
        except OSError:
            return []


def merged(base, args):
    """base's flags (each with one value) less those args gives again, then args (a flag given
    twice is an error); --config drops --steps so that the file's value is the one used."""
    drop = {a for a in args if a.startswith("--")} | ({"--steps"} if "--config" in args else set())
    out = []
    for i in range(0, len(base), 2):
        if base[i] not in drop:
            out += base[i:i + 2]
    return out + args


def run(args, ranks=0, timeout=240):
    d = tempfile.mkdtemp(dir=tmp)
    args = [a.replace("@D", d) for a in args]
    pre = []  # phoenix --config FILE train ...
    if "--config" in args:
        i = args.index("--config")
        pre, args = args[i:i + 2], args[:i] + args[i + 2:]
    cmd = ([*MPIRUN, "-n", str(ranks)] if ranks else []) + [PHX, *pre, "train", *args]
    try:
        p = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=timeout)
        return Run(p.returncode, p.stdout + p.stderr, d, ranks > 0)
    except subprocess.TimeoutExpired as e:
        return Run(124, str(e.stdout or "") + " TIMEOUT", d, ranks > 0)


def check(name, r, pred):
    global passed, failed
    try:
        good = pred(r)
    except Exception as e:  # a missing key or file is a failure, with its name
        good = False
        r.out += f"\n(check raised {e!r})"
    if good:
        passed += 1
    else:
        failed += 1
        tail = "\n    ".join(r.out.strip().splitlines()[-6:])
        print(f"FAIL: {name}: rc {r.rc}\n    {tail}")


def rejected(flag):
    # exit 2 with one error line naming the flag (and, for the walk's rows, saying why). A job:
    # the line printed once (by rank 0), no summary written; Open MPI 4's mpirun with survivors
    # kept alive exits 0 whatever its ranks do (docs/errors.md), so there the code is not checked.
    def pred(r):
        lines = re.findall(r"phoenix: error: .*" + re.escape(flag) + ".*", r.out)
        if r.job:
            return len(lines) == 1 and not r.s and (r.rc != 0 or ft[:1] != ["--with-ft"])
        return r.rc == 2 and len(lines) == 1
    return pred


def refused(flag):
    # refused by the parser (a value out of its range): every rank names the flag, nothing runs.
    # The effect of these flags is shown by the fault and multihost tests (detection times,
    # peer timeouts) rather than here.
    return lambda r: not r.s and re.search(re.escape(flag) + ": Value .* not in range", r.out) is not None


ok = lambda r: r.rc == 0

# ---- one process ---------------------------------------------------------------------------
BASE = ["--model", "mlp", "--steps", "20", "--threads", "1", "--eval-samples", "200", "--summary", "@D/s.json"]
base = run(BASE)
check("local baseline", base, ok)
crc = base.s.get("final_weights_crc32")
differs = lambda r: r.rc == 0 and r.s["final_weights_crc32"] != crc

JOB_ONLY = ["--servers", "--replicas", "--spares", "--spawn", "--group-size", "--sync", "--epsp-mode", "--shards",
            "--max-parallelism", "--transfer", "--audit-samples", "--backup-workers", "--scale-updates",
            "--staleness", "--group-reduce", "--aggregate", "--peer-timeout", "--chain-mode", "--replicate-every",
            "--stateless-buffer", "--backlog-rule", "--heartbeat-ms", "--failure-timeout-ms", "--kill-server",
            "--kill-worker", "--downtime", "--straggle", "--straggle-random", "--straggler-theta"]
JOB_VALUE = {"--servers": "2", "--replicas": "1", "--spares": "1", "--spawn": "off", "--group-size": "2",
             "--sync": "asp", "--epsp-mode": "slack", "--shards": "2", "--max-parallelism": "2", "--transfer": "false",
             "--audit-samples": "@D/a", "--backup-workers": "1", "--scale-updates": "constant", "--staleness": "1",
             "--group-reduce": "mpi", "--aggregate": "mean", "--peer-timeout": "30", "--chain-mode": "async",
             "--replicate-every": "5", "--stateless-buffer": "10", "--backlog-rule": "mean", "--heartbeat-ms": "50",
             "--failure-timeout-ms": "300", "--kill-server": "10", "--kill-worker": "10", "--downtime": "0.5",
             "--straggle": "1:2", "--straggle-random": "0.5:2", "--straggler-theta": "0.5"}

cfgfile = os.path.join(tmp, "walk.ini")
open(cfgfile, "w").write("[train]\nsteps = 7\n")
stop_dir = run(merged(BASE, ["--checkpoint-every", "5", "--checkpoint-dir", "@D/ck"]))  # for --resume
LOCAL = [
    ("--model", ["--model", "synthetic:1000"], lambda r: r.rc == 0 and r.s["model"] != base.s["model"]),
    ("--data-dir", ["--data-dir", "@D/none"], lambda r: r.rc == 2 and "/none does not exist" in r.out),
    ("--batch", ["--batch", "16"], lambda r: differs(r) and r.s["batch"] == 16),
    ("--epochs", ["--epochs", "1", "--batch", "4096", "--steps", "0"], lambda r: r.rc == 0 and r.s["steps"] == 15),
    ("--epochs", ["--epochs", "1"], rejected("--epochs")),  # with --steps 20 from the base
    ("--steps", ["--steps", "7"], lambda r: r.rc == 0 and r.s["steps"] == 7),
    ("--seed", ["--seed", "5"], differs),
    ("--lr", ["--lr", "0.05"], differs),
    ("--momentum", ["--momentum", "0.5"], differs),
    ("--weight-decay", ["--weight-decay", "0.01"], differs),
    ("--nesterov", ["--nesterov"], differs),
    ("--lr-schedule", ["--lr-schedule", "constant"], differs),
    ("--device", ["--device", "cpu"], lambda r: r.rc == 0 and r.s["device"].startswith("cpu")),
    ("--threads", ["--threads", "2"], lambda r: r.rc == 0 and "2 OpenMP threads" in r.s["device"]),
    ("--metrics", ["--metrics", "@D/m.csv"], lambda r: r.rc == 0 and len(r.rows()) == 1),
    ("--summary", ["--summary", "@D/other.json"], lambda r: r.rc == 0 and os.path.exists(r.d + "/other.json")),
    ("--eval-every", ["--eval-every", "5", "--metrics", "@D/m.csv"], lambda r: r.rc == 0 and len(r.rows()) == 4),
    ("--eval-batch", ["--eval-batch", "7", "--log-level", "debug"],
     lambda r: r.rc == 0 and "evaluation in chunks of 7 samples" in r.out),
    ("--eval-samples", ["--eval-samples", "50", "--eval-every", "10", "--metrics", "@D/m.csv"],
     lambda r: r.rc == 0 and abs(float(r.rows()[0].split(",")[4]) * 50 - round(float(r.rows()[0].split(",")[4]) * 50)) < 1e-3),
    ("--progress-every", ["--progress-every", "1000", "--steps", "200"],
     lambda r: r.rc == 0 and len(re.findall(r"samples/s  loss", r.out)) == 1),
    ("--log-level", ["--log-level", "error"], lambda r: r.rc == 0 and "eval " not in r.out and "done:" not in r.out),
    ("--log-level", ["--log-level", "debug"], lambda r: r.rc == 0 and "DEBUG" in r.out),
    ("--recovery", ["--recovery", "checkpoint", "--checkpoint-every", "5", "--checkpoint-dir", "@D/ck"],
     lambda r: r.rc == 0 and r.s["snapshots_written"] == 3),
    ("--recovery", ["--recovery", "none", "--checkpoint-every", "5"], rejected("--checkpoint-every")),
    ("--recovery", ["--recovery", "chain", "--replicas", "1"], rejected("--re")),
    ("--checkpoint-dir", ["--checkpoint-dir", "@D/ck", "--checkpoint-every", "5"], lambda r: len(r.snaps()) == 3),
    ("--checkpoint-every", ["--checkpoint-every", "10", "--checkpoint-dir", "@D/ck"], lambda r: len(r.snaps()) == 1),
    ("--checkpoint-mode", ["--checkpoint-mode", "sync", "--checkpoint-every", "5", "--checkpoint-dir", "@D/ck",
                           "--log-level", "debug"],
     lambda r: len(r.snaps()) == 3 and "by the training thread (sync)" in r.out),
    ("--checkpoint-keep", ["--checkpoint-keep", "1", "--checkpoint-every", "5", "--checkpoint-dir", "@D/ck"],
     lambda r: len(r.snaps()) == 1),
    ("--resume", ["--resume", stop_dir.d + "/ck", "--steps", "30"],
     lambda r: r.rc == 0 and r.s["resumed_from_step"] == 15),
    ("--resume", ["--resume", "@D/none"], rejected("--resume")),
    ("--config", ["--config", cfgfile], lambda r: r.rc == 0 and r.s["steps"] == 7),
    ("--config", ["--config", cfgfile, "--epochs", "2"], rejected("--epochs would have no effect")),
]
# (--backup-workers and --scale-updates are refused first for the sync they need)
LOCAL += [(f, [f, JOB_VALUE[f]], rejected(f if f in ("--backup-workers", "--scale-updates") else f + " would have no effect"))
          for f in JOB_ONLY]

help_text = subprocess.run([PHX, "train", "--help"], capture_output=True, text=True).stdout
flags = sorted(set(re.findall(r"^\s+(--[a-z][a-z-]+)", help_text, re.M)) - {"--help"})
for name, table in (("one process", LOCAL),):
    missing = [f for f in flags if f not in {row[0] for row in table}]
    if missing:
        failed += 1
        print(f"FAIL: {name}: no row for {' '.join(missing)}")
for flag, args, pred in LOCAL:
    check(f"one process {' '.join(args)}", run(merged(BASE, args)), pred)

# ---- a small job: 1 server, 2 workers (plus what the row adds), survivors kept alive ----------
JBASE = BASE
jbase = run(JBASE, ranks=3)
check("job baseline", jbase, lambda r: r.rc == 0 and r.s["recovery"] == "checkpoint" and r.s["workers"] == 2)
jcrc = jbase.s.get("final_weights_crc32")
jdiffers = lambda r: r.rc == 0 and r.s["final_weights_crc32"] != jcrc
epsp = ["--sync", "epsp"]
JOB = [
    # flags that act as in one process (their effect is checked in the job's summary once more)
    ("--model", ["--model", "synthetic:1000"], 3, lambda r: r.rc == 0 and r.s["model"] == "synthetic:1000"),
    ("--data-dir", ["--data-dir", "@D/none"], 3, lambda r: not r.s and "/none does not exist" in r.out),
    ("--batch", ["--batch", "16"], 3, lambda r: jdiffers(r) and r.s["batch"] == 16),
    ("--epochs", ["--epochs", "1"], 3, rejected("--epochs")),
    ("--steps", ["--steps", "7"], 3, lambda r: r.rc == 0 and r.s["steps"] == 7),
    ("--seed", ["--seed", "5"], 3, jdiffers),
    ("--lr", ["--lr", "0.05"], 3, jdiffers),
    ("--momentum", ["--momentum", "0.5"], 3, jdiffers),
    ("--weight-decay", ["--weight-decay", "0.01"], 3, jdiffers),
    ("--nesterov", ["--nesterov"], 3, jdiffers),
    ("--lr-schedule", ["--lr-schedule", "constant"], 3, jdiffers),
    ("--device", ["--device", "cpu"], 3, lambda r: r.rc == 0 and r.s["device"].startswith("cpu")),
    ("--threads", ["--threads", "2"], 3, lambda r: r.rc == 0 and "2 OpenMP threads" in r.s["device"]),
    ("--metrics", ["--metrics", "@D/m.csv"], 3, lambda r: r.rc == 0 and len(r.rows()) >= 1),
    ("--summary", ["--summary", "@D/other.json"], 3, lambda r: r.rc == 0 and os.path.exists(r.d + "/other.json")),
    ("--eval-every", ["--eval-every", "5", "--metrics", "@D/m.csv"], 3, lambda r: r.rc == 0 and len(r.rows()) == 4),
    ("--eval-batch", ["--eval-batch", "0"], 3, refused("--eval-batch")),
    ("--eval-samples", ["--eval-samples", "50", "--eval-every", "10", "--metrics", "@D/m.csv"], 3,
     lambda r: r.rc == 0 and abs(float(r.rows()[0].split(",")[4]) * 50 - round(float(r.rows()[0].split(",")[4]) * 50)) < 1e-3),
    ("--progress-every", ["--progress-every", "1000", "--steps", "200"], 3,
     lambda r: r.rc == 0 and len(re.findall(r"samples/s  loss", r.out)) == 1),
    ("--log-level", ["--log-level", "debug"], 3, lambda r: r.rc == 0 and "DEBUG" in r.out),
    ("--config", ["--config", cfgfile], 3, lambda r: r.rc == 0 and r.s["steps"] == 7),
    # the job's own flags: in the mode they belong to, and rejected in another
    ("--servers", ["--servers", "2"], 4, lambda r: r.rc == 0 and r.s["servers"] == 2),
    ("--replicas", ["--replicas", "1", "--recovery", "chain"], 4, lambda r: r.rc == 0 and r.s["recovery"] == "chain"),
    ("--replicas", ["--replicas", "1", "--recovery", "stateless"], 4, rejected("--replicas")),
    ("--spares", ["--spares", "1"], 4, lambda r: r.rc == 0 and r.s["spares"] == 1 and r.s["workers"] == 2),
    ("--spares", ["--spares", "1", "--recovery", "none"], 4, rejected("--spares would have no effect")),
    ("--spawn", ["--spawn", "off"], 3, lambda r: r.rc == 0 and r.s["spawn_replacements"] is False),
    ("--spawn", ["--spawn", "off", "--recovery", "none"], 3, rejected("--spawn would have no effect")),
    ("--group-size", ["--group-size", "2"], 3, lambda r: r.rc == 0 and r.s["group_size"] == 2),
    ("--sync", ["--sync", "asp"], 3, lambda r: r.rc == 0 and r.s["sync"] == "asp" and r.s["max_clock_lead"] >= 0),
    ("--epsp-mode", epsp + ["--epsp-mode", "slack"], 3, lambda r: r.rc == 0 and r.s["epsp_mode"] == "slack"),
    ("--epsp-mode", ["--epsp-mode", "slack"], 3, rejected("--epsp-mode would have no effect")),
    ("--shards", epsp + ["--shards", "2"], 3, lambda r: r.rc == 0 and r.s["shards"] == 2),
    ("--shards", ["--shards", "2"], 3, rejected("--shards would have no effect")),
    ("--max-parallelism", epsp + ["--max-parallelism", "2"], 3, lambda r: r.rc == 0 and r.s["max_parallelism"] == 2),
    ("--max-parallelism", ["--sync", "flexrr", "--max-parallelism", "2"], 3, rejected("--max-parallelism would")),
    ("--transfer", epsp + ["--transfer", "false"], 3, lambda r: r.rc == 0 and r.s["transfer"] is False),
    ("--transfer", ["--transfer", "false"], 3, rejected("--transfer would have no effect")),
    ("--audit-samples", epsp + ["--audit-samples", "@D/a"], 3, lambda r: r.rc == 0 and len(glob.glob(r.d + "/a.w*")) == 2),
    ("--audit-samples", ["--audit-samples", "@D/a"], 3, rejected("--audit-samples would have no effect")),
    ("--backup-workers", ["--sync", "syncopt", "--backup-workers", "1"], 3, lambda r: r.rc == 0 and r.s["backup_workers"] == 1),
    ("--backup-workers", ["--backup-workers", "1"], 3, rejected("--backup-workers")),
    ("--scale-updates", ["--sync", "asp", "--scale-updates", "constant"], 3,
     lambda r: r.rc == 0 and r.s["scale_updates"] == "constant"),
    ("--scale-updates", ["--scale-updates", "constant"], 3, rejected("--scale-updates")),
    ("--staleness", ["--sync", "ssp", "--staleness", "1"], 3, lambda r: r.rc == 0 and r.s["max_clock_lead"] <= 1),
    ("--staleness", ["--staleness", "1"], 3, rejected("--staleness would have no effect")),
    ("--group-reduce", ["--group-size", "2", "--group-reduce", "mpi"], 3, lambda r: r.rc == 0 and r.s["group_reduce"] == "mpi"),
    ("--group-reduce", ["--group-reduce", "mpi"], 3, rejected("--group-reduce would have no effect")),
    ("--aggregate", ["--aggregate", "mean"], 3, lambda r: jdiffers(r) and r.s["aggregate"] == "mean"),
    ("--aggregate", ["--sync", "asp", "--aggregate", "mean"], 3, rejected("--aggregate would have no effect")),
    ("--peer-timeout", ["--peer-timeout", "0"], 3, refused("--peer-timeout")),
    ("--chain-mode", ["--recovery", "chain", "--replicas", "1", "--chain-mode", "async"], 4,
     lambda r: r.rc == 0 and r.s["chain_mode"] == "async"),
    ("--chain-mode", ["--chain-mode", "async"], 3, rejected("--chain-mode would have no effect")),
    ("--replicate-every", ["--recovery", "chain", "--replicas", "1", "--chain-mode", "async", "--replicate-every", "5"], 4,
     lambda r: r.rc == 0 and r.s["replicate_every"] == 5),
    ("--replicate-every", ["--recovery", "chain", "--replicas", "1", "--replicate-every", "5"], 4,
     rejected("--replicate-every would have no effect")),
    ("--stateless-buffer", ["--recovery", "stateless", "--stateless-buffer", "10"], 3,
     lambda r: r.rc == 0 and r.s["stateless_buffer"] == 10),
    ("--stateless-buffer", ["--stateless-buffer", "10"], 3, rejected("--stateless-buffer would have no effect")),
    ("--backlog-rule", ["--recovery", "stateless", "--backlog-rule", "mean"], 3, lambda r: r.rc == 0 and r.s["backlog_rule"] == "mean"),
    ("--backlog-rule", ["--backlog-rule", "mean"], 3, rejected("--backlog-rule would have no effect")),
    ("--recovery", ["--recovery", "stateless"], 3, lambda r: r.rc == 0 and r.s["recovery"] == "stateless"),
    ("--checkpoint-dir", ["--checkpoint-dir", "@D/ck", "--checkpoint-every", "5"], 3, lambda r: len(r.snaps()) == 3),
    ("--checkpoint-mode", ["--checkpoint-mode", "sync", "--recovery", "none"], 3, rejected("--checkpoint-mode would have")),
    ("--checkpoint-every", ["--checkpoint-every", "10", "--checkpoint-dir", "@D/ck"], 3,
     lambda r: r.rc == 0 and r.s["snapshots_written"] == 2),  # steps 10 and 20 (the end)
    ("--checkpoint-every", ["--checkpoint-every", "10", "--recovery", "chain", "--replicas", "1"], 4,
     rejected("--checkpoint-every would have no effect")),
    ("--checkpoint-mode", ["--checkpoint-mode", "sync", "--checkpoint-every", "5", "--checkpoint-dir", "@D/ck"], 3,
     lambda r: r.rc == 0 and r.s["checkpoint_mode"] == "sync" and len(r.snaps()) == 3),
    ("--checkpoint-keep", ["--checkpoint-keep", "1", "--checkpoint-every", "5", "--checkpoint-dir", "@D/ck"], 3,
     lambda r: len(r.snaps()) == 1),
    ("--resume", ["--resume", "@D/none"], 3, rejected("--resume")),
    ("--heartbeat-ms", ["--heartbeat-ms", "0"], 3, refused("--heartbeat-ms")),
    # (under Open MPI 5 + ULFM the MPI reports a killed process itself: the timeout governs
    # freezes only, and the kill is seen in well under it)
    ("--failure-timeout-ms", ["--failure-timeout-ms", "2000", "--kill-server", "10", "--spares", "1"], 4,
     lambda r: r.rc == 0 and (r.s["failures"][0]["detected_ms"] >= 1500 if ft[:1] != ["--with-ft"]
                              else r.s["failures"][0]["detected_by"] == "mpi")),
    ("--failure-timeout-ms", ["--failure-timeout-ms", "100"], 3, rejected("--failure-timeout-ms")),
    ("--kill-server", ["--kill-server", "10", "--spares", "1", "--failure-timeout-ms", "300"], 4,
     lambda r: r.rc == 0 and len(r.s["failures"]) == 1 and r.s["failures"][0]["role"] == "server"),
    ("--kill-worker", ["--kill-worker", "10", "--failure-timeout-ms", "300"], 3,
     lambda r: r.rc == 0 and len(r.s["failures"]) == 1 and r.s["failures"][0]["role"] == "worker"),
    ("--downtime", ["--kill-server", "10", "--spares", "1", "--downtime", "1", "--failure-timeout-ms", "300"], 4,
     lambda r: r.rc == 0 and r.s["failures"][0]["recovered_ms"] >= 1000),
    ("--downtime", ["--downtime", "1", "--recovery", "none"], 3, rejected("--downtime would have no effect")),
    ("--straggle", ["--straggle", "2:3"], 3, lambda r: r.rc == 0 and
     [x["straggle_seconds"] for x in r.s["ranks"] if x["rank"] == 2][0] > 0),
    ("--straggle-random", ["--straggle-random", "1:2"], 3,
     lambda r: r.rc == 0 and min(x["straggle_seconds"] for x in r.s["ranks"] if x["role"] == "worker") > 0),
    # (3 workers under SSP: the projection compares a worker with the median of the others)
    ("--straggler-theta", ["--sync", "ssp", "--steps", "40", "--straggle", "3:3", "--straggler-theta", "10"], 4,
     lambda r: r.rc == 0 and [x["straggler_steps"] for x in r.s["ranks"] if x["rank"] == 3][0] == 0),
    ("--straggler-theta", ["--sync", "ssp", "--steps", "40", "--straggle", "3:3", "--straggler-theta", "0.2"], 4,
     lambda r: r.rc == 0 and [x["straggler_steps"] for x in r.s["ranks"] if x["rank"] == 3][0] > 20),
]
missing = [f for f in flags if f not in {row[0] for row in JOB}]
if missing:
    failed += 1
    print(f"FAIL: job: no row for {' '.join(missing)}")
for flag, args, ranks, pred in JOB:
    check(f"job -n {ranks} {' '.join(args)}", run(merged(BASE, args), ranks), pred)

shutil.rmtree(tmp, ignore_errors=True)
print(f"{passed} passed, {failed} failed ({len(flags)} flags of phoenix train)")
sys.exit(1 if failed else 0)
