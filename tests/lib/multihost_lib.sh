# Shared by the tests of jobs over test hosts (sourced after tests/lib/mpi_job_lib.sh, with TMP
# set): a job NAME leaves its exit status in $TMP/NAME.rc, its output in $TMP/NAME.log, its
# summary in $TMP/NAME.json and its metrics in $TMP/NAME.csv.

# finished NAME: the job exited 0 and wrote its summary
finished() {
  local rc; rc=$(cat "$TMP/$1.rc")
  if [ "$rc" -eq 0 ] && [ -s "$TMP/$1.json" ]; then ok; return 0; fi
  bad "$1: rc $rc: $(grep -v '^\[node[0-9]\] *$' "$TMP/$1.log" | tail -15)"
  echo "  $1: Phoenix's own warnings, in order:"
  grep -E "(WARN|ERROR|phoenix[a-z-]*): " "$TMP/$1.log" | tail -40 | sed 's/^/    /'; return 1
}
# check NAME PYEXPR: PYEXPR holds over the summary s (failures f)
check() {
  if /usr/bin/python3 -c "import json,sys; s=json.load(open('$TMP/$1.json')); f=s['failures']; sys.exit(0 if ($2) else 1)"; then
    ok; else bad "$1: $2 does not hold: $(head -c 1500 "$TMP/$1.json")"
      grep -E "(WARN|ERROR|phoenix[a-z-]*): " "$TMP/$1.log" | tail -40 | sed 's/^/    /'; fi
}
field() { /usr/bin/python3 -c "import json; print(json.load(open('$TMP/$1.json'))['$2'])"; }
# wait_step NAME STEP: until the job's metrics have a row at STEP or later (60 s at most)
wait_step() {
  local i
  for i in $(seq 600); do
    [ -s "$TMP/$1.csv" ] && awk -F, -v s="$2" 'NR > 1 && $2 >= s { f = 1 } END { exit !f }' "$TMP/$1.csv" && return 0
    sleep 0.1
  done
  return 1
}
# MH_ONLY="sec1 sec3 ..." runs only those sections (development)
want() { [ -z "${MH_ONLY:-}" ] || [[ " $MH_ONLY " == *" $1 "* ]]; }
