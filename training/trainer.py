"""The training loop: one function you can read top to bottom, on one process or many (accelerate).

``train(config, model=None)`` runs one stage and returns the trained ``ClaraModel``; ``python -m
clara_plugins.training --config FILE`` and ``clara train`` call it. Data order is a pure function of the seed and the
step, so a run resumed from a checkpoint (trainable weights, optimiser, scheduler, RNG states) continues exactly as
the uninterrupted run would, and ``P`` processes with batch ``b`` see the same global batches as one with ``P x b``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from clara_plugins.errors import CheckpointError, ConfigError, MissingExtraError
from clara_plugins.training import deepspeed_zero, fsdp
from clara_plugins.training.config import TrainConfig
from clara_plugins.training.stages import Stage, make_stage

if TYPE_CHECKING:
    from accelerate import Accelerator

    from clara_plugins.model import ClaraModel

logger = logging.getLogger(__name__)


class StageModule(torch.nn.Module):
    """The stage's loss as an ``nn.Module``, so accelerate can wrap it (DDP / FSDP / DeepSpeed) and sync gradients."""

    def __init__(self, model: ClaraModel, stage: Stage) -> None:
        super().__init__()
        self.peft_model = model.peft_model  # registers the parameters
        self._clara = model
        self._stage = stage

    def forward(self, rows: list[Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self._stage.loss(self._clara, rows)


class BatchOrder:
    """Global batches as a pure function of (seed, step): an endless stream of seeded permutations of the data.

    Data smaller than a batch simply wraps around, and resuming at step ``s`` needs nothing but ``s``.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=gen).tolist()}
        return self._perms[epoch]

    def indices(self, start: int, count: int) -> list[int]:
        """Row indices at positions ``start .. start+count-1`` of the stream."""
        return [self._perm(j // self.n)[j % self.n] for j in range(start, start + count)]


def _accelerator(config: TrainConfig) -> Accelerator:
    try:
        from accelerate import Accelerator
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MissingExtraError("accelerate", "train") from err
    from accelerate.state import AcceleratorState

    precision = "bf16" if config.precision == "bf16" else "no"
    # accelerate keeps one process-wide state; a later run in the same Python process (stage 1 in fp32, then stage 2
    # in bf16) may ask for another precision, so forget the old choice (the process group itself is kept)
    if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    # several processes (torchrun / `accelerate launch --multi_gpu`) without CUDA: data-parallel on CPU with gloo
    cpu_parallel = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(cpu=cpu_parallel, mixed_precision=precision)


def adapter_recompute_context(model: ClaraModel) -> Any:
    """``context_fn`` for non-reentrant checkpointing: recompute each layer with the adapter it ran with.

    One forward pass may use two adapters (compressor, then generator); backward recomputes the compressor's layers
    after the generator ran, and without this they would be recomputed with the generator adapter (wrong gradients).
    """

    def context_fn() -> tuple[Any, Any]:
        return nullcontext(), model.use_role(model.peft_model.active_adapter)

    return context_fn


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def total_steps(config: TrainConfig, n_rows: int, world: int) -> int:
    """Optimiser steps of the run: ``max_steps``, or ``epochs`` passes over ``n_rows``."""
    if config.max_steps is not None:
        return config.max_steps
    per_step = config.batch_size * world * config.grad_accum_steps
    return max(1, math.ceil(config.epochs * n_rows / per_step))


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> Any:
    """Cosine with linear warm-up, or constant (no warm-up), as in the paper."""
    from transformers import get_constant_schedule, get_cosine_schedule_with_warmup

    if config.schedule == "constant":
        return get_constant_schedule(optimizer)
    return get_cosine_schedule_with_warmup(optimizer, int(config.warmup_ratio * steps), steps)


def make_optimizer(config: TrainConfig, params: Sequence[tuple[str, torch.nn.Parameter]]) -> torch.optim.Optimizer:
    """AdamW; weight decay only on adapter matrices, never on embedding rows (other rows must not move)."""
    decay = [p for n, p in params if "lora_" in n]
    plain = [p for n, p in params if "lora_" not in n]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate, betas=config.adam_betas)


def train(
    config: TrainConfig,
    model: ClaraModel | None = None,
    rows: Sequence[Any] | None = None,
    eval_rows: Sequence[Any] | None = None,
) -> ClaraModel:
    """Run one training stage and return the trained model.

    Args:
        config: the run's settings (``config.stage`` picks the stage).
        model: the model to train; default ``ClaraModel.from_pretrained(config.model)``.
        rows: training rows (``Stage1Row`` / ``QARow``); default: read ``config.train_file``.
        eval_rows: held-out rows; default: read ``config.eval_file`` when set.

    Returns:
        The trained model (also saved to ``config.output_dir/final`` in our format).
    """
    return Trainer(config, model, rows, eval_rows).run()


class Trainer:
    """One stage's run; see :func:`train`. Split into phases so each can be read (and tested) on its own."""

    def __init__(
        self,
        config: TrainConfig,
        model: ClaraModel | None = None,
        rows: Sequence[Any] | None = None,
        eval_rows: Sequence[Any] | None = None,
    ) -> None:
        self.config = config
        self.accelerator = _accelerator(config)
        self.fsdp = fsdp.uses_fsdp(self.accelerator)
        if self.fsdp:
            fsdp.check_fsdp(self.accelerator, config.stage)
        self.deepspeed = deepspeed_zero.uses_deepspeed(self.accelerator)
        if self.deepspeed:
            deepspeed_zero.configure_deepspeed(self.accelerator, config)
        # FSDP and DeepSpeed's ZeRO partition the optimiser state: each process saves and loads its own
        self.sharded_optimizer = self.fsdp or self.deepspeed
        seed_everything(config.seed)
        self.stage = make_stage(config)
        self.stage.cache_documents = not self.fsdp
        if rows is None and not config.train_file:
            msg = "TrainConfig.train_file must name a data file or folder when no rows are given, got ''"
            raise ConfigError(msg)
        self.rows = list(rows) if rows is not None else self.stage.load(config.train_file)
        if not self.rows:
            msg = f"no training rows in {config.train_file!r}"
            raise ConfigError(msg)
        if eval_rows is None and config.eval_file:
            eval_rows = self.stage.load(config.eval_file)
        self.eval_rows = list(eval_rows or [])[: config.eval_max_examples]
        self.model = model if model is not None else self._load_model()
        self.out = Path(config.output_dir)
        self.step = 0

    def _load_model(self) -> ClaraModel:
        from clara_plugins.model import ClaraModel

        return ClaraModel.from_pretrained(
            self.config.model, subfolder=self.config.subfolder, device=self.accelerator.device, dtype="fp32"
        )

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # ------------------------------------------------------------------ the run
    def run(self) -> ClaraModel:
        cfg, acc = self.config, self.accelerator
        # 1. what trains: adapters (and stage 1's memory rows); everything else frozen
        self.params = self.stage.prepare(self.model)
        if cfg.gradient_checkpointing:
            kwargs = {"use_reentrant": False, "context_fn": adapter_recompute_context(self.model)}
            self.model.base_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.model.peft_model.train()  # train mode (gradient checkpointing only acts in it); dropout below
        self._dropouts = [(m, m.p) for m in self.model.peft_model.modules() if isinstance(m, torch.nn.Dropout)]
        for m, _ in self._dropouts if cfg.freeze_dropout else []:
            m.p = 0.0
        # 2. optimiser, schedule, distributed wrapping
        steps = total_steps(cfg, len(self.rows), acc.num_processes)
        optimizer = make_optimizer(cfg, self.params)
        scheduler = make_scheduler(cfg, optimizer, steps)
        # the scheduler stays outside accelerate: our steps are already global (accelerate would step it once per
        # process), so P processes follow exactly the one-process learning-rate curve
        originals = fsdp.original_parameters(self.model) if self.fsdp else []
        module, optimizer = acc.prepare(StageModule(self.model, self.stage), optimizer)
        self.module, self.optimizer, self.scheduler = module, optimizer, scheduler
        if cfg.resume_from:
            self.load_checkpoint(self._resolve_resume(cfg.resume_from))
        order = BatchOrder(len(self.rows), cfg.seed)
        logger.info(
            "stage %s: %d rows, %d steps, %d trainable tensors (%d values), %d process(es)",
            cfg.stage,
            len(self.rows),
            steps,
            len(self.params),
            sum(p.numel() for _, p in self.params),
            acc.num_processes,
        )
        bar = tqdm(
            total=steps, initial=self.step, desc=f"stage {cfg.stage}", disable=not (self.is_main and cfg.progress)
        )
        running: list[float] = []
        started = time.perf_counter()
        # 3. the loop: accumulate micro-batches, clip, step
        while self.step < steps:
            loss, logs = self._train_step(module, order)
            running.append(loss)
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if self.step % cfg.log_every == 0 or self.step == steps:
                self._log(
                    {
                        "loss": sum(running) / len(running),
                        **logs,
                        "lr": scheduler.get_last_lr()[0],
                        "examples_per_s": self._throughput(started, len(running)),
                    }
                )
                running, started = [], time.perf_counter()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < steps:
                self._evaluate()
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < steps:
                self.save_checkpoint()
        bar.close()
        # 4. final evaluation, model in our format, plot
        if self.fsdp:  # rank 0 gets a plain model with full weights back (the others keep their shards)
            fsdp.unwrap(module, self.model, originals)
            self.fsdp = False
        self._evaluate()
        self.model.peft_model.eval()
        for m, p in self._dropouts:
            m.p = p
        self.stage.finish(self.model)
        if cfg.gradient_checkpointing:
            self.model.base_lm.gradient_checkpointing_disable()
        self._save_final()
        return self.model

    def _throughput(self, started: float, n_steps: int) -> float:
        seconds = max(time.perf_counter() - started, 1e-9)
        return (
            n_steps * self.config.batch_size * self.config.grad_accum_steps * self.accelerator.num_processes / seconds
        )

    def _train_step(self, module: torch.nn.Module, order: BatchOrder) -> tuple[float, dict[str, float]]:
        cfg, acc = self.config, self.accelerator
        world, rank = acc.num_processes, acc.process_index
        per_micro = cfg.batch_size * world
        total = torch.zeros((), device=acc.device)
        logs: dict[str, float] = {}
        for micro in range(cfg.grad_accum_steps):
            start = (self.step * cfg.grad_accum_steps + micro) * per_micro + rank * cfg.batch_size
            rows = [self.rows[i] for i in order.indices(start, cfg.batch_size)]
            last = micro == cfg.grad_accum_steps - 1
            with acc.no_sync(module) if not last else nullcontext(), acc.autocast():
                loss, logs = module(rows)
                acc.backward(loss / cfg.grad_accum_steps)
            total += loss.detach() / cfg.grad_accum_steps
        if cfg.max_grad_norm > 0:
            # all of the module's parameters (frozen ones have no gradient): accelerate then lets FSDP compute
            # the norm over every process's shards instead of each process over its own
            acc.clip_grad_norm_(list(module.parameters()), cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return acc.reduce(total, reduction="mean").item(), logs

    # ------------------------------------------------------------------ evaluation and logging
    def _evaluate(self) -> None:
        if not self.eval_rows:
            return
        if self.fsdp:  # the wrapped model cannot run on rank 0 alone; it is evaluated once unwrapped, at the end
            logger.warning("FSDP: evaluation during training skipped at step %d (the final one runs)", self.step)
            return
        if self.is_main:
            from clara_plugins.training.evaluate import stage_metrics

            was_training = self.model.peft_model.training
            self.model.peft_model.eval()
            metrics = stage_metrics(self.model, self.stage, self.eval_rows, self.config)
            self.model.peft_model.train(was_training)
            self._log({f"eval_{k}": v for k, v in metrics.items()})
        self.accelerator.wait_for_everyone()

    def _log(self, values: dict[str, float]) -> None:
        if not self.is_main:
            return
        record = {"step": self.step, "stage": self.config.stage, **{k: round(float(v), 6) for k, v in values.items()}}
        logger.info("%s", record)
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / "metrics.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-{step}``: trainable tensors, optimiser, scheduler, RNG (per process), the model.

        Under FSDP and DeepSpeed each process writes its own optimiser shard (``optimizer-{rank}.pt``, so a resumed
        run needs the same number of processes); under FSDP the whole model (``model/``) is not written: the final
        one is."""
        folder = self.out / f"checkpoint-{self.step}"
        if self.fsdp:
            tensors = fsdp.gather_tensors(self.module, self.params)
        else:
            tensors = {n: p.detach().cpu().contiguous() for n, p in self.params}
        if self.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            save_file(tensors, folder / "trainable.safetensors")
            torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")
            if not self.sharded_optimizer:
                torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            if not self.fsdp:
                self.model.save_pretrained(folder / "model")
            state = {"step": self.step, "config": self.config.to_dict()}
            (folder / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
        self.accelerator.wait_for_everyone()
        if self.sharded_optimizer:
            torch.save(self.optimizer.state_dict(), folder / f"optimizer-{self.accelerator.process_index}.pt")
        _save_rng(folder / f"rng-{self.accelerator.process_index}")
        self.accelerator.wait_for_everyone()
        return folder

    def load_checkpoint(self, folder: Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` into the prepared run."""
        state_file = folder / "trainer_state.json"
        if not state_file.is_file():
            msg = f"not a training checkpoint (no trainer_state.json): {str(folder)!r}"
            raise CheckpointError(msg)
        tensors = load_file(folder / "trainable.safetensors")
        missing = [n for n, _ in self.params if n not in tensors]
        if missing:
            msg = f"checkpoint {str(folder)!r} lacks trained tensors such as {missing[:3]}; was it another stage?"
            raise CheckpointError(msg)
        with fsdp.full_values(self.module, writeback=True) if self.fsdp else nullcontext(), torch.no_grad():
            for name, param in self.params:
                param.copy_(tensors[name].to(param.device, param.dtype))
        self._load_optimizer(folder)
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        self.step = int(json.loads(state_file.read_text())["step"])
        _load_rng(folder / f"rng-{self.accelerator.process_index}")
        logger.info("resumed from %s at step %d", folder, self.step)

    def _load_optimizer(self, folder: Path) -> None:
        """``optimizer.pt``; or each process's own shard under FSDP; or every process's shard under DeepSpeed,
        whose ZeRO optimiser reads the list of them. The launcher settings must be those the checkpoint had."""
        world = self.accelerator.num_processes
        shards = sorted(folder.glob("optimizer-*.pt"))
        if self.sharded_optimizer and len(shards) != world:
            msg = (
                f"checkpoint {str(folder)!r} has {len(shards)} optimiser shards for {world} processes: resume with "
                "the launcher settings (FSDP, DeepSpeed or neither; number of processes) it was written with"
            )
            raise CheckpointError(msg)
        if not self.sharded_optimizer and not (folder / "optimizer.pt").is_file():
            msg = f"checkpoint {str(folder)!r} has no optimizer.pt (was it written under FSDP or DeepSpeed?)"
            raise CheckpointError(msg)
        if not self.sharded_optimizer:
            files = [folder / "optimizer.pt"]
        elif self.deepspeed:
            files = [folder / f"optimizer-{r}.pt" for r in range(world)]
        else:
            files = [folder / f"optimizer-{self.accelerator.process_index}.pt"]
        allowed = deepspeed_zero.checkpoint_globals() if self.deepspeed else []
        with torch.serialization.safe_globals(allowed):
            states = [torch.load(f, weights_only=True, map_location="cpu") for f in files]
        self.optimizer.load_state_dict(states if self.deepspeed else states[0])

    def _resolve_resume(self, resume_from: str) -> Path:
        if resume_from != "latest":
            return Path(resume_from)
        found = sorted(self.out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        if not found:
            msg = f"TrainConfig.resume_from is 'latest' but {str(self.out)!r} has no checkpoint-* folder"
            raise CheckpointError(msg)
        return found[-1]

    def _save_final(self) -> None:
        if self.is_main:
            self.model.save_pretrained(self.out / "final")
            if self.config.plot:
                from clara_plugins.training.plots import plot_metrics

                plot_metrics(self.out / "metrics.jsonl", self.out / "metrics.png")
        self.accelerator.wait_for_everyone()


def _save_rng(prefix: Path) -> None:
    py_state = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    prefix.with_suffix(".json").write_text(json.dumps(meta))
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, prefix.with_suffix(".safetensors"))


def _load_rng(prefix: Path) -> None:
    meta = json.loads(prefix.with_suffix(".json").read_text())
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = meta["numpy"]
    np.random.set_state((npy[0], np.asarray(npy[1], dtype=np.uint32), *npy[2:]))
    tensors = load_file(prefix.with_suffix(".safetensors"))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
