"""A user's own tidal job code: a model factory, a loss and a data factory (docs/bring-your-own.md).

Only tidal's workers import this package: put its folder on their PYTHONPATH and allow it with
TIDAL_MODEL_MODULES=byo_user. The coordinator and the shards never import it.
"""
