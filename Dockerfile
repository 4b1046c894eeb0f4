# keyroom SFU image. Build: docker build -t keyroom .
# Run (host networking, see "Media ports" below; the config is $KEYROOM_CONFIG):
#   docker run --network host -v /srv/keyroom:/etc/keyroom:ro keyroom
# The config file must set at least [auth] keys (or pass KEYROOM_KEYS), [rtc] ips, and, to be
# reachable from outside the container, [server] host = "0.0.0.0" with tls_cert/tls_key or
# insecure_plaintext = true behind a TLS-terminating proxy. See docs/configuration.md.
# No secret is baked in: keys come from the mounted config or the environment at run time.

# Stage 1 builds the wheel, so the source tree and build metadata stay out of the final image.
FROM python:3.11-slim AS build
WORKDIR /src
# A C compiler for the batched fan-out extension (sfu/fastpath/_build.py, built into the wheel).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Every dependency ships manylinux wheels (av, aiortc, pylibsrtp, uvloop, orjson), and keyroom's
# own wheel carries its compiled extension: no compiler in the final image.
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/keyroom keyroom \
    && mkdir -p /etc/keyroom
USER keyroom
# data_dir ("data") is relative: state lives in /var/lib/keyroom/data; mount a volume there.
WORKDIR /var/lib/keyroom

ENV KEYROOM_CONFIG=/etc/keyroom/keyroom.toml
# Signaling (HTTP/WebSocket) and the admin API.
EXPOSE 7880/tcp
# Media ports: with [rtc] port_min/port_max each peer connection binds one UDP port of that
# range per rtc.ips address, so the range can be published (-p 50000-50199:50000-50199/udp,
# with rtc.ips = the container's address and rtc.public_ips = the host's); --network host with
# rtc.ips = the host's address is simpler. See docs/deploy.md.

# The port and TLS come from the config ($KEYROOM_CONFIG): works with TLS on or off.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-m", "sfu.healthcheck"]

ENTRYPOINT ["keyroom"]
CMD ["serve"]
