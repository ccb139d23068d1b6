"""Users' corrections in the records database (SQLite on one machine, PostgreSQL for several): any
replica takes them, every trainer reads them, and a restart loses none.

Who may teach the model: a correction sent with the token (MNIST_TRAIN_TOKEN) is accepted on arrival;
one sent without it waits as `pending` until a token holder reviews it, or is accepted at once where
no token is set (training is open to all then). The guards against a flood are rules of the
database, checked in the same serialised write as the insert, so they hold across processes and
replicas: a sender without the token may send MNIST_FEEDBACK_PER_MINUTE corrections a minute (by
its address, kept only as a hash), and at most MNIST_FEEDBACK_MAX_PENDING may wait for review.
"""

import hashlib
import math
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Row, delete, func, select, update

from app.errors import FeedbackNotFound, ReviewQueueFull, TooMuchFeedback
from app.records.database import Database, now_iso
from app.records.pools import on_records
from app.records.tables import feedback
from models.feedback_set import SPLITS, FeedbackSet, split_of
from models.signature import SIGNATURE

# The rate limit's window, in seconds.
RATE_WINDOW_S = 60.0
ITEM_ID_BYTES = 8


class FeedbackStatus(StrEnum):
    PENDING = "pending"  # waits for a token holder's review; never trained on
    ACCEPTED = "accepted"  # in the training or the held-out split
    REJECTED = "rejected"  # reviewed and refused; kept until deleted, never trained on


@dataclass(frozen=True)
class Correction:
    """A correction as it arrives: the image the model sees (uint8 bytes, height x width) and its
    label, what it answers for it, and who sent it."""

    image: bytes
    label: int
    prediction_id: str | None
    predicted: int | None
    model_version: str | None
    client: str
    trusted: bool


def client_key(address: str) -> str:
    """A sender's address as the rate limit counts it: a hash, so no address is kept."""
    return hashlib.sha256(address.encode()).hexdigest()[:16]


def public(row: Row[Any]) -> dict[str, Any]:
    """An item as the API shows it (the image as stored bytes; the route makes it a picture)."""
    return {
        "id": row.id,
        "status": row.status,
        "label": row.label,
        "split": row.split,
        "prediction_id": row.prediction_id,
        "predicted": row.predicted,
        "model_version": row.model_version,
        "trusted": row.trusted,
        "created_at": row.created_at,
        "reviewed_at": row.reviewed_at,
        "image": bytes(row.image),
    }


def count_by(db: Connection, column: Any, *where: Any) -> dict[Any, int]:
    """How many items have each value of `column` (among those `where` selects)."""
    query = select(column, func.count()).where(*where).group_by(column)
    return {value: count for value, count in db.execute(query).all()}


class FeedbackStore:
    """Corrections: add, look at, review, delete, and the accepted ones as a dataset."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.records = database.records

    def add(
        self, correction: Correction, status: FeedbackStatus, per_minute: int, max_pending: int
    ) -> dict[str, Any]:
        """Keep a correction, unless its sender is over the rate limit (untrusted senders only; 0
        means no limit) or the review queue is full (pending ones only)."""
        if len(correction.image) != SIGNATURE.input.pixels:
            raise ValueError(f"a correction's image is {SIGNATURE.input.size_text} bytes")
        item_id = secrets.token_hex(ITEM_ID_BYTES)
        with self.database.write() as db:
            now = float(db.execute(select(self.database.clock())).scalar_one())
            if not correction.trusted and per_minute > 0:
                self._check_rate(db, correction.client, now, per_minute)
            if status is FeedbackStatus.PENDING:
                waiting = db.execute(
                    select(func.count())
                    .select_from(feedback)
                    .where(feedback.c.status == FeedbackStatus.PENDING)
                ).scalar_one()
                if waiting >= max_pending:
                    raise ReviewQueueFull(
                        f"{waiting} corrections are waiting for review already (MNIST_FEEDBACK_MAX_PENDING): "
                        "try again once some are reviewed, or send with the token"
                    )
            db.execute(
                feedback.insert().values(
                    id=item_id,
                    status=status.value,
                    label=correction.label,
                    split=split_of(item_id),
                    image=correction.image,
                    prediction_id=correction.prediction_id,
                    predicted=correction.predicted,
                    model_version=correction.model_version,
                    client=client_key(correction.client),
                    trusted=correction.trusted,
                    created_at=now_iso(),
                    created=now,
                )
            )
            return self._item(db, item_id)

    @staticmethod
    def _check_rate(db: Connection, client: str, now: float, per_minute: int) -> None:
        recent = (
            db.execute(
                select(feedback.c.created)
                .where(
                    feedback.c.client == client_key(client),
                    feedback.c.trusted.is_(False),
                    feedback.c.created > now - RATE_WINDOW_S,
                )
                .order_by(feedback.c.created.desc())
                .limit(per_minute)
            )
            .scalars()
            .all()
        )
        if len(recent) >= per_minute:
            # The window has room again once the oldest of the last `per_minute` leaves it.
            wait = max(1, math.ceil(recent[-1] + RATE_WINDOW_S - now))
            raise TooMuchFeedback(
                f"this client sent {per_minute} corrections in the last {RATE_WINDOW_S:g} s "
                f"(MNIST_FEEDBACK_PER_MINUTE); send more in {wait} s, or with the token",
                wait,
            )

    @staticmethod
    def _item(db: Connection, item_id: str) -> dict[str, Any]:
        row = db.execute(select(feedback).where(feedback.c.id == item_id)).first()
        if row is None:
            raise FeedbackNotFound(f"no correction {item_id[:64]!r}")
        return public(row)

    def get(self, item_id: str) -> dict[str, Any]:
        with self.database.read() as db:
            return self._item(db, item_id)

    def page(self, status: FeedbackStatus | None, limit: int, offset: int) -> list[dict[str, Any]]:
        """Items, newest first (of one status, if given)."""
        query = (
            select(feedback).order_by(feedback.c.created_at.desc(), feedback.c.id).limit(limit).offset(offset)
        )
        if status is not None:
            query = query.where(feedback.c.status == status.value)
        with self.database.read() as db:
            return [public(row) for row in db.execute(query)]

    def counts(self) -> dict[str, Any]:
        """How many there are by status, and of the accepted ones by label and by split."""
        accepted = feedback.c.status == FeedbackStatus.ACCEPTED
        with self.database.read() as db:
            by_status = count_by(db, feedback.c.status)
            by_label = count_by(db, feedback.c.label, accepted)
            by_split = count_by(db, feedback.c.split, accepted)
        return {
            "total": sum(by_status.values()),
            "by_status": {status.value: by_status.get(status.value, 0) for status in FeedbackStatus},
            "accepted_by_label": [by_label.get(label, 0) for label in range(SIGNATURE.output.classes)],
            "accepted_by_split": {split: by_split.get(split, 0) for split in SPLITS},
        }

    def review(self, item_id: str, accept: bool) -> dict[str, Any]:
        """Accept or reject an item (again, if a reviewer changes their mind)."""
        status = FeedbackStatus.ACCEPTED if accept else FeedbackStatus.REJECTED
        with self.database.write() as db:
            changed = db.execute(
                update(feedback)
                .where(feedback.c.id == item_id)
                .values(status=status.value, reviewed_at=now_iso())
            )
            if changed.rowcount == 0:
                raise FeedbackNotFound(f"no correction {item_id[:64]!r}")
            return self._item(db, item_id)

    def delete(self, item_id: str) -> None:
        """Remove an item for good: it is in no training set made after this."""
        with self.database.write() as db:
            if db.execute(delete(feedback).where(feedback.c.id == item_id)).rowcount == 0:
                raise FeedbackNotFound(f"no correction {item_id[:64]!r}")

    def accepted(self) -> FeedbackSet:
        """Every accepted correction, as the dataset jobs train on and are measured on."""
        query = select(feedback.c.id, feedback.c.image, feedback.c.label).where(
            feedback.c.status == FeedbackStatus.ACCEPTED
        )
        with self.database.read() as db:
            return FeedbackSet.of_items((row.id, bytes(row.image), row.label) for row in db.execute(query))

    aadd = on_records(add)
    aget = on_records(get)
    apage = on_records(page)
    acounts = on_records(counts)
    areview = on_records(review)
    adelete = on_records(delete)
    aaccepted = on_records(accepted)
