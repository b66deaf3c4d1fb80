#!/bin/sh
# Runs once, when the MongoDB volume is first initialised (the official image runs the scripts of
# /docker-entrypoint-initdb.d/ then, never again): creates the user WADM connects as, limited to
# its own database. readWrite stores batches and creates indexes; dbAdmin lets WADM change a TTL
# index when a RETENTION_* setting changes (collMod). The root user (MONGO_ROOT_*) is for you.
set -eu
: "${MONGO_APP_USER:?MONGO_APP_USER is not set}"
: "${MONGO_APP_PASSWORD:?MONGO_APP_PASSWORD is not set}"
mongosh --quiet \
    --username "$MONGO_INITDB_ROOT_USERNAME" --password "$MONGO_INITDB_ROOT_PASSWORD" \
    --authenticationDatabase admin "${MONGO_INITDB_DATABASE:-wadm}" --eval '
const name = db.getName();
db.createUser({
  user: process.env.MONGO_APP_USER,
  pwd: process.env.MONGO_APP_PASSWORD,
  roles: [{ role: "readWrite", db: name }, { role: "dbAdmin", db: name }],
});
print(`created the user ${process.env.MONGO_APP_USER} for the database ${name}`);
'
