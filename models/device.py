"""Which torch device a setting names: the one rule that training and serving both follow."""

import torch


def resolve_device(name: str, setting: str = "--device") -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cpu'; 'cuda[:N]' only where CUDA is available.

    `setting` names where the value came from, so the error says what to change.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{setting} {name} was requested but CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r} for {setting} (use auto, cpu or cuda)")
    return torch.device(name)
