"""Background training jobs: durable records (store) and the training child process (runner).

Model versions live beside them in app/records/versions.py."""
