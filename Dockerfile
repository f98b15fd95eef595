# Multi-stage build: compile in the Rust image, run from distroless as non-root.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY proto ./proto
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin dualstack-xds

# The nginx ingress image (docker build --target nginx-agent): nginx's official image
# (Debian 12, the stream module built in) with the agent, which runs nginx in the
# foreground: `dualstack-xds nginx ... -- nginx -g 'daemon off;'` (deploy/nginx/).
FROM nginx:1.27-bookworm AS nginx-agent
COPY --from=build /src/target/release/dualstack-xds /usr/local/bin/dualstack-xds
USER 101:101
# Forwarded to nginx: a graceful stop (workers finish their connections), as nginx's
# own image stops it.
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/usr/local/bin/dualstack-xds", "nginx"]

# The control plane image (the default target).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/dualstack-xds /usr/local/bin/dualstack-xds
USER 65532:65532
EXPOSE 18000 9100
ENTRYPOINT ["/usr/local/bin/dualstack-xds"]
CMD ["serve"]
