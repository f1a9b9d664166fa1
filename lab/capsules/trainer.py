"""Training a capsule autoencoder: ``CapsuleTrainer`` (one minibatch per ``step()``).

The trainer owns the model, the optimizer (``lab.optim``: the conservative optimizer
of thesis 2.5.3, or Adam), the data order and one random stream (minibatch order,
dropout masks, manager noise), so its whole state is (parameters, optimizer state,
stream state, data order and position, step) and a checkpoint of exactly that makes
a resumed run follow the uninterrupted one bit for bit on the CPU.

Divergence guard: a non-finite loss, or non-finite parameters after an update,
restore the last good state (kept in memory every ``good_every`` steps) and cut all
step sizes by ``config.nan_step_cut``; the event is logged in the metrics and in
``self.events``. Checkpoints refuse NaN (``lab.checkpoint``), so a NaN never reaches
the disk.

Threads: ``step()`` and ``snapshot()`` hold ``self.lock``, so a dashboard thread may
call ``snapshot()`` while another thread trains.

Device (``device="gpu"``, or a ``lab.backend.Backend``): the model, the optimizer state,
the random stream and the training images live on the GPU, and a minibatch is gathered
there. Reading a number back from the GPU waits for all queued work, so there the step
only *checks* every ``sync_every`` steps (default 10): on those steps it reads the loss
terms, parameter finiteness and mixture statistics in one transfer and returns the full
metrics (every ``RULE_COUNT_CHECKS``-th check also the optimizer's rule fractions); the
steps between return only counters and timing (and are not added to ``history``). A
non-finite loss or parameter found at a check rolls back to the last good state, which is
only taken at a check that found everything finite (so it is at most ``sync_every - 1``
updates older than on the CPU). The steps replay one recorded CUDA graph
(``lab.capsules.graph_step``), checks included (they read what the replayed step left in
the graph's memory); only the rule-counting steps run eagerly. On the CPU ``sync_every``
is 1 and the step is exactly the CPU step it always was. The GPU path was checked on an H100 and an H200
by ``benchmarks/gpu_check.py`` (``benchmarks/results/gpu_*.json``).
"""
from __future__ import annotations

import copy
import inspect
import json
import threading
import time
from pathlib import Path

import numpy as np

from lab.autodiff import no_grad
from lab.backend import Backend, HostRandomStream, RandomStream, get_backend, to_numpy
from lab.capsules.analysis import active_acs
from lab.capsules.autoencoders import CapsuleAutoencoder, build_model
from lab.capsules.configs import CapsuleConfig, resume_changes
from lab.checkpoint import load_checkpoint, save_checkpoint, split_arrays
from lab.optim import make_optimizer

#: How many fixed held-out images ``snapshot()`` reconstructs.
SNAPSHOT_IMAGES = 8
#: With deferred checks (the GPU), the optimizer counts its rules (fig 2.13) at every this
#: many-th check: counting reads the host inside the step, so that step runs eagerly,
#: while the other checks replay the recorded step (``lab.capsules.graph_step``).
RULE_COUNT_CHECKS = 10


class CapsuleTrainer:
    """``CapsuleTrainer(config, train_images, valid_images=None, seed=0)``.

    ``step() -> dict`` of float metrics for one minibatch update; ``evaluate()`` the
    held-out reconstruction error; ``snapshot()`` numpy copies for live views;
    ``state_dict()``/``load_state_dict()``, ``save(path)`` and ``CapsuleTrainer.load``.
    ``device``: ``"cpu"`` (default), ``"gpu"``, ``"auto"`` or a ``Backend``;
    ``sync_every``: steps between host reads (default 1 on the CPU, 10 on the GPU; see
    the module docstring); ``graph``: replay the steps (all but the rule-counting ones) as
    a CUDA graph (``lab.capsules.graph_step``; None: with CuPy and the conservative
    optimizer).
    """

    def __init__(self, config: CapsuleConfig, train_images: np.ndarray,
                 valid_images: np.ndarray | None = None, seed: int = 0,
                 optimizer: str | None = None, good_every: int = 10,
                 device: str | Backend | None = "cpu", sync_every: int | None = None,
                 graph: bool | None = None):
        self.config = config
        self.seed = int(seed)
        self.backend = device if isinstance(device, Backend) else get_backend(device)
        on_gpu = self.backend.name != "cpu"
        self.sync_every = max(1, int(sync_every if sync_every is not None else (10 if on_gpu else 1)))
        self.model: CapsuleAutoencoder = build_model(config, seed=self.seed, backend=self.backend)
        self.optimizer_name = optimizer or config.optimizer
        kwargs = dict(config.optimizer_kwargs) if self.optimizer_name == config.optimizer else {}
        overrides = step_size_overrides(self.model.params, self.optimizer_name, kwargs,
                                        config.step_fan_in_ref, config.encoder_step_scale)
        if overrides:
            kwargs["overrides"] = overrides
        self.optimizer = make_optimizer(self.optimizer_name, self.model.params, **kwargs)
        if self.sync_every > 1 and getattr(self.optimizer, "record_every", 0) == 1:
            # rule counts cost a host read (and an eager step): every RULE_COUNT_CHECKS-th check
            self.optimizer.record_every = self.sync_every * RULE_COUNT_CHECKS
        self.train_images = np.asarray(train_images, dtype=np.float32)
        self.valid_images = None if valid_images is None else np.asarray(
            valid_images[:config.n_valid], dtype=np.float32)
        # on the GPU the training set is uploaded once and minibatches are gathered there
        self._train_dev = self.backend.asarray(self.train_images) if on_gpu else None
        self._order_dev = None                  # (host order it was made from, device copy)
        self._good_step = 0
        self.stream = RandomStream(self.seed + 1, self.backend) if on_gpu else RandomStream(self.seed + 1)
        self.step_count = 0
        self.images_seen = 0
        self._order = self.stream.permutation(len(self.train_images))
        self._pos = 0
        self.good_every = int(good_every)
        self.events: list[dict] = []
        self.step_cuts = 0                      # plateau cuts of the step sizes so far
        self._plateau_best, self._plateau_waited = None, 0
        self.history: list[dict] = []
        self.last_metrics: dict = {}
        self.lock = threading.RLock()
        self._good = self._capture()
        # CUDA graph of the step (lab.capsules.graph_step); default: on
        # with CuPy and the conservative optimizer
        self._graph = None
        if graph or (graph is None and self.backend.xp.__name__ == "cupy"):
            from lab.capsules.graph_step import CapturedStep  # noqa: PLC0415
            captured = CapturedStep(self)               # .error: why it cannot record, if so
            if graph or captured.error is None:
                self._graph = captured

    def use_host_random(self, seed: int | None = None) -> None:
        """Draw the CPU's random numbers on this trainer's device
        (``lab.backend.HostRandomStream``): a GPU run then gets the dropout masks, manager
        noise and minibatch order of the CPU run with the same seed, so the two can be
        compared step for step. Slower. Without ``seed``: only before the first step (the
        stream and minibatch order of a fresh CPU run). With ``seed``: at any step, e.g.
        right after ``load``: the stream ``HostRandomStream(seed)`` from here on, the
        minibatch order left as it is, so trainers restored from one checkpoint and given
        one seed draw the same numbers (a comparison late in a run)."""
        if seed is None and self.step_count:
            raise RuntimeError("use_host_random() must be called before the first step "
                               "(or given a seed)")
        self.stream = HostRandomStream(self.seed + 1 if seed is None else int(seed), self.backend)
        if seed is None:
            self._order = self.stream.permutation(len(self.train_images))
            self._pos = 0
            self._order_dev = None
        self._good = self._capture()
        if self._graph is not None:
            from lab.capsules.graph_step import unsupported  # noqa: PLC0415
            self._graph.drop()
            self._graph.error = unsupported(self)

    # -- one update ---------------------------------------------------------------------
    def _next_indices(self):
        """The next minibatch's rows of the training set (on the device on the GPU)."""
        B = min(self.config.batch_size, len(self.train_images))
        if self._pos + B > len(self._order):
            self._order = self.stream.permutation(len(self.train_images))
            self._pos = 0
        idx = self._order[self._pos:self._pos + B]
        if self._train_dev is not None:
            # the epoch's order goes to the device once; a batch is a gather there
            if self._order_dev is None or self._order_dev[0] is not self._order:
                self._order_dev = (self._order, self.backend.asarray(np.asarray(self._order, np.int64)))
            idx = self._order_dev[1][self._pos:self._pos + B]
        self._pos += B
        return idx

    def _batch(self, idx):
        return self._train_dev[idx] if self._train_dev is not None else self.train_images[idx]

    def _next_batch(self) -> np.ndarray:
        return self._batch(self._next_indices())

    def step(self) -> dict:
        """One minibatch update; returns float metrics (a rollback sets ``rollback=1``)."""
        if self.sync_every > 1:
            return self._step_deferred()
        with self.lock:
            t0 = time.perf_counter()
            batch = self._next_batch()
            self.optimizer.zero_grad()
            loss, terms, out = self.model.loss(batch, train=True, stream=self.stream)
            bad = not np.isfinite(loss.item())
            if not bad:
                loss.backward()
                self.optimizer.step()
                bad = not self._params_finite()
            self.step_count += 1
            self.images_seen += len(batch)
            metrics = {"step": self.step_count, "images": self.images_seen,
                       "loss": float(loss.item()), **terms}
            if bad:
                metrics.update(self._rollback(reason="non-finite loss" if not np.isfinite(
                    metrics["loss"]) else "non-finite parameters"))
            else:
                metrics.update(self._mixture_stats(out))
                metrics.update({f"rule_{k}": v for k, v in self.optimizer.last_rule_fractions.items()})
                if self.step_count % self.good_every == 0:
                    self._good = self._capture()
            metrics["step_scale"] = float(self.optimizer.step_scale)
            metrics["seconds"] = time.perf_counter() - t0
            metrics.update(self._periodic_evaluation())
            self.last_metrics = metrics
            self.history.append(metrics)
            if len(self.history) > 10000:
                del self.history[:5000]
            return metrics

    def _step_deferred(self) -> dict:
        """``step()`` with host reads only every ``sync_every`` steps (module docstring)."""
        with self.lock:
            t0 = time.perf_counter()
            graph = self._graph
            checking = (self.step_count + 1) % self.sync_every == 0
            idx = self._next_indices()
            if graph is not None and graph.replayable() and graph.run(idx):
                loss, terms, out = graph.outputs         # replayed (lab.capsules.graph_step)
            else:
                loss, terms, out = self._update(self._batch(idx))
                if graph is not None:
                    graph.warmed()
            self.step_count += 1
            self.images_seen += len(idx)
            metrics = {"step": self.step_count, "images": self.images_seen}
            if checking:
                metrics.update(self._check(loss, terms, out))
            metrics["step_scale"] = float(self.optimizer.step_scale)
            metrics["seconds"] = time.perf_counter() - t0
            metrics.update(self._periodic_evaluation())
            if "loss" in metrics or "valid_recon_nodropout" in metrics:
                self.last_metrics = metrics
                self.history.append(metrics)
                if len(self.history) > 10000:
                    del self.history[:5000]
            return metrics

    def _update(self, batch):
        """One update without host reads (the deferred step; what a CUDA graph records):
        ``(loss, terms, out)`` as ``model.loss(..., sync=False)`` returns them."""
        self.optimizer.zero_grad()
        loss, terms, out = self.model.loss(batch, train=True, stream=self.stream, sync=False)
        loss.backward()
        self.optimizer.step()
        return loss, terms, out

    def _check(self, loss, terms, out) -> dict:
        """One host read: loss terms and parameter finiteness; rollback or good state."""
        xp = self.backend.xp
        names = list(terms)
        finite = xp.stack([xp.isfinite(p.data).all() for p in self.model.params.values()]).all()
        row = xp.stack([loss.data.astype(xp.float64)] + [terms[k].astype(xp.float64) for k in names]
                       + [finite.astype(xp.float64)])
        host = to_numpy(row)
        values = {k: float(v) for k, v in zip(names, host[1:-1])}
        metrics = {"loss": float(host[0]), **values,
                   "recon_per_pixel": values["recon"] / self.model.n_pixels}
        if not np.isfinite(host[0]) or host[-1] != 1.0:
            metrics.update(self._rollback(reason="non-finite loss" if not np.isfinite(host[0])
                                          else "non-finite parameters"))
            return metrics
        metrics.update(self._mixture_stats(out))
        if getattr(self.optimizer, "rules_step", None) == self.optimizer.step_count:   # counted now
            metrics.update({f"rule_{k}": v for k, v in self.optimizer.last_rule_fractions.items()})
        if self.step_count - self._good_step >= self.good_every:
            self._good = self._capture()
        return metrics

    def _periodic_evaluation(self) -> dict:
        """Every ``config.eval_every`` steps: ``held_out_report()`` and the plateau rule."""
        if self.valid_images is None or self.config.eval_every <= 0 or (
                self.step_count % self.config.eval_every):
            return {}
        report = self.held_out_report()
        return {**report, **self._plateau_step(report["valid_recon_nodropout"])}

    def held_out_report(self) -> dict:
        """One test-time pass over the held-out images: ``valid_recon_nodropout`` (as
        ``evaluate()``), ``valid_acs_active`` (``analysis.active_acs``) and, for a mixture,
        how decisive its manager is without the RMM's noise: ``valid_max_y`` (the mean
        largest y_i) and ``valid_max_y_99``, the fraction of images with a y_i >= 0.99
        (2.3.5: 80% on MNIST in the thesis)."""
        with self.lock:
            out = self.model.contributions(self.valid_images, keys=("output", "intensities", "mixture"))
        report = {"valid_recon_nodropout": float(((out["output"] - self.valid_images) ** 2).mean()),
                  "valid_acs_active": active_acs(out["intensities"])}
        if out["mixture"].shape[1] > 1:
            max_y = out["mixture"].max(axis=1)
            report.update(valid_max_y=float(max_y.mean()), valid_max_y_99=float((max_y >= 0.99).mean()))
        return report

    def _plateau_step(self, valid: float) -> dict:
        """Reduce on plateau, an option beside the constant step sizes of thesis 2.5.3
        (``config.plateau_patience`` > 0): after that many held-out evaluations without a
        new best, every step size is cut by ``config.plateau_cut``. A constant step size
        sets a floor under the held-out error (the mnist-thesis CPU run of seed 0 at step
        14,334: 0.032 with alpha3 = alpha4 = 2e-4, 0.029 within 500 steps of halving them)."""
        patience = self.config.plateau_patience
        if patience <= 0 or not np.isfinite(valid):
            return {}
        if self._plateau_best is None or valid < self._plateau_best:
            self._plateau_best, self._plateau_waited = float(valid), 0
            return {}
        self._plateau_waited += 1
        if self._plateau_waited < patience:
            return {}
        self._plateau_waited = 0
        self.step_cuts += 1
        self.optimizer.scale_step_sizes(self.config.plateau_cut)
        return {"step_cut": 1}

    def _params_finite(self) -> bool:
        return all(bool(np.isfinite(p.data.sum())) for p in self.model.params.values())

    @staticmethod
    def _mixture_stats(out) -> dict:
        y = out.get("mixture")
        if y is None or y.shape[1] < 2:
            return {}
        y = y.numpy()
        ent = -(y * np.log(np.maximum(y, 1e-12))).sum(axis=1)
        return {"mixture_max_y": float(y.max(axis=1).mean()),
                "mixture_entropy_frac": float(ent.mean() / np.log(y.shape[1])),
                "mixture_used": int((np.bincount(y.argmax(axis=1), minlength=y.shape[1]) > 0).sum())}

    def evaluate(self, images: np.ndarray | None = None, dropout: bool = False) -> float:
        """Squared reconstruction error per pixel on ``images`` (default: the held-out set)."""
        images = self.valid_images if images is None else images
        with self.lock, no_grad():
            rec = self.model.reconstruct(images, dropout=dropout, seed=12345)
        return float(((rec - images) ** 2).mean())

    # -- divergence guard ----------------------------------------------------------------
    def _capture(self) -> dict:
        self._good_step = self.step_count
        if self.backend.name != "cpu":   # device copies: no host round trip
            return {"params": {k: p.data.copy() for k, p in self.model.params.items()},
                    "optimizer": self.optimizer.state_dict(to_host=False),
                    "stream": self.stream.get_state(), "order": self._order.copy(),
                    "pos": self._pos}
        return {"params": {k: p.data.copy() for k, p in self.model.params.items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "stream": self.stream.get_state(), "order": self._order.copy(),
                "pos": self._pos}

    def _rollback(self, reason: str) -> dict:
        good = self._good
        if self._graph is not None:
            self._graph.drop()                  # the optimizer's arrays are rebound below
        for k, p in self.model.params.items():
            p.data[...] = good["params"][k]
        self.optimizer.load_state_dict(copy.deepcopy(good["optimizer"]))
        # Keep earlier cuts: the restored state carries the old scale (see scale_step_sizes).
        cuts = sum(1 for _ in self.events) + 1
        self.optimizer.step_scale = 1.0
        self.optimizer.scale_step_sizes(self.config.nan_step_cut ** cuts
                                        * self.config.plateau_cut ** self.step_cuts)
        self.stream.set_state(good["stream"])
        self._order, self._pos = good["order"].copy(), good["pos"]
        event = {"step": self.step_count, "reason": reason, "step_scale": self.optimizer.step_scale}
        self.events.append(event)
        return {"rollback": 1, "rollback_reason": reason}

    def graph_info(self) -> dict | None:
        """The CUDA graph's record (captures, replays, why not used), None without one."""
        return None if self._graph is None else self._graph.info()

    # -- views ---------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Numpy copies for a live view: templates, a few held-out reconstructions, metrics."""
        with self.lock:
            images = (self.valid_images if self.valid_images is not None else self.train_images)
            images = images[:SNAPSHOT_IMAGES]
            with no_grad():
                rec = self.model.reconstruct(images)
            return {"step": self.step_count, "images_seen": self.images_seen,
                    "templates": self.model.templates(), "originals": images.copy(),
                    "reconstructions": rec,
                    "rule_fractions": dict(self.optimizer.last_rule_fractions),
                    "metrics": dict(self.last_metrics), "events": list(self.events)}

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, meta): everything a bit-exact resume needs, ready for ``save_checkpoint``."""
        with self.lock:
            arrays = self.model.state_arrays()
            opt_arrays, opt_scalars = split_arrays(self.optimizer.state_dict())
            arrays.update({f"opt/{k}": v for k, v in opt_arrays.items()})
            arrays["data/order"] = np.asarray(self._order, dtype=np.int64)
            meta = {"kind": "capsule-trainer", "config": self.config.to_dict(),
                    "model": self.model.kind, "seed": self.seed, "step": self.step_count,
                    "images_seen": self.images_seen, "optimizer_name": self.optimizer_name,
                    "optimizer": opt_scalars, "stream": self.stream.get_state(),
                    "data_pos": self._pos, "events": self.events,
                    "plateau": {"best": self._plateau_best, "waited": self._plateau_waited,
                                "cuts": self.step_cuts}}
            return arrays, meta

    def load_state_dict(self, arrays: dict, meta: dict) -> None:
        with self.lock:
            if meta.get("model") != self.model.kind:
                raise ValueError(f"checkpoint holds a {meta.get('model')!r} model, "
                                 f"this trainer has {self.model.kind!r}")
            self.model.load_state_arrays(arrays)
            opt = dict(meta["optimizer"])
            opt.update({k[len("opt/"):]: v for k, v in arrays.items() if k.startswith("opt/")})
            self.optimizer.load_state_dict(opt)
            try:
                self.stream.set_state(meta["stream"])
            except ValueError:
                # a GPU run resumed on the CPU: a stream keyed by the saved (seed, draws),
                # deterministic but not the continuation (exact resume is a CPU-only promise)
                st = meta["stream"]
                key = np.random.SeedSequence([int(st["seed"]), int(st.get("draws", 0))])
                self.stream = RandomStream(int(key.generate_state(1)[0]), self.backend)
            self._order = np.asarray(arrays["data/order"])
            self._pos = int(meta["data_pos"])
            self.step_count = int(meta["step"])
            self.images_seen = int(meta.get("images_seen", 0))
            self.events = list(meta.get("events", []))
            plateau = meta.get("plateau", {})
            self._plateau_best = plateau.get("best")
            self._plateau_waited = int(plateau.get("waited", 0))
            self.step_cuts = int(plateau.get("cuts", 0))
            self._good = self._capture()
            if self._graph is not None:
                self._graph.drop()

    def save(self, path) -> Path:
        arrays, meta = self.state_dict()
        return save_checkpoint(path, arrays, meta)

    @classmethod
    def load(cls, path, train_images, valid_images=None, device="cpu",
             sync_every: int | None = None, graph: bool | None = None,
             overrides: dict | None = None) -> "CapsuleTrainer":
        """A trainer restored from checkpoint ``path`` (its config, seed and optimizer), on
        ``device`` (a checkpoint is device-neutral; exact resume is promised on the CPU).
        ``overrides``: schedule fields to change from here on (``RESUMABLE_FIELDS``)."""
        arrays, meta = load_checkpoint(path)
        config = CapsuleConfig.from_dict({**meta["config"],
                                          **resume_changes(meta["config"], overrides or {})})
        trainer = cls(config, train_images, valid_images, seed=meta["seed"],
                      optimizer=meta.get("optimizer_name"), device=device, sync_every=sync_every,
                      graph=graph)
        trainer.load_state_dict(arrays, meta)
        return trainer


def step_size_overrides(params: dict, optimizer: str, kwargs: dict, fan_in_ref: int = 0,
                        encoder_scale: float = 1.0) -> dict:
    """Per-parameter step sizes, as optimizer ``overrides``.

    ``fan_in_ref`` > 0: matrices with a wider fan-in get their step sizes scaled by
    ``fan_in_ref / fan_in`` (Adam; the conservative optimizer's rules 2-4, not rule 1's
    emergency cap). Such a step moves every weight into a unit by about the same amount,
    so the unit's input moves by ~fan_in times that: the thesis's 666-unit GPNNs then
    swing their poses far more per step than a 200-unit one (measured: held-out error
    stuck at the mean image's level for the thesis model at the default step sizes).

    ``encoder_scale``: every encoder parameter's step sizes times this (all of them, as
    a plateau cut does; any optimizer). Halving them from step 103,505 of the CPU's
    ``mnist-thesis`` run lowered the test error without stopping the 25-label error
    (session 15, ``capsules_runs_cpu.json``).
    """
    from lab.optim import DEFAULT_ALPHAS, OPTIMIZERS  # noqa: PLC0415
    out = {}
    for name, p in params.items():
        f = 1.0
        if fan_in_ref > 0 and optimizer in ("adam", "conservative") and p.ndim == 2 \
                and p.shape[0] > fan_in_ref:
            f = fan_in_ref / p.shape[0]
        s = float(encoder_scale) if name.startswith("encoder.") else 1.0
        if f == 1.0 and s == 1.0:
            continue
        if optimizer == "conservative":
            a1, a2, a3, a4 = (float(a) for a in kwargs.get("alphas", DEFAULT_ALPHAS))
            out[name] = {"alphas": (a1 * s, a2 * f * s, a3 * f * s, a4 * f * s)}
        elif optimizer in OPTIMIZERS:
            default = inspect.signature(OPTIMIZERS[optimizer]).parameters["lr"].default
            out[name] = {"lr": float(kwargs.get("lr", default)) * f * s}
    return out


def write_jsonl(path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
