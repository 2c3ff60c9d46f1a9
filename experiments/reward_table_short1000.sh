#!/bin/bash
# The issue-25 table at the suite's full size (N = 1000), tuned on `fast`, scored on `shortened`; one process at a time.
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=$PWD
PY=/work/main/.venv/bin/python
T="table --N 1000 --score-protocol shortened --tag _short1000"
L=results/reward/logs; mkdir -p $L
run() { echo "$(date -u +%T) start $2 (load $(cut -d' ' -f1-3 /proc/loadavg))"; nice -n 19 $PY -m experiments.reward_search $1 > $L/$2.log 2>&1; echo "$(date -u +%T) done $2 rc $?"; }
run "$T --task 1 --part rules --with-rmhl-term --discover-tag _fast" table_short1000_task1_rules
run "$T --task 2 --part rules --with-rmhl-term --discover-tag _fast" table_short1000_task2_rules
run "$T --task 2 --part baselines --learners supertrex" table_short1000_task2_supertrex
run "$T --task 1 --part baselines --learners supertrex" table_short1000_task1_supertrex
run "$T --task 1 --part baselines --learners rmhl" table_short1000_task1_rmhl
run "$T --task 1 --part baselines --learners force" table_short1000_task1_force
run "$T --task 2 --part baselines --learners rmhl" table_short1000_task2_rmhl
