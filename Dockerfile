# syntax=docker/dockerfile:1
# The strata server image: `docker build -t strata:0.1.0 .` (BuildKit, the
# default builder since Docker 23). See docs/kubernetes.md.
#
# Builder and runtime are both Debian bookworm, so the binary's glibc matches.
# The binary needs nothing else at run time: TLS to the Hugging Face hub is
# rustls (ring), the tokenizer is pure Rust, the math is gemm + rayon.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the target directory between builds,
# so a source change recompiles strata's crates, not every dependency.
# --locked: the build uses Cargo.lock as committed, or fails.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p strata \
 && install -D -m 0755 target/release/strata /out/strata

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A fixed numeric user, so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 strata \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/strata --create-home strata \
 && mkdir -p /var/cache/huggingface /var/cache/strata-kv \
 && chown 10001:10001 /var/cache/huggingface /var/cache/strata-kv
COPY --from=build /out/strata /usr/local/bin/strata
# The Hugging Face cache (hub downloads; HF_TOKEN for gated models) and the
# default place of the disk KV tier; mount volumes there in a cluster.
ENV HF_HOME=/var/cache/huggingface
USER 10001:10001
WORKDIR /var/lib/strata
# 8000: the OpenAI API, /health, /metrics. With P/D and KV events the
# manifests also open 5600 (KV transfer), 5557 (events) and 5558 (replay).
EXPOSE 8000
ENTRYPOINT ["strata"]
CMD ["serve", "--host", "0.0.0.0"]
