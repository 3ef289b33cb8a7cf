"""The prediction stage: resolve the client's model, score its products with Spark, write the
top-5 parquet output atomically.

Entry point: :func:`categories_classification.prediction.predictor.predict_categories`. Spark's
Python workers import :mod:`.scoring` from here, so this package imports nothing on its own.
"""
