"""Training jobs over real HTTP: what the tests ask to train, and following a job to where it gets."""

from collections.abc import Callable
from typing import Any

import httpx

from tests.tools import polled

QUICK = {"epochs": 1, "limit_train": 2000, "weight_decay": 1e-4}
# Twice the images of `small_checkpoint` (76.06% on the test set): a better model.
BETTER = {**QUICK, "limit_train": 4000}

Job = dict[str, Any]


def finished(job: Job) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled", "rejected")


def polled_job(
    client: httpx.Client,
    job_id: str,
    done: Callable[[Job], object],
    timeout_s: float = 120,
    seen: list[Job] | None = None,
) -> Job:
    """The job as GET /train/{job_id} shows it once `done` holds for it (`finished`, say); every
    state on the way is added to `seen` where given. A job that cannot be read fails at once."""

    def fetch() -> Job:
        response = client.get(f"/train/{job_id}")
        assert response.status_code == 200, response.text
        job: Job = response.json()
        if seen is not None:
            seen.append(job)
        return job

    return polled(fetch, done, timeout_s, what=f"job {job_id} did not get there")
