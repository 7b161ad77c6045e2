#!/bin/bash
# Multi-node DDP training under SLURM, with Lightning's own SLURMEnvironment (one task per GPU:
# Lightning reads SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID and the node list; no torchrun).
#
#   sbatch scripts/slurm.sh imagenet64 optim.lr=2e-4        # any key=value after the experiment
#   sbatch --nodes=4 scripts/slurm.sh enwik8                 # the #SBATCH lines below are defaults
#   RUN_DIR=runs/enwik8/long sbatch scripts/slurm.sh enwik8  # continue a run folder across jobs
#
# Two minutes before the time limit every task gets SIGTERM: training stops after the step under
# way, saves <run>/checkpoints/last.ckpt and exits 143; the job then requeues itself (same job id,
# so the same run folder) and resume=auto continues exactly where it stopped. A preempted job
# (--requeue) comes back the same way. The run folder must be on a filesystem every node sees.
#SBATCH --job-name=sparse-transformer
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -uo pipefail

EXP=${1:-imagenet64}
shift || true
RUN_DIR=${RUN_DIR:-runs/$EXP/slurm-$SLURM_JOB_ID}
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}

# Prepare the data once, in one task (every node's local rank 0 would otherwise race to build it).
srun --nodes=1 --ntasks=1 "$PYTHON" -m sparse_transformer.data exp="$EXP" "$@" || exit $?

srun "$PYTHON" -m sparse_transformer.train exp="$EXP" \
    trainer.num_nodes="$SLURM_JOB_NUM_NODES" trainer.devices="$SLURM_NTASKS_PER_NODE" trainer.strategy=ddp \
    run_dir="$RUN_DIR" resume=auto "$@"
rc=$?
if [ "$rc" -eq 143 ]; then  # stopped by SIGTERM with a checkpoint: come back and continue
    echo "stopped with a checkpoint in $RUN_DIR; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
