"""The data layer: database, ingest (files, exchange archives), indicators, datasets.

Imports only from :mod:`kallos_models.errors`, :mod:`kallos_models.config` and
:mod:`kallos_models.files`; never from modelling, stages, mlops or the CLI.
"""
