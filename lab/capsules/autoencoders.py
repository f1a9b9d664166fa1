"""The three capsule autoencoders of thesis chapter 2.

- ``ACAutoencoder`` (fig 2.6): the encoder gives every AC its iGeoNice pose in the
  world directly; no CCs.
- ``SingleCCAutoencoder`` (2.7, faces): one CC: CC-in-world iGeoNice pose plus
  distortion values; the CC's learned function turns the distortions into AC-in-CC
  poses (fig 2.7).
- ``MixtureOfCCsAutoencoder`` (fig 2.12, MNIST): C CCs, each with its own pose and
  distortions, and the manager's preferences {x_i}; the RMM gives {y_i}; the
  selected pose p* = Σ_i y_i p_i (geometry, intensity and distortions) and {y_i} go
  into one shared CCR, so only one CC is rendered.

Shared by all three (``CapsuleAutoencoder``): the GPNN encoder (2.2); the code
layer = encoder output + a fixed offset holding the default pose (identity geometry,
intensity 1), so the code decay of 2.4.5 pulls towards the default pose; the
training loss = squared error summed over pixels, averaged over cases, plus the
regularizers of 2.4 (``lab.capsules.regularizers``); the public API
``encode``/``decode``/``reconstruct``/``contributions`` on numpy images in [0, 1].

Evaluation "without dropout" (2.6.2) means: no dropout on hidden units, outgoing
weights halved (``GPNN``), distortions *not* halved, and the manager without noise.

Device: ``build_model(config, backend=get_backend("gpu"))`` initialises the parameters
exactly as on the CPU (numpy, same seed) and then moves them to CuPy; ``forward`` and
``loss`` take numpy or device images, and the numpy API (``encode``, ``decode``, ...)
returns numpy whatever the device. The GPU path's losses and gradients were
checked on an H100 by ``benchmarks/gpu_check.py`` (``benchmarks/results/gpu_h100.json``).
"""
from __future__ import annotations

import abc

import numpy as np

from lab.autodiff import (Tensor, concatenate, dropout, getitem, no_grad, reshape,
                          softplus10)
from lab.autodiff import sum as tsum
from lab.backend import CPU, DEFAULT_FLOAT, Backend, RandomStream, to_numpy
from lab.capsules import regularizers as reg
from lab.capsules.acr import ACR
from lab.capsules.ccr import CCR, initial_ac_poses
from lab.capsules.code import CapsuleCode
from lab.capsules.configs import CapsuleConfig
from lab.capsules.depth import render_output
from lab.capsules.gpnn import GPNN
from lab.capsules.managers import RMM
from lab.capsules.poses import default_nice, intensity_raw_for, nice_to_igeo

_ALL = slice(None)


def _cols(t: Tensor, start: int, stop: int) -> Tensor:
    return getitem(t, (_ALL, slice(start, stop)))


class CapsuleAutoencoder(abc.ABC):
    """Base class. ``params``: ``{name: Tensor}`` of every learned array, in a fixed order."""

    kind = "base"
    backend: Backend = CPU

    def __init__(self, config: CapsuleConfig, seed: int = 0, dtype=DEFAULT_FLOAT,
                 backend: Backend | None = None):
        self.config = config
        self.dtype = dtype
        self._offset_cache = None
        self.image_shape = (config.image_size, config.image_size)
        self.n_pixels = config.image_size ** 2
        rng = np.random.default_rng(seed)
        self.code_offset = self._code_offset(rng).astype(dtype)
        self.encoder = GPNN(self.n_pixels, config.encoder_hidden, self.code_offset.size,
                            dropout=config.dropout, rng=rng, out_scale=config.encoder_out_init,
                            dtype=dtype,
                            prefix="encoder")
        self._build_decoder(rng)
        self.params: dict[str, Tensor] = {**self.encoder.params, **self._decoder_params()}
        self.full_size_det = reg.full_size_determinant(config.template_size, self.image_shape)
        if backend is not None and backend.name != "cpu":
            self.to(backend)

    def to(self, backend: Backend) -> "CapsuleAutoencoder":
        """Move every parameter to ``backend`` (in place: the Tensors keep their identity,
        so submodules and optimizers built later see the moved arrays)."""
        for p in self.params.values():
            p.data = backend.asarray(p.data, dtype=p.dtype)
        self.backend = backend
        self._offset_cache = None
        return self

    def _device_images(self, images, dtype):
        """Images as an array on the model's device (numpy input on the CPU unchanged)."""
        if self.backend.name == "cpu":
            return np.asarray(to_numpy(images), dtype=dtype)
        return self.backend.asarray(images, dtype=dtype)

    def _offset(self, x: Tensor) -> Tensor:
        """The code offset on ``x``'s device and dtype, uploaded once (not every step)."""
        key = (x.xp.__name__, x.dtype)
        if self._offset_cache is None or self._offset_cache[0] != key:
            self._offset_cache = (key, Tensor(x.xp.asarray(self.code_offset, dtype=x.dtype)))
        return self._offset_cache[1]

    # -- what subclasses define ------------------------------------------------------
    @abc.abstractmethod
    def _code_offset(self, rng) -> np.ndarray:
        ...

    @abc.abstractmethod
    def _build_decoder(self, rng) -> None:
        ...

    @abc.abstractmethod
    def _decoder_params(self) -> dict[str, Tensor]:
        ...

    @abc.abstractmethod
    def _split_code(self, v: Tensor, train: bool, stream) -> dict:
        """Encoder output + offset -> ``{"mixture", "logits", "poses", "distortions"}`` Tensors."""

    @abc.abstractmethod
    def _render(self, code: dict, train: bool, stream, component: int | None = None) -> dict:
        """Code Tensors -> ``{"output" (B,H,W), "contributions", "matrices", "intensities", ...}``."""

    # -- the differentiable pipeline -----------------------------------------------------
    def forward(self, images, train: bool = False, stream: RandomStream | None = None) -> dict:
        """Images (B,H,W) or (B,P) array/Tensor -> dict of Tensors (code parts and rendering)."""
        x = images if isinstance(images, Tensor) else Tensor(self._device_images(images, self.dtype))
        x = reshape(x, (x.shape[0], self.n_pixels))
        out = self.decode_raw(self.encoder.forward(x, train=train, stream=stream), train, stream)
        out["input"] = x
        return out

    def decode_raw(self, raw: Tensor, train: bool = False, stream: RandomStream | None = None,
                   mixture: Tensor | None = None) -> dict:
        """The decoder half of ``forward``: the encoder's output ``raw`` (B, code size) ->
        code Tensors and their rendering. ``mixture`` (B, C) replaces the manager's {y_i}
        (``analysis.code_search`` keeps the encoder's choice of CC)."""
        code = self._split_code(raw + self._offset(raw), train, stream)
        if mixture is not None:
            code["mixture"] = mixture
        code["raw"] = raw
        out = self._render(code, train, stream)
        out.update(code)
        return out

    def loss(self, images, train: bool = True, stream: RandomStream | None = None,
             sync: bool = True):
        """``(loss Tensor, terms, out)``: squared error summed over pixels and averaged over
        cases plus the 2.4 regularizers; ``terms`` their float values (and
        ``recon_per_pixel``); ``out`` the ``forward`` dict.

        ``sync=False`` leaves ``terms`` as 0-d arrays on the device (no
        ``recon_per_pixel``): reading a float from the GPU waits for it, so the trainer
        converts them all at once, and only on the steps it logs."""
        c = self.config
        out = self.forward(images, train=train, stream=stream)
        B = out["input"].shape[0]
        diff = reshape(out["output"], (B, self.n_pixels)) - out["input"]
        sq = tsum(diff * diff) * (1.0 / B)
        terms = {"recon": sq}
        if c.weight_decay > 0:
            terms["weight_decay"] = reg.weight_decay(self.params.values(), c.weight_decay)
        if c.determinant_alpha > 0:
            terms["determinant"] = reg.determinant_penalty(out["matrices"], self.full_size_det,
                                                           c.determinant_alpha)
        if c.usage_alpha > 0 and out.get("mixture") is not None and out["mixture"].shape[1] > 1:
            terms["usage"] = reg.mixture_usage(out["mixture"], c.usage_alpha)
        if c.code_decay > 0:
            terms["code_decay"] = reg.code_decay([out["raw"]], c.code_decay)
        total = None
        for t in terms.values():
            total = t if total is None else total + t
        if not sync:
            return total, {k: v.data for k, v in terms.items()}, out
        values = {k: float(v.item()) for k, v in terms.items()}
        values["recon_per_pixel"] = values["recon"] / self.n_pixels
        return total, values, out

    # -- numpy API ---------------------------------------------------------------------
    def _images(self, images) -> np.ndarray:
        a = to_numpy(images)
        if a.dtype == np.uint8:
            a = a.astype(self.dtype) / 255.0
        a = a.astype(self.dtype, copy=False)
        if a.ndim == 2 and a.shape != self.image_shape:  # (N, P)
            a = a.reshape(-1, *self.image_shape)
        if a.ndim == 2:
            a = a[None]
        if a.shape[1:] != self.image_shape:
            raise ValueError(f"images have shape {a.shape}, expected (N, {self.image_shape[0]}, "
                             f"{self.image_shape[1]}) for this model")
        return a

    def _batched(self, images, fn, batch_size: int = 500):
        a = self._images(images)
        parts = [fn(a[i:i + batch_size]) for i in range(0, len(a), batch_size)]
        if not parts:
            raise ValueError("no images given")
        return parts

    def encode(self, images, batch_size: int = 500) -> CapsuleCode:
        """The code (``CapsuleCode``, numpy) of ``images`` (N,H,W) uint8 or floats in [0, 1],
        deterministic (test-time network, no dropout, no manager noise)."""
        def one(a):
            with no_grad():
                out = self.forward(a, train=False)
            return self._to_code(out)
        parts = self._batched(images, one, batch_size)
        return _concat_codes(parts)

    def decode(self, code: CapsuleCode, component: int | None = None,
               return_details: bool = False):
        """Render ``code`` (its primary fields) to images (N,H,W) in numpy.

        ``component`` renders every case with mixture component ``component`` instead
        of the manager's choice (fig 2.19). ``return_details`` also returns the
        per-AC contributions, matrices and intensities.
        """
        t = self._code_tensors(code)
        with no_grad():
            out = self._render(t, train=False, stream=None, component=component)
        images = out["output"].numpy()
        if not return_details:
            return images
        return images, {k: out[k].numpy() for k in ("contributions", "matrices", "intensities")}

    def reconstruct(self, images, dropout: bool = False, seed: int = 0,
                    batch_size: int = 500) -> np.ndarray:
        """Reconstructions (N,H,W). ``dropout=True``: the training-time network (dropout
        on hidden units and distortions, manager noise) with a stream seeded ``seed``."""
        stream = RandomStream(seed, self.backend) if dropout else None

        def one(a):
            with no_grad():
                return self.forward(a, train=dropout, stream=stream)["output"].numpy()
        return np.concatenate(self._batched(images, one, batch_size))

    def contributions(self, images, batch_size: int = 500,
                      keys=("output", "contributions", "matrices", "intensities")) -> dict[str, np.ndarray]:
        """Fig 2.14: ``output`` (N,H,W) and every AC's ``contributions`` (N,K,H,W), plus
        ``matrices`` (N,K,3,3) and ``intensities`` (N,K,M), test-time network (``keys``:
        which of them)."""
        def one(a):
            with no_grad():
                out = self.forward(a, train=False)
            return {k: out[k].numpy() for k in keys}
        parts = self._batched(images, one, batch_size)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def render_world(self, matrices, intensities) -> np.ndarray:
        """Render ACs from AC-in-world iGeo poses directly: world -> template matrices
        (N,K,3,3) and intensities (N,K,M) -> images (N,H,W) (e.g. MFA means, fig 2.17)."""
        m = self._device_images(matrices, self.dtype)
        i = self._device_images(intensities, self.dtype).reshape(m.shape[0], m.shape[1], -1)
        with no_grad():
            return render_output(self.acs, Tensor(m), Tensor(i), self.config.output_kind)["output"].numpy()

    def templates(self) -> np.ndarray:
        """The non-negative learned templates (K, M, T, T) (fig 2.15)."""
        with no_grad():
            return self.acs.templates().numpy()

    # -- conversions -------------------------------------------------------------------
    def _to_code(self, out: dict) -> CapsuleCode:
        def np_(k):
            v = out.get(k)
            return None if v is None else v.numpy().copy()
        return CapsuleCode(mixture=np_("mixture"), poses=np_("poses"),
                           distortions=np_("distortions"), logits=np_("logits"),
                           ac_poses=np_("ac_poses"), ac_matrices=np_("matrices"),
                           ac_intensities=np_("intensities"))

    def _code_tensors(self, code: CapsuleCode) -> dict:
        def t(a):
            return None if a is None else Tensor(self._device_images(a, self.dtype))
        return {"mixture": t(code.mixture), "poses": t(code.poses),
                "distortions": t(code.distortions), "logits": t(code.logits)}

    # -- state -------------------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Every learned array (numpy copies) plus the fixed code offset."""
        d = {f"param/{k}": v.numpy().copy() for k, v in self.params.items()}
        d["const/code_offset"] = self.code_offset.copy()
        return d

    def load_state_arrays(self, arrays: dict) -> None:
        for k, p in self.params.items():
            a = arrays.get(f"param/{k}")
            if a is None:
                raise KeyError(f"checkpoint has no parameter {k!r}")
            if a.shape != p.data.shape:
                raise ValueError(f"parameter {k!r}: checkpoint shape {a.shape}, model {p.data.shape}")
            p.data[...] = p.xp.asarray(a, dtype=p.dtype)
        if "const/code_offset" in arrays:
            self.code_offset = np.asarray(arrays["const/code_offset"], dtype=self.dtype)
            self._offset_cache = None

    def _modules(self) -> list:
        mods = [self.encoder, self.acs]
        if hasattr(self, "ccr"):
            mods.append(self.ccr.pose_fn)
        return mods

    def bind_params(self, tensors: dict) -> None:
        """Use the given Tensors as parameters (same names and shapes), e.g. the leaves of
        a gradient check; ``params`` and every submodule see the new objects."""
        for name, t in tensors.items():
            if name not in self.params:
                raise KeyError(f"unknown parameter {name!r}")
            for mod in self._modules() + ([self.ccr] if hasattr(self, "ccr") else []):
                if name in mod.params:
                    mod.params[name] = t
            self.params[name] = t

    def n_parameters(self) -> int:
        return int(sum(p.size for p in self.params.values()))


def _concat_codes(parts: list[CapsuleCode]) -> CapsuleCode:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    fields = {}
    for name, value in first.as_dict().items():
        fields[name] = np.concatenate([getattr(p, name) for p in parts])
    return CapsuleCode(**fields)


class ACAutoencoder(CapsuleAutoencoder):
    """Fig 2.6: every AC's iGeoNice pose in the world comes from the encoder."""

    kind = "ac"

    def _code_offset(self, rng) -> np.ndarray:
        c = self.config
        poses = initial_ac_poses(c.n_acs, c.n_channels, c.template_size, self.image_shape,
                                 c.ac_spread, rng)
        return poses.reshape(-1)

    def _build_decoder(self, rng) -> None:
        c = self.config
        self.acs = ACR(c.n_acs, c.template_size, self.image_shape, c.n_channels,
                       depth=c.output_kind == "explicit_depth", rng=rng, dtype=self.dtype)

    def _decoder_params(self):
        return dict(self.acs.params)

    def _split_code(self, v, train, stream):
        c = self.config
        B, K, M = v.shape[0], c.n_acs, c.n_channels
        raw = reshape(v, (B, K, M + 6))
        poses = concatenate([softplus10(getitem(raw, (_ALL, _ALL, slice(0, M)))),
                             getitem(raw, (_ALL, _ALL, slice(M, M + 6)))], axis=2)
        ones = Tensor(v.xp.ones((B, 1), dtype=v.dtype))
        return {"mixture": ones, "logits": None, "poses": poses,
                "distortions": Tensor(v.xp.zeros((B, 1, 0), dtype=v.dtype))}

    def _render(self, code, train, stream, component=None):
        M = self.config.n_channels
        poses = code["poses"]
        matrices, intensities = nice_to_igeo(poses, M)
        out = render_output(self.acs, matrices, intensities, self.config.output_kind)
        out.update(matrices=matrices, intensities=intensities, ac_poses=poses)
        return out


class SingleCCAutoencoder(CapsuleAutoencoder):
    """Thesis 2.7: one CC whose pose is CC-in-world iGeoNice plus distortion values."""

    kind = "single_cc"
    n_manager_inputs = 0

    def _cc_default(self) -> np.ndarray:
        pose = np.zeros(7)
        pose[0] = intensity_raw_for(1.0)
        pose[1:] = default_nice(None, self.image_shape, (0.0, 0.0))
        return pose

    def _code_offset(self, rng) -> np.ndarray:
        return np.concatenate([self._cc_default(), np.zeros(self.config.n_distortions)])

    def _build_decoder(self, rng) -> None:
        c = self.config
        self.ccr = CCR(c.n_distortions, c.n_acs, c.template_size, self.image_shape,
                       c.decoder_hidden, n_components=self.n_manager_inputs,
                       n_channels=c.n_channels, output_kind=c.output_kind, spread=c.ac_spread,
                       y_weight_scale=c.decoder_y_init, rng=rng, dtype=self.dtype)
        self.acs = self.ccr.acs

    def _decoder_params(self):
        return dict(self.ccr.params)

    def _split_code(self, v, train, stream):
        B, D = v.shape[0], self.config.n_distortions
        poses = concatenate([softplus10(_cols(v, 0, 1)), _cols(v, 1, 7)], axis=1)
        return {"mixture": Tensor(v.xp.ones((B, 1), dtype=v.dtype)), "logits": None,
                "poses": reshape(poses, (B, 1, 7)),
                "distortions": reshape(_cols(v, 7, 7 + D), (B, 1, D))}

    def _drop_distortions(self, d, train, stream):
        rate = self.config.distortion_dropout
        if train and rate > 0 and d.shape[1] > 0:
            return dropout(d, rate, stream)  # never rescaled, never halved at test (2.6.2)
        return d

    def _render(self, code, train, stream, component=None):
        B, D = code["poses"].shape[0], self.config.n_distortions
        pose = reshape(code["poses"], (B, 7))
        dist = self._drop_distortions(reshape(code["distortions"], (B, D)), train, stream)
        ac = self.ccr.ac_poses(dist, None)
        out = self.ccr.render(pose, ac)
        out["ac_poses"] = ac
        return out


class MixtureOfCCsAutoencoder(SingleCCAutoencoder):
    """Fig 2.12: C CCs, the RMM, p* = Σ y_i p_i, and one shared CCR fed (distortion*, y)."""

    kind = "mixture"

    @property
    def n_manager_inputs(self) -> int:
        return self.config.n_components

    def _code_offset(self, rng) -> np.ndarray:
        C, D = self.config.n_components, self.config.n_distortions
        cc = self._cc_default()
        return np.concatenate([np.zeros(C), np.repeat(cc[:1], C), np.tile(cc[1:], C),
                               np.zeros(C * D)])

    def _build_decoder(self, rng) -> None:
        super()._build_decoder(rng)
        self.manager = RMM(self.config.manager_noise)

    def _split_code(self, v, train, stream):
        C, D, B = self.config.n_components, self.config.n_distortions, v.shape[0]
        logits = _cols(v, 0, C)
        intensity = reshape(softplus10(_cols(v, C, 2 * C)), (B, C, 1))
        nice = reshape(_cols(v, 2 * C, 8 * C), (B, C, 6))
        dist = reshape(_cols(v, 8 * C, 8 * C + C * D), (B, C, D))
        y = self.manager(logits, train=train, stream=stream)
        return {"mixture": y, "logits": logits, "poses": concatenate([intensity, nice], axis=2),
                "distortions": dist}

    def _render(self, code, train, stream, component=None):
        C, D = self.config.n_components, self.config.n_distortions
        y, poses, dist = code["mixture"], code["poses"], code["distortions"]
        B = poses.shape[0]
        if component is not None:
            onehot = np.zeros((B, C), dtype=self.dtype)
            onehot[:, int(component)] = 1.0
            y = Tensor(poses.xp.asarray(onehot))
        y3 = reshape(y, (B, C, 1))
        pose = tsum(poses * y3, axis=1)                     # p* = Σ_i y_i p_i (fig 2.12)
        dstar = tsum(dist * y3, axis=1) if D > 0 else Tensor(poses.xp.zeros((B, 0), dtype=poses.dtype))
        dstar = self._drop_distortions(dstar, train, stream)
        ac = self.ccr.ac_poses(dstar, y)
        out = self.ccr.render(pose, ac)
        out["ac_poses"] = ac
        return out


MODELS = {"ac": ACAutoencoder, "single_cc": SingleCCAutoencoder, "mixture": MixtureOfCCsAutoencoder}


def build_model(config: CapsuleConfig, seed: int = 0, dtype=DEFAULT_FLOAT,
                backend: Backend | None = None) -> CapsuleAutoencoder:
    """The autoencoder that ``config.model`` names, initialised from ``seed`` (``dtype``
    float64 for gradient checks) on ``backend`` (default the CPU; the initial values do
    not depend on it)."""
    try:
        cls = MODELS[config.model]
    except KeyError:
        raise ValueError(f"unknown model kind {config.model!r}: expected one of {list(MODELS)}") from None
    return cls(config, seed=seed, dtype=dtype, backend=backend)
