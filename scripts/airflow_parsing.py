"""How often Airflow's DAG processor lists and re-parses the DAG folder: both profiles of the local stack."""


def parsing_settings(dag_files: int, cores: int) -> dict[str, str]:
    """The DAG processor's settings for a folder of ``dag_files`` files on ``cores`` cores.

    Every parse is a fresh process that also writes to the metadata database, so the cost of
    re-parsing grows with the folder; what stays cheap whatever its size is noticing change:
    a changed file (newer mtime than its last parse) goes to the front of the queue, a new file
    is found at the next folder listing. Hence: list often, re-parse unchanged files rarely.
    """
    cores = max(1, cores)
    return {
        # One parse process per core: the first pass over a fleet is parse-bound.
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": str(cores),
        # New files: a listing compares the folder with the database, cheap but not free; a
        # demo sees a new file within seconds, a fleet within a minute.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(min(60, max(10, dag_files // 20))),
        # Unchanged files: generated DAGs depend on nothing but their file, whose changes the
        # mtime order catches; re-parse the whole folder in about 3 s per file and core-second
        # budget (30 s for a demo, about an hour for 2,000 files on 2 cores).
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": str(max(30, 3 * dag_files // cores)),
        # What makes a changed file jump the queue (Airflow's default, relied upon above).
        "AIRFLOW__DAG_PROCESSOR__FILE_PARSING_SORT_MODE": "modified_time",
        # The stats table lists every file: once per re-parse cycle is enough for a fleet.
        "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": str(max(30, 3 * dag_files // cores)),
        # Airflow's modules are imported once in the processor, not by every parse process.
        "AIRFLOW__DAG_PROCESSOR__PARSING_PRE_IMPORT_MODULES": "True",
    }
