"""Background training jobs: durable records (store), scheduling (scheduler), the child processes
that train and measure (children), their progress (progress), and judging the new model
(judging, by the rules of promotion). Model versions live in app/records/versions.py.

What happens when a job succeeds, step by step:

1. `POST /train` (app/routes/train.py) validates the body (`TrainRequest`, app/schemas.py, whose
   fields are derived from `Hyperparameters` in models/hyperparameters.py) and calls
   `JobManager.submit` (scheduler.py), in any process of any role but `trainer`.
2. `JobStore.create` (store.py) inserts a `queued` record in one write transaction if the active
   jobs leave room (live trainers' slots plus MNIST_TRAIN_QUEUE), else refuses with 409.
3. A process that trains (MNIST_ROLE all or trainer; this one is woken at once, others poll) claims
   it in `_tend_jobs` -> `JobStore.claim`: the job is now `running`, owned by that process.
4. `_run_child` starts `python -m training` (`Commands`, children.py; training/__main__.py -> `run`
   in training/loop.py) with one flag per hyperparameter given, `--out` in `<state>/incoming/` and
   `--events - --quiet`, and keeps the job's heartbeat while the child lives.
5. `fold_events` (progress.py) folds each JSON line on the child's stdout into the record's
   `progress`; stderr lines are kept only to explain a crash.
6. The child saves the checkpoint atomically (`save_checkpoint`, models/checkpoint.py) and exits 0.
7. `_finish` -> `Judge` (judging.py): `ModelVersions.keep` puts the weights in the model store and
   records the version, whatever comes next. The rule (promotion.py) then compares it with the
   active version on the same test data (models/comparison.py; the active one measured first by a
   child, `python -m training.evaluate`, when its record has no figures on that data): below
   `min_accuracy`, or worse under `promote: if_better`, the job ends `rejected` saying by how much;
   else `ModelVersions.promote` makes it active, unless another version was activated meanwhile
   (then it is judged again against that one). Retried while the database or store is out.
8. The record ends `succeeded` with the new `model_version`, its `test_accuracy` and how it was
   judged (`promotion`); `promoted` (`ModelFollower.check`, app/records/follower.py) swaps it in here
   at once, and the followers of every other process and replica do the same within
   MNIST_MODEL_POLL_S (`BatchingEngine.swap`).
"""
