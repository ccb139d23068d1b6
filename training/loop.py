"""The tutorial's training maths on a fast data path.

The whole normalised set lives in one tensor on the training device; each epoch is a seeded
permutation sliced into batches. No per-sample PIL transforms, no DataLoader workers: on a CPU the
model's own arithmetic is what is left, and channels-last memory makes the convolutions faster.
Progress goes to a callback; this module never prints.
"""

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models.calibration import ECE_BINS, calibrated, expected_calibration_error, fit_temperature, reliability
from models.card import model_card
from models.checkpoint import save_checkpoint
from models.cnn import BATCH_NORMED, build_model
from models.events import EpochEvent, ProgressEvent, SavedEvent, StartEvent, TrainingEvent
from models.feedback_set import FeedbackSet, FeedbackSetError
from models.hyperparameters import RECIPES, Hyperparameters, Recipe
from models.signature import SIGNATURE
from training import cuda_graph, outliers
from training.data import DataError, Mnist, load_mnist, split_validation
from training.distributed import (
    DEFAULT_RDZV_TIMEOUT_S,
    ONE_PROCESS,
    World,
    loss_everywhere,
    process_group,
    rank_device,
    shard,
)
from training.not_a_digit_card import chosen_threshold, not_a_digit_card

EventCallback = Callable[[TrainingEvent], None]
# Grey level 0, normalised: what augmentation fills the space a moved digit leaves with.
BACKGROUND = SIGNATURE.input.normalized(0.0)
# Non-digits drawn for Outlier Exposure: at most this many (fewer for a smaller training set), each
# batch of digits beside as many picked at random from them.
OUTLIER_POOL = 30000


@dataclass(frozen=True)
class TrainConfig(Hyperparameters):
    """Everything a training run depends on: the hyperparameters, and how and where this run goes."""

    test_batch_size: int = 1000
    log_interval: int = 100
    device: str = "auto"
    dry_run: bool = False
    cuda_graph: bool = True  # how steps run on a GPU, not what they compute
    data_dir: str | None = None
    out: str = "mnist_cnn.pt"
    feedback: str | None = None  # an export of users' corrections: its held-out split is measured
    use_feedback: bool = False  # and its training split trained on, feedback_weight times an epoch
    # The families of non-digits Outlier Exposure draws from (None: every one; the card records
    # which): measuring a family the model never saw means leaving it out here.
    outlier_families: tuple[str, ...] | None = None
    rdzv_timeout: float = DEFAULT_RDZV_TIMEOUT_S  # how long a rank waits for the others


class TrainingDiverged(ValueError):
    """The training loss stopped being a finite number: the weights are NaN or infinite, and the
    model they make would answer NaN for every image. Nothing is saved."""


def effective_lr(config: TrainConfig, world: World) -> float:
    """`--batch-size` is per rank, so one step of W ranks averages W times as many samples and the
    run takes W times fewer steps: the linear scaling rule (Goyal et al., 2017) multiplies the
    learning rate by W, which keeps both recipes at their accuracy. A run of one is unchanged."""
    return config.lr * world.world_size


def to_model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 N x height x width -> the model's input, normalised (in place: the float copy is the
    only one), channels-last, on `device`."""
    x = SIGNATURE.input.normalize(images.to(device).unsqueeze(1).float())
    return x.contiguous(memory_format=torch.channels_last)


def augment(batch: torch.Tensor, recipe: Recipe, generator: torch.Generator) -> torch.Tensor:
    """Random rotation, scale and shift of each image, filling with the background value."""
    n, device = batch.shape[0], batch.device

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator, device=device) * 2 - 1) * limit

    angle = uniform(math.radians(recipe.max_rotation))
    scale = 1 + uniform(recipe.max_scale)
    shift = 2 * recipe.max_shift / batch.shape[-1]  # pixels -> affine_grid's [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, uniform(shift)], 1), torch.stack([sin, cos, uniform(shift)], 1)], 1
    )
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    moved = F.grid_sample(batch - BACKGROUND, grid, align_corners=False) + BACKGROUND
    return moved.contiguous(memory_format=torch.channels_last)


def epoch_order(n: int) -> torch.Tensor:
    """The permutation a shuffling DataLoader would draw from the global RNG at this point.

    Drawing it the same way (the iterator's base seed, then the sampler's seed) gives the tutorial's
    exact sample order for the same seed, so the two pipelines train the same model.
    """
    torch.empty((), dtype=torch.int64).random_()  # the DataLoader iterator's base seed
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def build_optimizer(
    model: nn.Module, config: TrainConfig, recipe: Recipe, steps: int, lr: float
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The tutorial's plain SGD, or Nesterov SGD under a one-cycle schedule peaking at `lr`."""
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=lr,
        momentum=config.momentum,
        nesterov=recipe.schedule == "onecycle",
        weight_decay=config.weight_decay,
    )
    if recipe.schedule == "sgd":
        return optimizer, None
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)


@dataclass(frozen=True)
class Evaluation:
    """A model's answers on a test set: the mean NLL loss and each row of log-probabilities."""

    loss: float
    log_probs: torch.Tensor

    @property
    def predicted(self) -> torch.Tensor:
        return self.log_probs.argmax(dim=1)

    @property
    def confidence(self) -> torch.Tensor:
        return self.confidence_at(1.0)

    def confidence_at(self, temperature: float) -> torch.Tensor:
        """Each answer's probability as the service states it at `temperature`."""
        return calibrated(self.log_probs, temperature).max(dim=1).values.exp()

    def correct(self, labels: torch.Tensor) -> int:
        return int((self.predicted == labels).sum().item())


@torch.inference_mode()
def log_probs_on(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's answers (log-probabilities) for a normalised set, in batches, in eval mode."""
    model.eval()
    return torch.cat(
        [model(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
    )


@torch.inference_mode()
def answers_on(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Evaluation:
    """The tutorial's test() over a normalised set (its loss summed batch by batch, as it sums),
    keeping each answer for the model card."""
    outputs = log_probs_on(model, images, batch_size)
    total_loss = sum(
        F.nll_loss(
            outputs[start : start + batch_size], labels[start : start + batch_size], reduction="sum"
        ).item()
        for start in range(0, len(images), batch_size)
    )
    return Evaluation(total_loss / len(images), outputs)


def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> tuple[float, int]:
    """(mean NLL loss, number correct) over a normalised set, as the tutorial's test()."""
    results = answers_on(model, images, labels, batch_size)
    return results.loss, results.correct(labels)


def data_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the exact images and labels a model was trained on (the card's provenance)."""
    digest = hashlib.sha256(images.contiguous().numpy().tobytes())
    digest.update(labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_figures(
    results: Evaluation,
    labels: torch.Tensor,
    mnist: Mnist,
    temperature: float = 1.0,
    validation_samples: int = 0,
) -> dict[str, Any]:
    """A model's test accuracy and loss, its model card (its confidences at `temperature`, as the
    service states them), and the test data they were measured on (`data`: figures are comparable
    only where its sha256 is the same)."""
    stated = results.confidence_at(temperature)
    return {
        "test_accuracy": round(100.0 * results.correct(labels) / len(labels), 2),
        "test_loss": round(results.loss, 6),
        "data": {
            "dataset": "MNIST",
            "test_samples": len(mnist.test_images),
            "test_sha256": data_fingerprint(mnist.test_images, mnist.test_labels),
        },
        **model_card(labels, results.predicted, stated),
        "calibration": calibration_card(temperature, validation_samples, results, stated, labels),
    }


def calibration_card(
    temperature: float,
    validation_samples: int,
    test: Evaluation,
    stated: torch.Tensor,
    test_labels: torch.Tensor,
) -> dict[str, Any]:
    """The temperature (fitted on `validation_samples` held-out training images), and the expected
    calibration error on the test set before it and after it (`stated`: each confidence at it),
    with the reliability diagram's bins after."""
    right = test.predicted == test_labels
    before = reliability(test.confidence, right)
    after = reliability(stated, right)
    return {
        "temperature": temperature,
        "validation_samples": validation_samples,
        "bins": ECE_BINS,
        "ece_percent_before": expected_calibration_error(before),
        "ece_percent": expected_calibration_error(after),
        "reliability": after,
    }


def feedback_figures(
    model: nn.Module, feedback: FeedbackSet, device: torch.device, batch_size: int
) -> dict[str, Any]:
    """A model's figures on the held-out split of users' corrections (a second test set), and which
    set they were measured on (its sha256: figures are comparable only where it is the same)."""
    heldout = feedback.heldout
    figures: dict[str, Any] = {"sha256": feedback.sha256, "count": len(heldout)}
    if not len(heldout):
        return figures
    labels = heldout.labels.long().to(device)
    results = answers_on(model, to_model_input(heldout.images, device), labels, batch_size)
    card = model_card(labels, results.predicted, results.confidence)
    return {
        **figures,
        "accuracy": round(100.0 * results.correct(labels) / len(labels), 2),
        "loss": round(results.loss, 6),
        "per_class_accuracy": card["per_class_accuracy"],
        "confusion_matrix": card["confusion_matrix"],
    }


def read_feedback(path: str | None) -> FeedbackSet | None:
    """The corrections export named by --feedback, or None; DataError if it cannot be read."""
    if path is None:
        return None
    try:
        return FeedbackSet.from_zip(Path(path))
    except FeedbackSetError as exc:
        raise DataError(f"{path}: {exc}") from None


def with_feedback(
    images: torch.Tensor, labels: torch.Tensor, feedback: FeedbackSet, weight: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's training images plus the corrections' training split, each correction `weight` times:
    a few hundred among 60,000 would otherwise barely move the weights."""
    extra = feedback.train
    return (
        torch.cat([images, extra.images.repeat(weight, 1, 1)]),
        torch.cat([labels, extra.labels.to(labels.dtype).repeat(weight)]),
    )


@dataclass(frozen=True)
class Exposure:
    """Outlier Exposure (Hendrycks et al., 2019): non-digits (normalised, on the device), the
    weight of their loss and the generator that picks a batch of them for each batch of digits."""

    outliers: torch.Tensor
    weight: float
    picker: torch.Generator

    def losses(
        self, model: nn.Module, data: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(what is minimised, the digits' NLL): the NLL plus `weight` x the cross-entropy from
        uniform to the answers on as many non-digits (the mean over classes of -log p, averaged
        over the non-digits). The NLL alone is what is reported, comparable with the test loss."""
        picked = torch.randint(
            len(self.outliers), (len(data),), generator=self.picker, device=self.outliers.device
        )
        out: torch.Tensor = model(torch.cat([data, self.outliers[picked]]))
        digits = F.nll_loss(out[: len(data)], target)
        return digits - self.weight * out[len(data) :].mean(), digits


def exposure_for(
    recipe: Recipe,
    families: tuple[str, ...],
    seed: int,
    digits: torch.Tensor,
    count: int,
    device: torch.device,
    world: World = ONE_PROCESS,
) -> Exposure | None:
    """The recipe's Outlier Exposure, its non-digits drawn from `families` (fragments cut from
    `digits`) by the run's seed, the same on every rank, each rank picking from them with its own
    generator; or None where it has none."""
    if not recipe.outlier_exposure:
        return None
    drawn = outliers.pool(families, min(OUTLIER_POOL, count), seed, digits)
    picker = torch.Generator(device=device).manual_seed(seed + world.rank)
    return Exposure(to_model_input(drawn, device), recipe.outlier_exposure, picker)


def bf16_native(device: torch.device) -> bool:
    """Whether the device computes in bfloat16 in hardware: a GPU from Ampere on, a CPU with
    AVX-512 BF16 or AMX (elsewhere it is emulated, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu" and bool(
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    )


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    config: TrainConfig,
    epoch: int,
    jitter: torch.Generator,
    on_event: EventCallback,
    graphed: cuda_graph.GraphedStep | None = None,
    world: World = ONE_PROCESS,
    exposure: Exposure | None = None,
    in_bf16: bool = False,
) -> float:
    """One pass over this rank's share of the training set in the tutorial's order, reporting
    every log_interval (samples counted over all ranks); returns the epoch's mean training loss.

    With `graphed`, each full batch is one CUDA graph replay of the same step; with `exposure`,
    each batch of digits is trained beside a batch of non-digits; `in_bf16`, each step computes in
    bfloat16.
    """
    recipe = RECIPES[config.recipe]
    # Batch norm cannot train on one image: a last batch of one goes with the image before it.
    paired = config.arch in BATCH_NORMED
    model.train()
    n = len(x_train)
    # Every rank draws the same permutation (same seed, same draws) and takes its own share.
    order = shard(epoch_order(n), world).to(x_train.device)
    batches = math.ceil(len(order) / config.batch_size)
    total_loss = torch.zeros((), device=x_train.device)  # summed on the device: no sync per step
    for batch_idx in range(batches):
        index = order[batch_idx * config.batch_size : (batch_idx + 1) * config.batch_size]
        if paired and len(index) == 1:
            index = order[-2:]
        if graphed is not None and len(index) == config.batch_size:
            loss = graphed(index)
        else:
            data, target = x_train[index], y_train[index]
            if recipe.augment:
                data = augment(data, recipe, jitter)
            # Zeroed, not released: a graph's gradients must stay where the graph writes them.
            optimizer.zero_grad(set_to_none=graphed is None)
            with torch.autocast(x_train.device.type, torch.bfloat16, enabled=in_bf16):
                if exposure:
                    minimised, loss = exposure.losses(model, data, target)
                else:
                    minimised = loss = F.nll_loss(model(data), target)
            minimised.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        total_loss += loss.detach()
        if scheduler is not None:
            scheduler.step()
        if batch_idx % config.log_interval == 0 or batch_idx == batches - 1:
            done = ((epoch - 1) * batches + batch_idx + 1) / (config.epochs * batches)
            on_event(
                ProgressEvent(
                    event="progress",
                    epoch=epoch,
                    epochs=config.epochs,
                    batch=batch_idx,
                    batches=batches,
                    samples=min(n, batch_idx * config.batch_size * world.world_size),
                    total=n,
                    fraction=done,
                    loss=loss.item(),
                )
            )
        if config.dry_run:
            break
    return float(total_loss.item()) / (batch_idx + 1)


def run(
    config: TrainConfig, on_event: EventCallback = lambda event: None, world: World = ONE_PROCESS
) -> dict[str, Any] | None:
    """Train, evaluate after each epoch, save the checkpoint; return its metadata.

    With several ranks (`world`), each trains on its share of every epoch under DDP, and rank 0
    alone evaluates, reports and saves (the other ranks return None).
    """
    recipe = RECIPES[config.recipe]
    outliers.require_fonts()  # the card draws every family: a missing font fails now, not after training
    device = rank_device(config.device, world)
    report = on_event if world.is_main else lambda event: None
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    mnist = load_mnist(config.data_dir)
    (train_images, train_labels), (val_images, val_labels) = split_validation(
        mnist.train_images, mnist.train_labels, recipe.validation
    )
    if config.limit_train is not None:
        train_images, train_labels = train_images[: config.limit_train], train_labels[: config.limit_train]
    feedback = read_feedback(config.feedback)
    trained_on_feedback = feedback is not None and config.use_feedback
    if feedback is not None and trained_on_feedback:
        train_images, train_labels = with_feedback(
            train_images, train_labels, feedback, config.feedback_weight
        )
    if config.arch in BATCH_NORMED and (share := math.ceil(len(train_images) / world.world_size)) < 2:
        raise ValueError(
            f"the {config.arch} network needs at least 2 training images per process for its batch "
            f"norm, got {share}"
        )
    x_train, y_train = to_model_input(train_images, device), train_labels.long().to(device)
    x_test, y_test = to_model_input(mnist.test_images, device), mnist.test_labels.long().to(device)
    in_bf16 = recipe.mixed_precision and bf16_native(device)

    with process_group(world, device, config.rdzv_timeout) as backend:
        model = build_model(config.arch).to(device).to(memory_format=torch.channels_last)
        # DDP averages the ranks' gradients in backward; `model` stays the plain network that is
        # evaluated and saved (no `module.` prefixes in its state_dict).
        trained: nn.Module = DistributedDataParallel(model) if world.distributed else model
        n = len(x_train)
        batches = math.ceil(math.ceil(n / world.world_size) / config.batch_size)
        lr = effective_lr(config, world)
        optimizer, scheduler = build_optimizer(model, config, recipe, config.epochs * batches, lr)
        jitter = torch.Generator(device=device).manual_seed(config.seed + world.rank)
        graphed, graph_error = None, None
        full_batches = n // config.batch_size
        families = outliers.FAMILIES if config.outlier_families is None else config.outlier_families
        exposure = exposure_for(recipe, families, config.seed, train_images, n, device, world)
        # A graph replays float32 steps: a run in bf16 steps eagerly.
        graphable = (
            not world.distributed
            and not in_bf16
            and cuda_graph.supports(
                device, recipe.augment or exposure is not None, scheduler is not None, full_batches
            )
        )
        if config.cuda_graph and graphable:
            try:
                graphed = cuda_graph.GraphedStep(model, optimizer, x_train, y_train, config.batch_size)
            except RuntimeError as exc:  # the eager step computes the same; say why and go on
                graph_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        distributed = {
            "world_size": world.world_size,
            "nnodes": world.nnodes,
            "backend": backend,
            "batch_size_per_rank": config.batch_size,
            "global_batch_size": config.batch_size * world.world_size,
            "effective_lr": lr,
        }
        start = StartEvent(
            event="start",
            device=str(device),
            cuda_graph=graphed is not None,
            train_samples=n,
            test_samples=len(x_test),
            batches_per_epoch=batches,
            hyperparameters=config.hyperparameters(),
            distributed=distributed,
        )
        if graph_error:
            start["cuda_graph_error"] = graph_error
        report(start)

        test_loss, correct, history = math.inf, 0, []
        results: Evaluation | None = None
        for epoch in range(1, config.epochs + 1):
            train_loss = train_epoch(
                trained,
                optimizer,
                scheduler,
                x_train,
                y_train,
                config,
                epoch,
                jitter,
                report,
                graphed,
                world,
                exposure,
                in_bf16,
            )
            if not math.isfinite(summed := loss_everywhere(train_loss, world, device)):
                raise TrainingDiverged(
                    f"training diverged in epoch {epoch}: the training loss is {summed} "
                    f"(lr {lr:g}, momentum {config.momentum:g}, batch size {config.batch_size}); "
                    "no checkpoint was written: try a lower learning rate or momentum"
                )
            if world.is_main:
                results = answers_on(model, x_test, y_test, config.test_batch_size)
                test_loss, correct = results.loss, results.correct(y_test)
                history.append(
                    {
                        "epoch": epoch,
                        "train_loss": round(train_loss, 6),  # rank 0's share
                        "test_loss": round(test_loss, 6),
                        "test_accuracy": round(100.0 * correct / len(x_test), 2),
                    }
                )
                report(
                    EpochEvent(
                        event="epoch",
                        epoch=epoch,
                        epochs=config.epochs,
                        test_loss=test_loss,
                        correct=correct,
                        test_samples=len(x_test),
                        test_accuracy=100.0 * correct / len(x_test),
                    )
                )
            if config.dry_run:
                break

    if not world.is_main:
        return None
    assert results is not None  # rank 0 evaluated after every epoch
    # A temperature fitted on images no epoch trained on; the network's own (1.0) with none held out.
    temperature, validation = 1.0, None
    if len(val_images):
        y_val = val_labels.long().to(device)
        validation = answers_on(model, to_model_input(val_images, device), y_val, config.test_batch_size)
        temperature = fit_temperature(validation.log_probs, y_val)
    figures = test_figures(results, y_test, mnist, temperature, len(val_images))
    # The threshold from the held-out digits, as the temperature.
    choice = chosen_threshold(validation.log_probs if validation else None, results.log_probs)
    exposed = {"weight": recipe.outlier_exposure, "families": list(families) if exposure else []}
    figures["not_a_digit"] = not_a_digit_card(
        choice,
        results.log_probs,
        mnist.test_images,
        exposed,
        lambda images: log_probs_on(model, to_model_input(images, device), config.test_batch_size),
    )
    if feedback is not None:
        figures["feedback_heldout"] = feedback_figures(model, feedback, device, config.test_batch_size)
    provenance = {}
    if feedback is not None and trained_on_feedback:
        # The frozen dataset version: what a model's data was, by name and by content.
        provenance["feedback"] = {**feedback.manifest(), "weight": config.feedback_weight}
    metadata = save_checkpoint(
        model,
        config.out,
        arch=config.arch,
        extra={
            **figures,
            "hyperparameters": config.hyperparameters(),
            "epochs": config.epochs,
            "device": str(device),
            "train_samples": n,
            "distributed": distributed,
            "training_seconds": round(time.perf_counter() - started, 1),
            "history": history,
            "data": {
                **figures["data"],
                "train_samples": n,
                "train_sha256": data_fingerprint(train_images, train_labels),
                "augmentation": recipe.augment,
                "mixed_precision": "bf16" if in_bf16 else None,
                **provenance,
            },
        },
    )
    report(
        SavedEvent(
            event="saved",
            path=config.out,
            version=metadata["version"],
            test_accuracy=metadata["test_accuracy"],
            metadata=metadata,
        )
    )
    return metadata
