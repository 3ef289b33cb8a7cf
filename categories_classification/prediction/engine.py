"""Where a fleet is scored: in this process (:mod:`.in_process`, no JVM) or by Spark (:mod:`.job`).

Light on purpose (no Spark, no MLflow): the CLI asks before anything heavy is imported (:func:`prepare`),
so that Spark's JVM is started early only when it will be used.
"""
import os
from typing import Mapping, Optional, Sequence

from categories_classification.errors import ConfigError
from categories_classification.paths import is_local, local_path, predict_path

IN_PROCESS = "in process"  # where a client was scored (its run's tag, its manifest) when no Spark ran it
ENGINE_VARIABLE = "CATEGORIES_SCORING"
ENGINES = ("auto", "spark")  # auto: in this process when in_this_process() says so, else Spark
# Above this much input (gzip CSV, the whole fleet) the JVM's start is a small part of the work and
# Spark's job, pipelined over every core, scores as fast; 32 MiB is ~250 clients of 5,000 products.
MAX_BYTES = 32 * 2**20


def in_this_process(client_ids: Sequence[str], prefix: str, environ: Optional[Mapping[str, str]] = None) -> bool:
    """True when this fleet is scored in this process: no Spark service or cluster asked for, a local
    prefix, inputs of :data:`MAX_BYTES` or less (a missing input counts nothing: its client fails in planning)."""
    env = os.environ if environ is None else environ
    engine = env.get(ENGINE_VARIABLE) or "auto"
    if engine not in ENGINES:
        raise ConfigError(f"{ENGINE_VARIABLE}={engine!r}: expected one of {', '.join(ENGINES)}")
    # SPARK_REMOTE: a shared service; PYSPARK_GATEWAY_PORT: under spark-submit, whose --master rules.
    if engine == "spark" or env.get("SPARK_REMOTE") or env.get("PYSPARK_GATEWAY_PORT"):
        return False
    if not (env.get("SPARK_MASTER") or "local").startswith("local") or not is_local(prefix):
        return False
    total = 0
    for client_id in client_ids:
        try:
            total += local_path(predict_path(client_id, prefix)).stat().st_size
        except (OSError, ValueError):
            continue
        if total > MAX_BYTES:
            return False
    return True


def prepare(client_ids: Sequence[str], prefix: str) -> bool:
    """Set off what scoring this fleet needs before the prediction code and MLflow are imported; True when in process.

    For Spark, its session starts in a thread (a JVM's seconds overlap those imports). In this process,
    the model loader comes first: skops lists the types it trusts by searching every loaded module for
    SciPy's ufuncs, about 1 s less before MLflow and Spark have loaded their thousands of modules.
    """
    # pylint: disable=import-outside-toplevel  # only the engine that will run is imported
    if in_this_process(client_ids, prefix):
        from categories_classification.serialization import preload

        preload()
        return True
    from categories_classification.prediction.spark import start_session

    start_session()  # predict_clients takes the session this starts
    return False
