# Multi-stage build of the one `lms` binary (every service of docker-compose.yml runs it).
#
#   docker build -t lms-pipeline .
#   docker run --rm lms-pipeline --help

FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka is built from source by rdkafka-sys (make, a C toolchain: in the image).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p lms && cp target/release/lms /usr/local/bin/lms

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/lms --create-home lms
COPY --from=build /usr/local/bin/lms /usr/local/bin/lms
USER lms
WORKDIR /var/lib/lms
EXPOSE 8080 9100
ENTRYPOINT ["lms"]
CMD ["--help"]
