"""Thin adapters from the lab's trainers to the session protocol (``lab.session.protocol``).

``CapsuleSessionTrainer`` wraps ``lab.capsules.trainer.CapsuleTrainer`` (chapter 2);
``RBMSessionTrainer`` wraps ``lab.undirected.BinaryRBM.partial_fit`` on freshly
binarised MNIST minibatches (chapter 3, thesis 3.3.2). Both add to the snapshot what
the views need and nothing the training loop would not compute anyway: the capsule
adapter adds the parameters (so a view renders through a private copy of the model,
``lab.session.viewers``), the RBM adapter the fantasy particles and fast weights.
Their evaluation randomness (AIS, binarising held-out data) comes from streams of
their own, so evaluating never changes the training stream.
"""
from __future__ import annotations

import math
import time

import numpy as np

from lab.backend import RandomStream, to_numpy

#: How many held-out images the capsule views (explorer, mixture) get to choose from.
VIEW_IMAGES = 64


def capsules_available() -> tuple[bool, str]:
    """(True, "") when the capsule trainer can be imported, else (False, why)."""
    try:
        from lab.capsules.configs import get_config  # noqa: F401, PLC0415
        from lab.capsules.trainer import CapsuleTrainer  # noqa: F401, PLC0415
    except Exception as exc:  # noqa: BLE001  (missing or half-written package)
        return False, f"lab.capsules is not available ({type(exc).__name__}: {exc})"
    return True, ""


def rbm_available() -> tuple[bool, str]:
    try:
        from lab.undirected import BinaryRBM  # noqa: F401, PLC0415
    except Exception as exc:  # noqa: BLE001
        return False, f"lab.undirected.BinaryRBM is not available ({type(exc).__name__}: {exc})"
    return True, ""


# ---------------------------------------------------------------------------------------
class CapsuleSessionTrainer:
    """``CapsuleSessionTrainer("mnist-quick", seed=0, **config_overrides)``.

    Steps are ``CapsuleTrainer.step()``; the snapshot is ``CapsuleTrainer.snapshot()``
    plus ``params`` (the model's arrays), ``viewer`` (how to rebuild the model) and
    ``view_images`` (fixed held-out images for the explorer and mixture views).
    """

    def __init__(self, config="mnist-quick", seed: int = 0, data_path=None,
                 trainer=None, **overrides):
        from lab.capsules.configs import CapsuleConfig, get_config  # noqa: PLC0415
        from lab.capsules.data import load_data  # noqa: PLC0415
        from lab.capsules.trainer import CapsuleTrainer  # noqa: PLC0415
        if isinstance(config, dict):
            config = CapsuleConfig.from_dict({**config, **overrides})
        elif isinstance(config, str):
            config = get_config(config, **overrides)
        self.config = config
        self.seed = int(seed)
        if trainer is None:
            data = load_data(config, data_path)
            train, valid = data["train"][0], data["valid"][0]
            trainer = CapsuleTrainer(config, train, valid, seed=self.seed)
        self.trainer = trainer
        images = trainer.valid_images if trainer.valid_images is not None else trainer.train_images
        self.view_images = np.array(images[:VIEW_IMAGES], dtype=np.float32)

    @property
    def metadata(self) -> dict:
        return {"kind": "capsules", "config": self.config.to_dict(), "seed": self.seed}

    @classmethod
    def from_metadata(cls, meta: dict) -> "CapsuleSessionTrainer":
        return cls(dict(meta["config"]), seed=int(meta.get("seed", 0)))

    @property
    def step_count(self) -> int:
        return int(self.trainer.step_count)

    @property
    def model(self):
        return self.trainer.model

    def step(self) -> dict:
        return self.trainer.step()

    def snapshot(self) -> dict:
        snap = dict(self.trainer.snapshot())
        snap.pop("metrics", None)  # the session publishes its own copy of the metrics
        snap["params"] = self.trainer.model.state_arrays()
        snap["viewer"] = {"kind": "capsules", "config": self.config.to_dict()}
        snap["view_images"] = self.view_images
        return snap

    def state_dict(self):
        return self.trainer.state_dict()

    def load_state_dict(self, arrays, meta) -> None:
        self.trainer.load_state_dict(arrays, meta)


# ---------------------------------------------------------------------------------------
class RBMSessionTrainer:
    """``RBMSessionTrainer(algorithm="fpcd", n_hidden=16, batch_size=100, seed=0, ...)``.

    One step = ``BinaryRBM.partial_fit`` on a minibatch of MNIST binarised afresh
    (``lab.data.binarize``, thesis 3.3.2). Every ``eval_every`` steps the mean
    log-likelihood of fixed binarised held-out (and training) images is measured with
    ``score_samples(method=eval_method)``: ``"exact"`` enumerates 2**n_hidden states
    (0.3 s for 16 hidden units on a 2-core CPU, minutes for 25), so larger RBMs default
    to ``"ais"`` with a fixed seed of its own (never the training stream).
    """

    def __init__(self, algorithm: str = "fpcd", n_hidden: int = 16, batch_size: int = 100,
                 learning_rate: float | None = None, seed: int = 0, eval_every: int = 100,
                 eval_method: str | None = None, n_eval: int = 500, n_train: int | None = 10000,
                 data_path=None, images=None, rbm_kwargs: dict | None = None):
        from lab.undirected import BinaryRBM  # noqa: PLC0415
        self.algorithm, self.n_hidden, self.batch_size = algorithm, int(n_hidden), int(batch_size)
        self.learning_rate, self.seed, self.eval_every = learning_rate, int(seed), int(eval_every)
        self.eval_method = eval_method or ("exact" if self.n_hidden <= 20 else "ais")
        self.n_eval, self.n_train = int(n_eval), n_train
        self.rbm_kwargs = dict(rbm_kwargs or {})
        if images is None:
            from lab.data import mnist_splits  # noqa: PLC0415
            splits = mnist_splits(data_path)
            train, valid = splits["train"][0], splits["valid"][0]
        else:
            train, valid = images
        train = np.asarray(train)
        if n_train is not None:
            train = train[:int(n_train)]
        self.shape = tuple(train.shape[1:])
        self.train = train.reshape(len(train), -1)
        self.valid = np.asarray(valid).reshape(len(valid), -1)
        kwargs = dict(n_hidden=self.n_hidden, algorithm=algorithm, batch_size=self.batch_size,
                      random_state=self.seed, **self.rbm_kwargs)
        if learning_rate is not None:
            kwargs["learning_rate"] = learning_rate
        self.rbm = BinaryRBM(**_accepted(BinaryRBM, kwargs))
        self.stream = RandomStream(self.seed + 1)       # data order and binarisation
        eval_stream = RandomStream(self.seed + 2)       # fixed evaluation samples
        from lab.data import binarize  # noqa: PLC0415
        self._binarize = binarize
        self.eval_valid = to_numpy(binarize(self.valid[:self.n_eval], eval_stream)).astype(np.float32)
        self.eval_train = to_numpy(binarize(self.train[:self.n_eval], eval_stream)).astype(np.float32)
        self._order = self.stream.permutation(len(self.train))
        self._pos = 0
        self.step_count = 0
        self.last_eval: dict = {}

    @property
    def metadata(self) -> dict:
        return {"kind": "rbm", "algorithm": self.algorithm, "n_hidden": self.n_hidden,
                "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "seed": self.seed, "eval_every": self.eval_every, "eval_method": self.eval_method,
                "n_eval": self.n_eval, "n_train": self.n_train, "rbm_kwargs": self.rbm_kwargs}

    @classmethod
    def from_metadata(cls, meta: dict) -> "RBMSessionTrainer":
        keys = ("algorithm", "n_hidden", "batch_size", "learning_rate", "seed", "eval_every",
                "eval_method", "n_eval", "n_train", "rbm_kwargs")
        return cls(**{k: meta[k] for k in keys if k in meta})

    def _batch(self) -> np.ndarray:
        if self._pos + self.batch_size > len(self._order):
            self._order = self.stream.permutation(len(self.train))
            self._pos = 0
        idx = self._order[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return self._binarize(self.train[idx], self.stream)

    def step(self) -> dict:
        t0 = time.perf_counter()
        X = self._batch()
        self.rbm.partial_fit(X)
        self.step_count += 1
        W = to_numpy(self.rbm.components_)
        metrics = {"weight_norm": float(np.sqrt((W ** 2).mean()))}
        fast = self.fast_weights()
        if fast is not None:
            metrics["fast_magnitude"] = float(np.abs(fast).mean())
        metrics["recon_error"] = self._recon_error(to_numpy(X))
        if self.eval_every > 0 and (self.step_count % self.eval_every == 0 or self.step_count == 1):
            metrics.update(self.evaluate())
        metrics["seconds"] = time.perf_counter() - t0
        return metrics

    def _recon_error(self, X: np.ndarray) -> float:
        """Mean squared error of a mean-field up-down pass (a cheap progress signal)."""
        W = to_numpy(self.rbm.components_)
        bh = to_numpy(getattr(self.rbm, "intercept_hidden_", np.zeros(W.shape[0])))
        bv = to_numpy(getattr(self.rbm, "intercept_visible_", np.zeros(W.shape[1])))
        h = 1 / (1 + np.exp(-(X @ W.T + bh)))
        v = 1 / (1 + np.exp(-(h @ W + bv)))
        return float(((v - X) ** 2).mean())

    def evaluate(self) -> dict:
        out = {}
        kwargs = {}
        if self.eval_method == "ais":
            kwargs = {"n_runs": 20, "betas": np.linspace(0.0, 1.0, 1000),
                      "random_state": self.seed + 3}
        for name, X in (("loglik_valid", self.eval_valid), ("loglik_train", self.eval_train)):
            scores = self.rbm.score_samples(X, method=self.eval_method, **kwargs)
            value = float(np.mean(to_numpy(scores)))
            if math.isfinite(value):
                out[name] = value
        self.last_eval = dict(out)
        return out

    def fast_weights(self) -> np.ndarray | None:
        """The FPCD fast overlay on the weights (None for other algorithms)."""
        for name in ("fast_components_", "fast_weights_", "W_fast_", "fast_W_"):
            value = getattr(self.rbm, name, None)
            if value is not None:
                return to_numpy(value)
        return None

    def snapshot(self) -> dict:
        if not hasattr(self.rbm, "components_"):     # the RBM initialises on its first update
            return {"step": self.step_count, "image_shape": self.shape, "algorithm": self.algorithm}
        W = to_numpy(self.rbm.components_)
        snap = {"step": self.step_count, "image_shape": self.shape,
                "filters": W[:64].reshape((-1,) + self.shape),
                "algorithm": self.algorithm}
        particles = getattr(self.rbm, "fantasy_particles_", None)
        if particles is not None:
            p = to_numpy(particles)
            snap["fantasy"] = p[:64].reshape((-1,) + self.shape)
        fast = self.fast_weights()
        if fast is not None:
            snap["fast_filters"] = fast[:64].reshape((-1,) + self.shape)
            snap["fast_magnitude"] = float(np.abs(fast).mean())
        return snap

    # -- state: every learned attribute (sklearn's trailing underscore) --------------------
    #: Private RBM attributes a bit-exact resume also needs (momentum, AIS base rate).
    _PRIVATE = ("_visible_sum", "_n_seen", "_velocity")

    def state_dict(self):
        arrays, meta = {}, {"step": self.step_count, "pos": self._pos,
                            "stream": self.stream.get_state(), "rbm": {}, **self.metadata}
        arrays["data/order"] = np.asarray(self._order, dtype=np.int64)
        if hasattr(self.rbm, "state_dict"):        # the estimator's own, when it has one
            rbm_arrays, rbm_meta = self.rbm.state_dict()
            arrays.update({f"rbm/{k}": np.array(to_numpy(v), copy=True) for k, v in rbm_arrays.items()})
            meta["rbm_own"] = rbm_meta
            return arrays, meta
        for name, value in vars(self.rbm).items():
            if not (name.endswith("_") or name in self._PRIVATE) or name.startswith("__"):
                continue
            if isinstance(value, RandomStream):
                meta["rbm"][name] = {"__stream__": value.get_state()}
            elif isinstance(value, list) and all(hasattr(v, "shape") for v in value):
                for i, v in enumerate(value):
                    arrays[f"rbmlist/{name}/{i}"] = np.array(to_numpy(v), copy=True)
                meta["rbm"][name] = {"__list__": len(value)}
            elif hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, np.generic):
                arrays[f"rbm/{name}"] = np.array(to_numpy(value), copy=True)
            elif value is None or isinstance(value, (bool, int, float, str, np.generic)):
                meta["rbm"][name] = value.item() if isinstance(value, np.generic) else value
        return arrays, meta

    def load_state_dict(self, arrays, meta) -> None:
        if "rbm_own" in meta and hasattr(self.rbm, "load_state_dict"):
            self.rbm.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("rbm/")},
                                     meta["rbm_own"])
        else:
            if "rbm/components_" in arrays and not hasattr(self.rbm, "components_"):
                # create the estimator's working state (locks, streams, buffers), then overwrite
                self.rbm._initialize(int(arrays["rbm/components_"].shape[1]))
            for key, value in arrays.items():
                if key.startswith("rbm/"):
                    name = key[len("rbm/"):]
                    setattr(self.rbm, name, _to_like(value, getattr(self.rbm, name, None)))
            for name, value in meta.get("rbm", {}).items():
                if isinstance(value, dict) and "__stream__" in value:
                    stream = getattr(self.rbm, name, None)
                    if isinstance(stream, RandomStream):
                        stream.set_state(value["__stream__"])   # same object: others hold it
                elif isinstance(value, dict) and "__list__" in value:
                    old = getattr(self.rbm, name, None) or [None] * value["__list__"]
                    setattr(self.rbm, name, [_to_like(arrays[f"rbmlist/{name}/{i}"], old[i])
                                             for i in range(value["__list__"])])
                else:
                    setattr(self.rbm, name, value)
        self._order = np.asarray(arrays["data/order"])
        self._pos = int(meta["pos"])
        self.stream.set_state(meta["stream"])
        self.step_count = int(meta["step"])


def _to_like(value, like):
    if like is not None and type(like).__module__.startswith("cupy"):
        import cupy  # noqa: PLC0415
        return cupy.asarray(value)
    return np.array(value)


def _accepted(cls, kwargs: dict) -> dict:
    """Only the keyword arguments ``cls`` takes (the RBM's signature is its source of truth)."""
    import inspect  # noqa: PLC0415
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}
