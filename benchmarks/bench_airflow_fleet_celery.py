"""Issue #18 on the production profile: the same measurements as ``bench_airflow_fleet`` on the Celery profile."""
from benchmarks import bench_airflow_fleet
from benchmarks._common import BenchContext, Section


def run(ctx: BenchContext) -> Section:
    """2,000 DAG files on the Celery profile: registration, idle CPU (databases included), a run, a new file."""
    return bench_airflow_fleet.run(ctx, profile="celery")
