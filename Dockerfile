# syntax=docker/dockerfile:1
# One image for both services: `python -m booking_service` (the default) or `python -m notify_service`.
# Dependencies come from the hash-pinned lock files in deploy/image/ (`make lock` refreshes them); the gRPC
# code is generated from protos/ while the client's wheel (booking_api's one owner) is built; the runtime stage
# holds no compiler and no generator.

FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY deploy/image/build-requirements.lock deploy/image/requirements.lock deploy/image/
RUN python -m venv /build \
    && /build/bin/pip install --require-hashes -r deploy/image/build-requirements.lock \
    && python -m venv /venv \
    && /venv/bin/pip install --require-hashes -r deploy/image/requirements.lock
COPY pyproject.toml ./
COPY protos protos
COPY client client
COPY svc_common svc_common
COPY booking_service booking_service
COPY notify_service notify_service
# Built without isolation, with the locked generator: nothing unpinned is fetched.
RUN /build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels ./client . \
    && /venv/bin/pip install --no-deps /wheels/*.whl

FROM python:3.11-slim
# The commit the image is built from, shown by --version, the start-up log line and build_info:
# docker build --build-arg GIT_COMMIT=$(git rev-parse --short=12 HEAD) .
ARG GIT_COMMIT=unknown
ENV BUILD_COMMIT=$GIT_COMMIT
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1 LOG_FORMAT=json
USER 10001
EXPOSE 50051 50052 9091 9092
# SERVICE_ADDRESS: where the health check dials (set to 127.0.0.1:50052 for notify). It speaks TLS when the
# service does (svc_common.healthcheck reads the same TLS_* variables).
ENV SERVICE_ADDRESS=127.0.0.1:50051
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=5 \
    CMD ["sh", "-c", "python -m svc_common.healthcheck \"$SERVICE_ADDRESS\""]
ENTRYPOINT ["python", "-m"]
CMD ["booking_service", "--listen", "0.0.0.0:50051"]
