# redis:7 look-alike from Debian's redis-server (7.0), for docker/make-base-images: the
# same interface as the usual image for docker/compose.yaml — `redis-server [options]` as
# the command, data in the /data volume, port 6379, protected mode off, runs as redis.
ARG BASE_IMAGE=debian:12
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
COPY redis-entrypoint /usr/local/bin/docker-entrypoint.sh
VOLUME /data
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
