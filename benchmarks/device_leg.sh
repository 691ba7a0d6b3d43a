#!/bin/bash
# One training leg on a lent GPU machine (run there from the repository root, $OUT set by the tool):
# the QM9 property evaluator and guide (issue 16) and a geom_1k EGNN 4x256 (issue 17), side by side
# on one GPU, each warm-started or fresh, each with its learning rate annealed to its own end.
# Prepare here first: `python benchmarks/device_prepare.py` (.dev/, git-ignored), then call the
# device tool with carry [".dev"] and the command `LEG=400 bash benchmarks/device_leg.sh`.
# A probe of PROBE steps, all three at once (so it sees them share the GPU), sizes each run's step
# budget to LEG seconds, so that every cosine ends inside the leg instead of being cut by a clock.
# Back under $OUT (at most 8 files of 16 MB): the property runs' last.ckpt (with optimizer state),
# the geom_1k run's compact export, and the logs. TR=cpu PROBE=2 LEG=10 dry-runs it on a CPU.
set -u
export PYTHONPATH=.:.dev/pkgs MOLDIFF_DATA_DIR=.dev/datasets PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
LEG=${LEG:-400}   # seconds of training per run after the probe
PROBE=${PROBE:-100}; TR=${TR:-gpu_amp}; LOGS=/tmp/leglogs; mkdir -p $LOGS
L=$OUT/log.txt
exec > >(tee -a $L) 2>&1
date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"

EVAL="scripts/train_property.py property=all role=evaluator init_from=shipped batch_size=256 optim.lr=7e-4 trainer=$TR trainer.enable_progress_bar=false"
GUIDE="scripts/train_property.py property=all role=guide seed=1 init_from=shipped batch_size=256 optim.lr=7e-4 trainer=$TR trainer.enable_progress_bar=false"
GEOM="scripts/train.py experiment=geom_1k_cpu trainer=$TR model.hidden=256 model.layers=4 batch_edges=143000 trainer.enable_progress_bar=false"

rate() {  # steps per second of a run's last training-record entry
  python3 -c "import torch,sys; r=torch.load(sys.argv[1],map_location='cpu',weights_only=True)['moldiff_record'][-1]; print(r['last_step']/r['seconds'])" "$1"
}
# probe: $PROBE steps each, all three at once (so the rate includes their sharing of the GPU)
timeout 150 python3 $EVAL name=probe_eval trainer.max_steps=$PROBE trainer.max_time=null > $LOGS/probe_eval.txt 2>&1 & P1=$!
timeout 150 python3 $GUIDE name=probe_guide trainer.max_steps=$PROBE trainer.max_time=null > $LOGS/probe_guide.txt 2>&1 & P2=$!
timeout 150 python3 $GEOM name=probe_geom trainer.max_steps=$PROBE trainer.max_time=null > $LOGS/probe_geom.txt 2>&1 & P3=$!
wait $P1 $P2 $P3
date
RE=$(rate outputs/property/probe_eval/checkpoints/last.ckpt) || { tail -30 $LOGS/probe_eval.txt; exit 1; }
RG=$(rate outputs/property/probe_guide/checkpoints/last.ckpt) || { tail -30 $LOGS/probe_guide.txt; exit 1; }
RM=$(rate outputs/train/probe_geom/checkpoints/last.ckpt) || { tail -30 $LOGS/probe_geom.txt; exit 1; }
SE=$(python3 -c "print(max(2, int($RE*$LEG*0.85)))"); SG=$(python3 -c "print(max(2, int($RG*$LEG*0.85)))"); SM=$(python3 -c "print(max(2, int($RM*$LEG*0.85)))")
echo "probe steps/s: eval $RE guide $RG geom $RM -> steps $SE $SG $SM"
rm -rf outputs/property/probe_* outputs/train/probe_*
T=$(python3 -c "import datetime; print('00:' + str(datetime.timedelta(seconds=$LEG+30)).zfill(8))")
timeout $((LEG+90)) python3 $EVAL name=evaluator_gpu trainer.max_steps=$SE trainer.max_time=$T > $LOGS/eval.txt 2>&1 & P1=$!
timeout $((LEG+90)) python3 $GUIDE name=guide_gpu trainer.max_steps=$SG trainer.max_time=$T > $LOGS/guide.txt 2>&1 & P2=$!
timeout $((LEG+90)) python3 $GEOM name=geom_1k_gpu optim.decay.kind=cosine optim.decay.steps=$SM trainer.max_steps=$SM trainer.max_time=$T > $LOGS/geom.txt 2>&1 & P3=$!
wait $P1 $P2 $P3
date
for f in $LOGS/eval.txt $LOGS/guide.txt $LOGS/geom.txt; do echo "== $f"; tail -4 $f; done
cp outputs/property/evaluator_gpu/checkpoints/last.ckpt $OUT/evaluator_gpu_last.ckpt
cp outputs/property/guide_gpu/checkpoints/last.ckpt $OUT/guide_gpu_last.ckpt
python3 -m moldiff.train.export outputs/train/geom_1k_gpu/checkpoints/last.ckpt $OUT/geom_1k_gpu_compact.ckpt --compact
tar czf $OUT/logs.tgz outputs/property/evaluator_gpu/logs outputs/property/guide_gpu/logs outputs/train/geom_1k_gpu/logs outputs/train/geom_1k_gpu/train.log $LOGS
ls -la $OUT; date
