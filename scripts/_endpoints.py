"""The loopback addresses of a local stack's servers, from its ports: one definition for both profiles."""

HOST = "127.0.0.1"


class Endpoints:
    """URLs of a stack (a dataclass with ``airflow_port``, ``mlflow_port`` and ``spark_connect_port``)."""

    airflow_port: int
    mlflow_port: int
    spark_connect_port: int

    @property
    def airflow_url(self) -> str:
        """The Airflow API server: UI, REST API, and the execution API the tasks call."""
        return f"http://{HOST}:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        """The MLflow server."""
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def spark_remote(self) -> str:
        """The Spark Connect service the prediction tasks share instead of a JVM each."""
        return f"sc://{HOST}:{self.spark_connect_port}"
