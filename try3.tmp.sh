cmake --build build-ulfm -j 2 2>&1 | grep -E "error|warning: unused" ; 
export OMP_WAIT_POLICY=PASSIVE
T=/tmp/t3; rm -rf $T; mkdir -p $T
timeout 120 mpirun --oversubscribe --bind-to none --with-ft ulfm --mca btl self,sm,tcp -n 5 build-ulfm/bin/phoenix train --model mlp --batch 32 --eval-every 50 --threads 1 --checkpoint-every 10 --recovery checkpoint --steps 150 --log-level warn --checkpoint-dir $T/ck --summary $T/s.json --servers 1 --kill-server 40,90 > $T/log 2>&1; echo rc=$?
grep -v "declared failed\|suspecting" $T/log | tail -22; grep -A3 failures $T/s.json
