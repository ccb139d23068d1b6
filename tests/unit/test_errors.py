"""Domain errors: naming the file of a batch an error is about keeps everything else about it."""

import pytest

from app import errors


def every_error_class() -> list[type[errors.ServiceError]]:
    found, todo = [], [errors.ServiceError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", every_error_class(), ids=lambda cls: cls.__name__)
def test_in_file_names_the_file_and_keeps_class_status_and_attributes(cls: type[errors.ServiceError]) -> None:
    if cls is errors.JobConflict:
        original: errors.ServiceError = cls("bad pixels", job_id="j1")  # type: ignore[call-arg]
    elif issubclass(cls, errors.InvalidRequest):
        original = cls([{"msg": "bad pixels"}])  # type: ignore[arg-type]
    else:
        original = cls("bad pixels")
    named = original.in_file(3, "seven.png")
    assert type(named) is cls
    assert named.status_code == original.status_code and named.headers == original.headers
    assert named.detail == "files[3] (seven.png): bad pixels" == str(named)
    assert original.detail == "bad pixels"  # the original is left as it was
    if cls is errors.JobConflict:
        assert named.job_id == "j1"  # type: ignore[attr-defined]
    assert original.in_file(0, None).detail == "files[0] (no filename): bad pixels"
