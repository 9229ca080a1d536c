#!/bin/bash
# The GPU paths in one short run, for a machine lent for minutes: CUDA training with bf16
# autocast against fp32 (MNIST); torchrun with nccl (one process per GPU) and its sharded
# attack against a single process; PreAct-ResNet-18 fast-AT on CIFAR-10 at 8/255 with PGD-40
# and the audit; evaluation, PGD-40 and the audit's bf16 and fp32 searches on CUDA; then the
# non-browser tests with CUDA visible. Each step has its own time limit and the whole stays
# inside BUDGET seconds; figures in benchmarks/RESULTS.md ("GPU paths").
#   ROBUSTLAB_DATA=... bash benchmarks/gpu_paths.sh     # DATA_TAR=x.tar.gz: unpack data first
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BUDGET=${BUDGET:-400}
MN=${MN:-60000}; CN=${CN:-20000}; CEP=${CEP:-10}; AN=${AN:-1000}; AN2=${AN2:-500}; TESTS=${TESTS:-1}
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
left() { local l=$(( BUDGET - ($(date +%s) - T0) )); [ "$1" -lt "$l" ] && l=$1; [ $l -lt 5 ] && l=5; echo $l; }
newest() { python3 -c "from core.jobs.store import RunStore; print(RunStore().list_runs(kind='$1')[0].id)"; }
PY=python3

stamp setup
if [ -n "${DATA_TAR:-}" ] && [ ! -d /tmp/data/MNIST ]; then  # MNIST's IDX files gzipped inside
  mkdir -p /tmp/data && tar xzf "$DATA_TAR" -C /tmp/data && gunzip -f /tmp/data/MNIST/raw/*.gz
fi
export ROBUSTLAB_DATA=${ROBUSTLAB_DATA:-/tmp/data} ROBUSTLAB_ARTIFACTS=${ROBUSTLAB_ARTIFACTS:-/tmp/art}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '', 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"

stamp "A. MNIST seed-resnet, 1 epoch of $MN images, bf16 autocast (auto) then fp32"
timeout $(left 60) $PY -m core train --dataset mnist --epochs 1 --train-subset $MN --name gpu-bf16 \
  2> >(tee "$OUT/train_mnist.err" >&2)
RUN=$(newest train); echo "model run: $RUN"
timeout $(left 40) $PY -m core train --dataset mnist --epochs 1 --train-subset $MN --precision fp32 --name gpu-fp32

stamp "C. torchrun, 1 process per GPU (nccl): train, then PGD-10 sharded vs single"
PORT=29555
timeout $(left 45) $PY -m torch.distributed.run --nproc_per_node=1 --master_addr=127.0.0.1 \
  --master_port=$PORT -m core train --dataset mnist --epochs 1 --train-subset 12000 --name gpu-ddp
DDP=$(newest train); echo "ddp run: $DDP"
timeout $(left 30) $PY -m torch.distributed.run --nproc_per_node=1 --master_addr=127.0.0.1 \
  --master_port=$((PORT + 1)) -m core attack $DDP --attack pgd --eps 0.1 --steps 10 -n 1000
timeout $(left 30) $PY -m core attack $DDP --attack pgd --eps 0.1 --steps 10 -n 1000

stamp "D. CIFAR-10 PreAct-ResNet-18 fast-AT 8/255, $CEP epochs on $CN images, PGD-40 + audit"
timeout $(left 150) $PY -m core train --dataset cifar10 --model preact-resnet18 --defense fast-at \
  --eps 0.0313725 --eps-ramp 2 --optimizer nesterov --lr 0.1 --epochs $CEP --train-subset $CN \
  --name gpu-preact-fast-at 2> >(tee "$OUT/train_cifar.err" >&2)
CIF=$(newest train); echo "cifar run: $CIF"
timeout $(left 30) $PY -m core attack $CIF --attack pgd --eps 0.0313725 -n 1000
timeout $(left 100) $PY -m core audit $CIF --eps 0.0313725 --version standard -n $AN \
  2> >(tee "$OUT/audit_cifar.err" >&2)
for f in "$ROBUSTLAB_ARTIFACTS"/runs/audit-*/audit.md; do echo "--- $f"; cat "$f"; done

stamp "B. evaluate, PGD-40, audit standard (bf16 search, then fp32) on CUDA"
timeout $(left 40) $PY -m core evaluate $RUN
timeout $(left 30) $PY -m core attack $RUN --attack pgd --eps 0.1 -n $AN
timeout $(left 60) $PY -m core audit $RUN --eps 0.1 --version standard -n $AN2 --precision auto \
  2> >(tee "$OUT/audit_mnist.err" >&2)
timeout $(left 60) $PY -m core audit $RUN --eps 0.1 --version standard -n $AN2 --precision fp32

if [ "$TESTS" = 1 ]; then
  stamp "E. non-browser tests, CUDA visible"
  timeout $(left 200) $PY -m pytest -q -p no:cacheprovider -m "not slow" tests/test_attacks.py \
    tests/test_audit.py tests/test_defenses.py tests/test_training.py tests/test_models.py \
    tests/test_distributed.py tests/test_reliability.py 2>&1 | tail -40
fi
stamp done
