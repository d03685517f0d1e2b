"""The local platform: MLflow, Airflow and BentoML as process groups on 127.0.0.1.

`processes` starts and stops one process group, `components` says what each
server is (Airflow standalone by default), `services` the Airflow components of
services mode (CeleryExecutor, N workers, external PostgreSQL/Redis),
`airflow_api`/`mlflow_api` talk to the running servers, `first_run` drives the
first pipeline and `launcher` ties them into `visionloop platform up|down|status`.
"""
