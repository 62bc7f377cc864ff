#!/bin/sh
# Generate the Python stubs of every .proto beside it: protos/{booking,notify}/**/*_pb2*.py[i].
# Usage: protos/generate.sh [PYTHON]   (PYTHON must have grpcio-tools installed)
set -eu
python=${1:-python3}
cd "$(dirname "$0")"
# shellcheck disable=SC2046
"$python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(find booking notify -name '*.proto')
find booking notify -type d -exec touch {}/__init__.py \;
