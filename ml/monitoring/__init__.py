"""Drift monitoring: reference packs, drift signals, the request-log watermark, reports and the retrain trigger."""
