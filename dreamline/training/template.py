"""One recipe for every fine-tuning stage: the steps they share, written once.

`FineTuning.run()` is the template; a stage is a subclass that fills in its hooks:

    seed torch's global RNG            (a private copy: the caller's state is left as it was)
    prepare()                          starting pipeline, data, text banks, scheduler, model
    run key                            params, learns_from() digests, the stage's own code
    for each run of training_runs():   one run of `model` on make_batch() / loss();
        Trainer(...).run()             AGP adds its camera-off ablation as a second run
        EMA weights in, eval()
    evaluate()                         held-out fields of the summary ({"heldout": table})
    output_pipeline()                  the pipeline saved as the model folder
    save into a fresh folder
    write_samples(pipe, folder)        samples.png (and summary fields of what it measured)
    summary.json                       model, describe(), evaluate(), samples, training records
    swap the folder in                 a crash leaves the old folder or the new one

Over N data-parallel processes (`compute.processes`, dreamline.training.loop.Compute), `run()`
launches N ranks (dreamline.training.loop.launch) and returns rank 0's summary. Every rank
prepares the same data and model and trains (each its part of every step's batch); rank 0
alone evaluates, saves the folder, samples and writes summary.json. What prepare() writes
into `folder` (DreamBooth's default identity images) goes to a scratch folder of its own on
the other ranks, removed when they finish.

Every step keeps the order of random draws it had in the stages it came from: models are
created in `prepare()` (their initialisers draw from the seeded global RNG), the Trainer
draws only from its own per-step generators, and held-out losses and samples from seeded
generators of their own.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from dreamline.training.common import (LIVE_DIR, file_digest, fresh_folder, keeps_global_rng,
                                       load_base_pipeline, renders_digest, replace_folder, run_key,
                                       training_record, write_summary)
from dreamline.training.data import load_views
from dreamline.training.objectives import training_loss

log = logging.getLogger("dreamline.training")


@dataclass
class TrainingRun:
    """One Trainer run: the module it optimises, its batches, its loss.

    `name` is "" for the stage's model; a second run of a stage (AGP's "ablation") gets its
    own checkpoints (work_dir/<work or name>), run key ("<key>-<name>"), DVCLive folder
    ("dvclive_<name>") and summary record ("<name>_training")."""
    model: torch.nn.Module
    make_batch: Callable[[int], Any]
    loss: Callable[[torch.nn.Module, Any, torch.Generator], torch.Tensor]
    samples_per_step: int
    name: str = ""
    work: str | None = None

    @property
    def work_subdir(self) -> str:
        return self.name if self.work is None else self.work

    @property
    def key_suffix(self) -> str:
        return f"-{self.name}" if self.name else ""

    @property
    def live_dir(self) -> str:
        return f"{LIVE_DIR}_{self.name}" if self.name else LIVE_DIR

    @property
    def summary_key(self) -> str:
        return f"{self.name}_training" if self.name else "training"


class FineTuning:
    """A training stage: `run()` writes its model folder into out_dir and returns its summary.

    work_dir holds the Trainer's checkpoints (scratch: a rerun resumes from them when the
    run key matches). `max_tokens` is the text length used when the starting pipeline's
    config names none."""

    model_name: str   # summary.json's "model"

    def __init__(self, p, renders_root: Path, captions_path: Path, out_dir: Path, work_dir: Path,
                 max_tokens: int = 16, *, compute=None):
        from dreamline.training.loop import Compute, launched_rank

        self.p = p
        self.renders_root = Path(renders_root)
        self.captions_path = Path(captions_path)
        self.out_dir = Path(out_dir)
        self.work_dir = Path(work_dir)
        self.max_tokens = max_tokens
        # Device, precision, processes: what the stage's entry point exported, unless given.
        self.compute = compute if compute is not None else Compute.from_env()
        self._args = (p, renders_root, captions_path, out_dir, work_dir, max_tokens)
        rank = launched_rank()
        self.rank = rank[0] if rank else 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes the stage's outputs (rank 0, or the only process)."""
        return self.rank == 0

    # -- the template ---------------------------------------------------------------------

    def run(self) -> dict | None:
        """The model folder's summary (on a rank other than 0: None, it writes nothing)."""
        from dreamline.training.loop import launch, launched_rank, usable_processes

        if self.compute.processes > 1 and launched_rank() is None:
            ranks = usable_processes(self.p.train.batch_size, self.p.train.grad_accumulation, self.compute.processes)
            if ranks < self.compute.processes:
                log.warning("%s: a batch of %d splits evenly over %d of the %d processes; training on %d",
                            self.model_name, self.p.train.batch_size, ranks, self.compute.processes, ranks)
            compute = dataclasses.replace(self.compute, processes=ranks)
            if ranks > 1:
                return launch(_run_rank, (type(self), self._args, compute), processes=ranks,
                              device=compute.device, threads=torch.get_num_threads())
            self.compute = compute
        try:
            return self._run()
        finally:
            if not self.is_main and "folder" in self.__dict__:
                shutil.rmtree(self.__dict__["folder"], ignore_errors=True)

    @keeps_global_rng
    def _run(self) -> dict | None:
        torch.manual_seed(self.p.train.seed)
        self.prepare()
        key = run_key(self.p, *self.learns_from(), self.code_digest())
        trained = [(run, self.fit(run, key)) for run in self.training_runs()]
        if not self.is_main:
            return None
        evaluation = self.evaluate()
        pipe = self.output_pipeline()
        folder = self.folder
        pipe.save_pretrained(folder)
        sampled = self.write_samples(pipe, folder)
        summary = {"model": self.model_name, **self.describe(), **evaluation, **sampled,
                   **self.training_records(trained, folder)}
        write_summary(folder, summary)
        replace_folder(folder, self.out_dir)
        return summary

    def fit(self, run: TrainingRun, key: str):
        """Train `run.model` (resuming a checkpoint of the same key), then leave it holding
        its EMA weights, in eval mode."""
        from dreamline.training.loop import Trainer

        trainer = Trainer(run.model, self.p.train, self.work_dir / run.work_subdir, run.make_batch, run.loss,
                          samples_per_step=run.samples_per_step, run_key=key + run.key_suffix,
                          compute=self.compute, loss_modules=self.loss_modules())
        result = trainer.run()
        trainer.ema.copy_to(run.model.parameters())
        trainer.release()   # back on the CPU for evaluation and saving
        run.model.eval()
        return result

    def code_digest(self) -> str:
        """The code that trains: this stage's class and what it can run (only decides
        whether a checkpoint may be resumed, never what is written)."""
        from dreamline.lineage.code import code_digest

        return code_digest(f"{type(self).__module__}:{type(self).__qualname__}")

    @cached_property
    def folder(self) -> Path:
        """The new model folder (out_dir.partial), made empty the first time it is asked
        for; it replaces out_dir once summary.json is in. On a rank other than 0, a scratch
        folder of its own (removed when it finishes)."""
        if not self.is_main:
            return Path(tempfile.mkdtemp(prefix=f"dreamline-rank{self.rank}-"))
        return fresh_folder(self.out_dir)

    def training_records(self, trained: list, folder: Path) -> dict:
        """Each run's final numbers, its loss curve logged through DVCLive into the folder."""
        return {run.summary_key: training_record(result, folder, run.live_dir) for run, result in trained}

    # -- hooks ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Load what training starts from and learns from; set `self.model` (after the
        global RNG was seeded: module initialisers draw from it)."""
        raise NotImplementedError

    def loss_modules(self) -> list[torch.nn.Module]:
        """Frozen modules loss() runs besides the trained model (moved to the training device
        with it, gradient-checkpointed with it); by default none."""
        return []

    def learns_from(self) -> tuple[str, ...]:
        """Digests of the inputs, for the run key: by default the renders and captions."""
        return renders_digest(self.renders_root), file_digest(self.captions_path)

    def make_batch(self, step: int, part=None):
        """Step `step`'s batch, a pure function of (seed, step); with a `part`
        (dreamline.training.loop.Part: several processes or grad_accumulation), that part of
        it: the whole batch's indices and captions drawn, then sliced (`part.take`), and the
        DenoiseBatch's `part` set to `part.span(units)` so its noise is drawn likewise."""
        raise NotImplementedError

    def loss(self, model, batch, generator: torch.Generator) -> torch.Tensor:
        return training_loss(model, self.scheduler, batch, generator, self.p.train.snr_gamma)

    def samples_per_step(self) -> int:
        return self.p.train.batch_size

    def training_runs(self) -> Iterator[TrainingRun]:
        """What to train, in order (a generator: a later run's model may be made after an
        earlier run finished). By default one run of `self.model`."""
        yield TrainingRun(self.model, self.make_batch, self.loss, self.samples_per_step())

    def evaluate(self) -> dict:
        """Summary fields measured on the trained model(s) before anything is saved."""
        return {}

    def output_pipeline(self):
        raise NotImplementedError

    def write_samples(self, pipe, folder: Path) -> dict:
        """Sample grids into the folder; returns summary fields (what the samples measured)."""
        return {}

    def describe(self) -> dict:
        """Summary fields about the data, after "model"."""
        return {}

    # -- helpers for prepare() ------------------------------------------------------------

    def load_start(self, path: str | Path):
        """The pipeline training starts from; its config's max_tokens when it has one."""
        pipe = load_base_pipeline(path)
        self.max_tokens = getattr(pipe.config, "max_tokens", None) or self.max_tokens
        return pipe

    def load_split(self, split: str, resolution: int, **kwargs):
        """One caption split of the rendered views (dreamline.training.data.load_views)."""
        return load_views(self.renders_root, self.captions_path, resolution, splits=(split,), **kwargs)


def _run_rank(cls: type[FineTuning], args: tuple, compute) -> dict | None:
    """One rank of a data-parallel stage (what `launch` runs in each process)."""
    return cls(*args, compute=compute).run()
