"""The one training engine: the loop every leukodx network is fitted with.

The image classifier, the smear detector and the nucleus / cytoplasm U-Net each say only what is
theirs (one *round* of training steps, how to validate, which record is better); the engine owns
the rest, the same way for all of them: seeding is done by the caller before the pieces are built,
then rounds, validation every ``eval_every`` rounds, best-round selection (weights kept in
``best.safetensors``), early stopping, a pickle-free checkpoint after every round from which
``resume=True`` continues bit for bit (network, optimizer, schedule and every random generator),
a progress bar, and callbacks with fixed names.

A *round* is an epoch for the classifier and the detector, and a block of ``eval_every`` steps for
the U-Net, which trains by steps.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch

from leukodx.errors import InvalidInputError
from leukodx.training import checkpoint

log = logging.getLogger("leukodx.training")


class Callback(Protocol):
    """Hooks the engine calls, by these names; each is optional."""

    def on_fit_start(self, engine: "Engine") -> None: ...
    def on_round_end(self, engine: "Engine", record: dict) -> None: ...
    def on_validation_end(self, engine: "Engine", record: dict) -> None: ...
    def on_fit_end(self, engine: "Engine") -> None: ...


@dataclass
class FitOutcome:
    history: list[dict]
    best: dict
    seconds: float
    stopped_early: bool = False


@dataclass
class Engine:
    """Runs ``rounds`` rounds of ``train_round`` with validation, selection, checkpoints and resume.

    - ``train_round(round, advance) -> dict``: one round of optimizer steps; calls ``advance(info)``
      after each step (progress bar); returns the round's training figures (e.g. ``train_loss``).
    - ``validate(round) -> dict``: validation figures, merged into the round's record.
    - ``is_better(record, best) -> bool``: whether a validated record beats the best so far
      (``best`` is ``{}`` before the first validation).
    - ``generators``: the random generators the round consumes (``torch.Generator`` or
      ``numpy.random.Generator``), saved in every checkpoint and restored on resume.
    """

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_round: Callable[[int, Callable[[str], None]], dict]
    validate: Callable[[int], dict]
    is_better: Callable[[dict, dict], bool]
    rounds: int
    steps_per_round: int
    eval_every: int = 1
    patience: int | None = None
    workdir: Path | None = None
    config: dict = field(default_factory=dict)
    generators: dict = field(default_factory=dict)
    callbacks: list = field(default_factory=list)
    show_progress: bool = True
    label: str = "train"

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.steps_per_round < 1 or self.eval_every < 1:
            raise InvalidInputError("rounds, steps per round and eval_every must all be at least 1")
        self.history: list[dict] = []
        self.best: dict = {}
        self._best_state: dict | None = None

    # --- paths --------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path | None:
        return self.workdir / "checkpoint" if self.workdir else None

    @property
    def best_path(self) -> Path | None:
        return self.workdir / "best.safetensors" if self.workdir else None

    def _emit(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)

    # --- random state ---------------------------------------------------------------------------
    def _rng_state(self) -> dict:
        out = {}
        for name, gen in self.generators.items():
            if isinstance(gen, torch.Generator):
                out[name] = {"torch": gen.get_state().tolist()}
            else:
                out[name] = {"numpy": gen.bit_generator.state}
        return out

    def _set_rng_state(self, saved: dict) -> None:
        for name, gen in self.generators.items():
            state = saved[name]
            if isinstance(gen, torch.Generator):
                gen.set_state(torch.tensor(state["torch"], dtype=torch.uint8))
            else:
                gen.bit_generator.state = state["numpy"]

    # --- the loop ---------------------------------------------------------------------------------
    def _resume(self) -> tuple[int, float]:
        ckpt = self.checkpoint_dir
        if ckpt is None or not checkpoint.has_state(ckpt):
            return 0, 0.0
        saved = checkpoint.read_meta(ckpt)["config"]
        current = json.loads(json.dumps(self.config))  # tuples -> lists, as saved
        if saved != current:
            changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise InvalidInputError(f"{ckpt}: cannot resume with a different configuration ({', '.join(changed)})")
        meta = checkpoint.load_state(ckpt, self.net, self.optimizer, self.scheduler)
        self.history, self.best = meta["history"], meta["best"]
        self._set_rng_state(meta["rng"])
        log.info("resumed %s after round %d of %d", self.label, meta["round"] + 1, self.rounds)
        return meta["round"] + 1, meta.get("seconds", 0.0)

    def _keep_best(self) -> None:
        state = {k: v.detach().contiguous().cpu().clone() for k, v in self.net.state_dict().items()}
        if self.best_path is None:
            self._best_state = state
            return
        from safetensors.torch import save_file

        self.best_path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(self.best_path))

    def restore_best(self) -> None:
        """Load the best round's weights into ``net`` (the last weights if nothing was validated)."""
        if self.best_path is not None and self.best_path.exists():
            from safetensors.torch import load_file

            self.net.load_state_dict(load_file(str(self.best_path)))
        elif self._best_state is not None:
            self.net.load_state_dict(self._best_state)
        self.net.eval()

    def fit(self, resume: bool = False) -> FitOutcome:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        start, elapsed_before = self._resume() if resume else (0, 0.0)
        t0 = time.time()
        stopped = False
        self._emit("on_fit_start")
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=not self.show_progress)
        with progress:
            task = progress.add_task(self.label, total=(self.rounds - start) * self.steps_per_round, info="")

            def advance(info: str = "") -> None:
                progress.update(task, advance=1, info=info)

            for r in range(start, self.rounds):
                record = {"round": r, **self.train_round(r, advance)}
                if (r + 1) % self.eval_every == 0 or r == self.rounds - 1:
                    record.update(self.validate(r))
                    if self.is_better(record, self.best):
                        self.best = {**{k: v for k, v in record.items() if not isinstance(v, (dict, list))}, "round": r}
                        self._keep_best()
                    self._emit("on_validation_end", record)
                record["seconds"] = round(elapsed_before + time.time() - t0, 1)
                self.history.append(record)
                log.log(logging.INFO if self.show_progress else logging.DEBUG, "%s round %d/%d: %s", self.label, r + 1,
                        self.rounds, _brief(record))
                if self.checkpoint_dir is not None:
                    checkpoint.save_state(self.checkpoint_dir, self.net, self.optimizer, self.scheduler, {
                        "round": r, "history": self.history, "best": self.best, "config": self.config,
                        "seconds": elapsed_before + time.time() - t0, "rng": self._rng_state()})
                self._emit("on_round_end", record)
                if self.patience is not None and self.best and r - self.best["round"] >= self.patience:
                    log.info("early stop: no validation gain for %d rounds", self.patience)
                    stopped = True
                    break
        self.restore_best()
        self._emit("on_fit_end")
        return FitOutcome(history=self.history, best=self.best, seconds=elapsed_before + time.time() - t0,
                          stopped_early=stopped)


def _brief(record: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                     if k != "round" and not isinstance(v, (dict, list)))

