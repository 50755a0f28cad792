# postgres:15 look-alike from Debian's postgresql-15, for docker/make-base-images: the
# same interface as the usual image for docker/compose.yaml — POSTGRES_PASSWORD (required),
# POSTGRES_USER (postgres), POSTGRES_DB (the user's name) initialise an empty data folder,
# data in the /var/lib/postgresql/data volume (PGDATA), port 5432 on every interface with
# password (scram-sha-256) authentication, runs as postgres, pg_isready for health checks.
# Not supported: /docker-entrypoint-initdb.d scripts.
ARG BASE_IMAGE=debian:12
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 700 /var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
