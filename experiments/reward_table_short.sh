#!/bin/bash
# The issue-25 table (docs/results.md): tuned on `fast`, scored on `shortened`, at N (default the suite's 1000;
# `N=500 experiments/reward_table_short.sh` for the run that fitted the shared machine); one process at a time,
# in order of importance (rules and the RMHL term first).
N=${N:-1000}
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=$PWD
PY=/work/main/.venv/bin/python
T="table --N $N --score-protocol shortened --tag _short$N"
L=results/reward/logs; mkdir -p $L
run() { echo "$(date -u +%T) start $2 (load $(cut -d' ' -f1-3 /proc/loadavg))"; nice -n 19 $PY -m experiments.reward_search $1 > $L/$2.log 2>&1; echo "$(date -u +%T) done $2 rc $?"; }
run "$T --task 1 --part rules --with-rmhl-term --discover-tag _fast" table_short${N}_task1_rules
run "$T --task 2 --part rules --with-rmhl-term --discover-tag _fast" table_short${N}_task2_rules
run "$T --task 2 --part baselines --learners supertrex" table_short${N}_task2_supertrex
run "$T --task 1 --part baselines --learners supertrex" table_short${N}_task1_supertrex
run "$T --task 1 --part baselines --learners rmhl" table_short${N}_task1_rmhl
run "$T --task 1 --part baselines --learners force" table_short${N}_task1_force
run "$T --task 2 --part baselines --learners rmhl" table_short${N}_task2_rmhl
