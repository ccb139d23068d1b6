"""The predict path: an upload's bytes (uploads) become a tensor (preprocess), share a forward pass
with others (batching) and come back as an answer (answers). It imports nothing of the records or
the jobs: an outage there never reaches a prediction."""
