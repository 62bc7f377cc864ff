#!/bin/sh
# Generate the typed Python code of every .proto here into the package booking_api (build output, never edited):
#   client/booking_api/{booking,notify}/v1/*_pb2.py, *_pb2_grpc.py and their .pyi stubs (mypy-protobuf), and a
#   copy of the .proto files in client/booking_api/protos/.
# protoc names generated modules after the .proto paths (booking.v1...), so their imports of each other are
# rewritten to booking_api.booking.v1...; serialized descriptors and method paths keep the contract's names.
# google/type/interval.proto is Google's, vendored so protoc and buf find it offline; its generated module comes
# from googleapis-common-protos at run time, so only booking/ and notify/ are generated here.
# Usage: protos/generate.sh [PYTHON [OUT]]   (PYTHON must have grpcio-tools and mypy-protobuf installed)
set -eu
python=${1:-python3}
here=$(cd "$(dirname "$0")" && pwd)
out=${2:-$here/../client}
# The mypy-protobuf plugins: beside PYTHON (a virtual environment), else on PATH (pip's build environment).
plugin() {
    if [ -x "$(dirname "$python")/$1" ]; then echo "$(dirname "$python")/$1"; else command -v "$1"; fi
}
mypy_plugin=$(plugin protoc-gen-mypy) && mypy_grpc_plugin=$(plugin protoc-gen-mypy_grpc) || {
    echo "generate.sh: protoc-gen-mypy not found (pip install mypy-protobuf)" >&2
    exit 1
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$here"
# shellcheck disable=SC2046
"$python" -m grpc_tools.protoc -I . \
    --plugin=protoc-gen-mypy="$mypy_plugin" --plugin=protoc-gen-mypy_grpc="$mypy_grpc_plugin" \
    --python_out="$tmp" --grpc_python_out="$tmp" --mypy_out="$tmp" --mypy_grpc_out="$tmp" \
    $(find booking notify -name '*.proto' | sort)
rm -rf "$out/booking_api/booking" "$out/booking_api/notify"
mkdir -p "$out/booking_api"
cd "$tmp"
find booking notify -type f | while read -r file; do
    mkdir -p "$out/booking_api/$(dirname "$file")"
    case "$file" in
        # In stubs, every reference to a generated module is a dotted name.
        *.pyi) sed -E 's/(^|[^A-Za-z0-9_.])(booking|notify)\.v1([. ])/\1booking_api.\2.v1\3/g' "$file" ;;
        # In code, only the import lines (the descriptors and method paths must keep the contract's names).
        *) sed -E 's/^(from|import) (booking|notify)\.v1( |\.)/\1 booking_api.\2.v1\3/' "$file" ;;
    esac >"$out/booking_api/$file"
done
find booking notify -type d | while read -r dir; do
    touch "$out/booking_api/$dir/__init__.py"
done
# The contract itself ships with its code (booking_api/protos/), for clients in other languages and for grpcurl.
rm -rf "$out/booking_api/protos"
cd "$here"
find booking notify google -name '*.proto' | while read -r file; do
    mkdir -p "$out/booking_api/protos/$(dirname "$file")"
    cp "$file" "$out/booking_api/protos/$file"
done
