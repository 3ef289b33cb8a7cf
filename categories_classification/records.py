"""Names of what the project records, defined once: tags, exit codes and the like that scripts,
the DAG generator and the package share. Nothing here imports MLflow."""

# Tags of a run started by an Airflow task (the generated DAGs set MLFLOW_RUN_CONTEXT): which DAG run
# trained a model, or made a prediction.
DAG_ID_TAG = "airflow_dag_id"
DAG_RUN_ID_TAG = "airflow_dag_run_id"
# champion-from-run's "no": the DAG task running it is skipped on this code, so it emits no asset event.
NOT_CHAMPION_EXIT_CODE = 99
