"""The stage layer: one module per DAG task, the only code that talks to MLflow or reads dataset snapshots.

Each public function here (`data.build`, `train.train`, `evaluate.evaluate`, `fit_ood.fit_ood`,
`build_bundle.build_bundle`, `reference.reference`, `gate.gate`, `drift.run_window`, ...) is what a
DAG task, a `visionloop` command and a Makefile target call alike: it takes settings plus strings
(dataset version, MLflow run id), reads its inputs through `tracking` and `snapshots`, calls the
pure packages below (`ml.train`, `ml.evaluate`, `ml.ood`, `ml.monitoring`, ...) on arrays, and
logs what they return. `chain.run_training` runs the training stages in DAG order.
"""
