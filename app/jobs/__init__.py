"""Background training jobs: durable records (store), the child process (runner), model versions."""
