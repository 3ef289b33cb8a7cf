-- Run once by the postgres image on a new volume: MLflow's backend store beside Airflow's database
-- (POSTGRES_DB). Each tool creates its own schema (`airflow db migrate`, `mlflow server`'s migrations).
CREATE DATABASE mlflow;
