"""Where Dagster meets the models and the index: one subpackage per pipeline stage.

`ingestion`, `embeddings`, `retrieval`, `reranker` and `evaluation` are the Dagster groups;
each has an `assets.py` (its assets and checks) and Dagster-free helpers beside it. `store`
is the one storage layer, `serving` answers `lensless recommend`, `demo` renders the demo
catalog. `compute` (the train pool), `plots` and `settings` (run settings as metadata) are
shared by several stages.
"""
