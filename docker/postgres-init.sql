-- Runs once when the postgres volume is first created (docker-entrypoint-initdb.d):
-- the offline store lives in POSTGRES_DB (rtml); Dagster's runs, events and schedules in their own database.
CREATE DATABASE dagster;
