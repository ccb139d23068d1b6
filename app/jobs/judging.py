"""Judging a finished job's model: keep it as a version, have the active model measured on the same
test data where the rule compares them, and promote it as the rule (app/jobs/promotion.py) says."""

import json
import logging
from pathlib import Path
from typing import Any

from app.errors import ModelObjectCorrupt
from app.jobs.children import Children, Commands
from app.jobs.promotion import CannotCompare, Outcome, PromoteRule, Verdict, judge, record
from app.jobs.store import Job, JobStatus, JobStore
from app.records.versions import ModelVersions
from models.checkpoint import CheckpointError
from models.comparison import Standing

log = logging.getLogger("app.jobs")


def not_stored(why: str) -> dict[str, Any]:
    return {"status": JobStatus.FAILED, "error": f"the new model could not be stored: {why}"}


def stopped(job: Job) -> dict[str, Any]:
    """How a job ends that was asked to stop: cancelled, or failed where a shutdown said why."""
    return {"status": JobStatus.CANCELLED if job.error is None else JobStatus.FAILED}


class Judge:
    """What becomes of a job's new model: the fields its record ends with."""

    def __init__(
        self,
        store: JobStore,
        versions: ModelVersions,
        children: Children,
        commands: Commands,
        threads: int,
        mnist_tolerance: float,
    ) -> None:
        self.store, self.versions, self.children = store, versions, children
        self.commands, self.threads, self.mnist_tolerance = commands, threads, mnist_tolerance

    async def stop_asked(self, job: Job) -> dict[str, Any] | None:
        """How the job ends if a cancel was asked for meanwhile (a shutdown asks too), else None."""
        current = await self.store.aget(job.id)
        return stopped(current) if current.cancel_requested else None

    async def __call__(self, job: Job, out: Path, feedback: Path | None) -> dict[str, Any]:
        """Keep the new model as a version, then promote it as the job's `promote` rule says:
        `rejected` says why not, and by how much it fell short. A cancel during judging promotes
        nothing. `feedback`: the corrections the job froze, which the active model is measured on too."""
        try:
            version = await self.versions.akeep(out)
        except CheckpointError as exc:
            return {"status": JobStatus.FAILED, "error": f"the new checkpoint did not load: {exc}"}
        except ModelObjectCorrupt as exc:  # what the store gave back is not what was put there
            return not_stored(exc.detail)
        except OSError as exc:  # the state disk is full, or its folder was deleted
            return not_stored(exc.strerror or str(exc))
        challenger = await self.versions.ametadata_of(version)
        mine = Standing.of(challenger)
        rule = PromoteRule(job.params.get("promote", PromoteRule.IF_BETTER))
        kept = {"model_version": version, "test_accuracy": challenger.get("test_accuracy")}
        minimum = job.params.get("min_accuracy")
        while True:  # judged again if another model was activated meanwhile
            champion = await self.versions.aactive_metadata()
            theirs = Standing.of(champion) if champion is not None else None
            verdict = judge(rule, minimum, mine, theirs, self.mnist_tolerance)
            if verdict.outcome is Outcome.MEASURE:
                assert champion is not None
                if stop := await self.stop_asked(job):
                    return {**kept, **stop}
                try:  # like with like: the active model measured on this job's test data
                    champion = await self.measure(job, champion, mine, feedback)
                except CannotCompare as exc:
                    if stop := await self.stop_asked(job):  # its measuring was stopped
                        return {**kept, **stop}
                    verdict = Verdict(Outcome.REJECT, str(exc))
                    break
                verdict = judge(rule, minimum, mine, Standing.of(champion), self.mnist_tolerance)
            if verdict.outcome is not Outcome.PROMOTE:
                break
            if stop := await self.stop_asked(job):
                return {**kept, **stop}
            by = f"training job {job.id}"
            try:
                if rule is PromoteRule.ALWAYS:
                    await self.versions.aactivate(version, by)
                    break
                replacing = str(champion["version"]) if champion is not None else None
                if await self.versions.apromote(version, by, replacing):
                    break
            except ModelObjectCorrupt as exc:
                return not_stored(exc.detail)
        end: dict[str, Any] = {
            **kept,
            "error": None,
            "status": JobStatus.REJECTED if verdict.outcome is Outcome.REJECT else JobStatus.SUCCEEDED,
            "promotion": record(rule, verdict, challenger, champion),
        }
        if verdict.outcome is Outcome.REJECT:
            end["error"] = (
                f"{verdict.reason}: not promoted. Kept as version {version}; "
                f"POST /model/versions/{version}/activate serves it anyway"
            )
        return end

    async def measure(
        self, job: Job, active: dict[str, Any], challenger: Standing, feedback: Path | None
    ) -> dict[str, Any]:
        """The active model's metadata with its figures on this trainer's test data (and the job's
        held-out corrections), measured by a child process and added to its version's record
        (CannotCompare if that fails)."""
        version = str(active["version"])
        try:  # a store that is out is waited for (ModelStoreUnavailable goes up to the scheduler)
            weights = await self.versions.alocal_copy(active)
        except ModelObjectCorrupt as exc:
            raise CannotCompare(f"the active model {version} cannot be measured: {exc.detail}") from None
        # A child of the job like its training child: a cancel or a shutdown stops it the same way.
        async with self.children.running(
            job.id, self.commands.evaluation(weights, feedback), self.threads
        ) as child:
            stdout, stderr = await child.communicate()
        lines = stderr.decode(errors="replace").strip().splitlines()
        try:
            figures = json.loads(stdout) if child.returncode == 0 else None
        except ValueError:
            figures = None
        if not isinstance(figures, dict) or figures.get("version") != version:
            why = lines[-1] if lines else f"exit status {child.returncode}"
            raise CannotCompare(f"the active model {version} could not be measured on the test set: {why}")
        log.info("measured the active model %s on the test set: %s%%", version, figures.get("test_accuracy"))
        by = f"measured to compare with training job {job.id}"
        measured = await self.versions.arecord_evaluation(version, figures, by)
        if not challenger.judged_alike(Standing.of(measured)):
            raise CannotCompare(
                f"the new model's test data is not this trainer's: {challenger.test_sha256} "
                f"(held-out corrections {challenger.feedback_sha256})"
            )
        return measured
