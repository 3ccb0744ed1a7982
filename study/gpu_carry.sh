#!/bin/sh
# What a lent GPU machine lacks for `python -m study.gpu_campaign`, into an ignored folder that a device
# call names in `carry` (docs/results/gpu-notes.md, "The campaign: how a lent GPU is used"):
#   DIR/wheels  mlflow-skinny 3.17.2 + SQLAlchemy + alembic with every dependency pip resolves for them
#               (one consistent set; a --target install put first on PYTHONPATH shadows the image's own
#               copies of the common ones, e.g. requests, for this process only), kornia + kornia-rs
#               (their numpy and torch are the image's); cp312 manylinux x86_64 wheels by default
#   DIR/data    the offline CIFAR-10 copy (the machine reaches nothing outside it)
# Usage: sh study/gpu_carry.sh [DIR (default .carry)] [PYTHON_VERSION (default 3.12, the image's)]
#        DATA=path/to/cifar10-jpeg overrides the data folder (default ../shared/data/cifar10-jpeg).
# The versions are the ones the project's own environment runs (mlflow 3.17.2, SQLAlchemy 2.1.9,
# alembic 1.20.1, kornia 0.9.0, kornia-rs 0.2.0): the same store schema and code paths as the tests.
set -eu
dir=${1:-.carry}
py=${2:-3.12}
data=${DATA:-../shared/data/cifar10-jpeg}
plat="--only-binary=:all: --python-version $py --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
rm -rf "$dir/wheels" "$dir/data"
mkdir -p "$dir/wheels"
python3 -m pip download -q $plat -d "$dir/wheels" mlflow-skinny==3.17.2 sqlalchemy==2.1.9 alembic==1.20.1
python3 -m pip download -q $plat --no-deps -d "$dir/wheels" kornia==0.9.0 kornia-rs==0.2.0
cp -r "$data" "$dir/data"
echo "carry $dir: $(ls "$dir/wheels" | wc -l) wheels, $(du -sh "$dir/wheels" | cut -f1); data $(du -sh "$dir/data" | cut -f1)"
