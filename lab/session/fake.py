"""Small stand-in trainers: fast, seeded, deterministic. For tests, benchmarks and demos.

``FakeTrainer``: noisy gradient descent on a quadratic, with an optional amount of
real numpy work per step (``work``) so timing tests have something to slow down.
``FakeCapsuleTrainer``: the same protocol and snapshot keys as the capsule adapter
(templates, originals, reconstructions, params, rule fractions) with a toy model
whose ``encode``/``decode`` speak ``CapsuleCode``, so every capsule view can be tested
without training a real capsule autoencoder.
"""
from __future__ import annotations

import numpy as np

from lab.backend import RandomStream


class FakeTrainer:
    """``FakeTrainer(dim=64, seed=0, work=0, lr=0.05)``: a seeded toy trainer."""

    def __init__(self, dim: int = 64, seed: int = 0, work: int = 0, lr: float = 0.05,
                 fail_at: int | None = None):
        self.dim, self.seed, self.work, self.lr, self.fail_at = int(dim), int(seed), int(work), float(lr), fail_at
        self.stream = RandomStream(seed)
        self.target = self.stream.normal((dim,)).astype(np.float64)
        self.w = np.zeros(dim)
        self.step_count = 0
        side = int(np.ceil(np.sqrt(dim)))
        self._side = side
        if work:
            self._a = np.random.default_rng(seed).standard_normal((work, work)).astype(np.float32)

    @property
    def metadata(self) -> dict:
        return {"kind": "fake", "dim": self.dim, "seed": self.seed, "work": self.work, "lr": self.lr}

    @classmethod
    def from_metadata(cls, meta: dict) -> "FakeTrainer":
        return cls(dim=meta.get("dim", 64), seed=meta.get("seed", 0), work=meta.get("work", 0),
                   lr=meta.get("lr", 0.05))

    def step(self) -> dict:
        if self.fail_at is not None and self.step_count + 1 >= self.fail_at:
            raise FloatingPointError(f"fake failure at step {self.step_count + 1}")
        if self.work:
            b = self._a
            for _ in range(3):
                b = np.tanh(b @ self._a * 0.01)
        noise = self.stream.normal((self.dim,)).astype(np.float64)
        grad = (self.w - self.target) + 0.3 * noise
        self.w -= self.lr * grad
        self.step_count += 1
        loss = 0.5 * float(((self.w - self.target) ** 2).sum())
        return {"loss": loss, "grad_norm": float(np.sqrt((grad ** 2).sum())),
                "rule_3": min(1.0, self.step_count / 100.0), "rule_4": max(0.0, 1 - self.step_count / 100.0)}

    def snapshot(self) -> dict:
        img = np.zeros(self._side * self._side, dtype=np.float32)
        img[:self.dim] = 1.0 / (1.0 + np.exp(-self.w))
        return {"step": self.step_count, "w": self.w.copy(),
                "image": img.reshape(self._side, self._side)}

    def state_dict(self):
        return ({"w": self.w.copy(), "target": self.target.copy()},
                {"step": self.step_count, "stream": self.stream.get_state(), **self.metadata})

    def load_state_dict(self, arrays, meta) -> None:
        self.w = np.array(arrays["w"], dtype=np.float64)
        self.target = np.array(arrays["target"], dtype=np.float64)
        self.step_count = int(meta["step"])
        self.stream.set_state(meta["stream"])


# ---------------------------------------------------------------------------------------
class FakeCapsuleModel:
    """A toy mixture-of-CCs "autoencoder": blobs placed by poses, shifted by distortions.

    Same surface as ``lab.capsules`` models for the views: ``encode(images) ->
    CapsuleCode``, ``decode(code, component=None, return_details=False)``,
    ``contributions(images)``, ``templates()``, ``state_arrays()``/``load_state_arrays``.
    """

    def __init__(self, n_components: int = 3, n_acs: int = 4, n_distortions: int = 3,
                 image_size: int = 28, template_size: int = 5, seed: int = 0):
        self.C, self.K, self.D = n_components, n_acs, n_distortions
        self.size, self.T = image_size, template_size
        rng = np.random.default_rng(seed)
        self.params = {
            "templates": rng.uniform(0, 1, (self.K, 1, self.T, self.T)).astype(np.float32),
            "enc": (rng.standard_normal((image_size * image_size, self.C * (8 + self.D)))
                    * 0.05).astype(np.float32),
            "offsets": rng.uniform(-0.5, 0.5, (self.C, self.K, 2)).astype(np.float32),
            "dist": (rng.standard_normal((self.C, self.D, self.K, 2)) * 0.2).astype(np.float32),
        }

    def templates(self) -> np.ndarray:
        return self.params["templates"].copy()

    def state_arrays(self) -> dict:
        return {f"param/{k}": v.copy() for k, v in self.params.items()}

    def load_state_arrays(self, arrays) -> None:
        for k in self.params:
            self.params[k] = np.array(arrays[f"param/{k}"], dtype=np.float32)

    def encode(self, images):
        from lab.capsules.code import CapsuleCode  # noqa: PLC0415
        x = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
        h = np.tanh(x @ self.params["enc"]).reshape(len(x), self.C, 8 + self.D)
        logits = h[:, :, 0] * 5
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        mixture = e / e.sum(axis=1, keepdims=True)
        # pose layout of lab.capsules.code: [intensity, t0, t1, s0, s1, z, theta]
        poses = np.concatenate([np.abs(h[:, :, 1:2]) + 0.5, 0.3 * h[:, :, 2:4],
                                h[:, :, 4:8] * 0.1], axis=2).astype(np.float32)
        return CapsuleCode(mixture=mixture.astype(np.float32), poses=poses,
                           distortions=h[:, :, 8:].astype(np.float32), logits=logits)

    def _render_one(self, pose, dist, c):
        yy, xx = np.mgrid[0:self.size, 0:self.size].astype(np.float32)
        yy = yy / (self.size - 1) * 2 - 1
        xx = xx / (self.size - 1) * 2 - 1
        contribs = np.zeros((self.K, self.size, self.size), dtype=np.float32)
        for k in range(self.K):
            centre = self.params["offsets"][c, k] + pose[1:3] + dist @ self.params["dist"][c, :, k]
            spread = 0.15 * (1.0 + pose[5])
            blob = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * spread ** 2))
            contribs[k] = pose[0] * self.params["templates"][k, 0].mean() * blob
        return np.clip(contribs.max(axis=0), 0, 1), contribs

    def decode(self, code, component: int | None = None, return_details: bool = False):
        outs, cons = [], []
        for n in range(len(code.mixture)):
            c = int(np.argmax(code.mixture[n])) if component is None else int(component)
            img, con = self._render_one(code.poses[n, c], code.distortions[n, c], c)
            outs.append(img)
            cons.append(con)
        images = np.stack(outs)
        if not return_details:
            return images
        return images, {"contributions": np.stack(cons)}

    def contributions(self, images) -> dict:
        out, details = self.decode(self.encode(images), return_details=True)
        return {"output": out, "contributions": details["contributions"]}

    def reconstruct(self, images, dropout: bool = False, seed: int = 0):
        return self.decode(self.encode(images))


class FakeCapsuleTrainer:
    """The capsule adapter's protocol and snapshot keys, on ``FakeCapsuleModel``."""

    def __init__(self, seed: int = 0, n_images: int = 64, **model_kwargs):
        self.seed = int(seed)
        self.model_kwargs = dict(model_kwargs)
        self.model = FakeCapsuleModel(seed=seed, **model_kwargs)
        self.stream = RandomStream(seed + 1)
        rng = np.random.default_rng(seed + 2)
        size = self.model.size
        self.images = np.clip(rng.uniform(-1, 1, (n_images, size, size)), 0, 1).astype(np.float32)
        self.step_count = 0

    @property
    def metadata(self) -> dict:
        return {"kind": "fake-capsules", "seed": self.seed, "model": dict(self.model_kwargs)}

    @classmethod
    def from_metadata(cls, meta: dict) -> "FakeCapsuleTrainer":
        return cls(seed=meta.get("seed", 0), **meta.get("model", {}))

    def step(self) -> dict:
        p = self.model.params
        p["templates"] += 0.05 * self.stream.normal(p["templates"].shape)
        np.clip(p["templates"], 0, 1, out=p["templates"])
        p["offsets"] += 0.01 * self.stream.normal(p["offsets"].shape)
        self.step_count += 1
        f3 = min(1.0, self.step_count / 50.0)
        return {"loss": float(1.0 / (1 + self.step_count) + 0.01 * abs(p["offsets"]).mean()),
                "recon_per_pixel": float(0.1 / (1 + 0.1 * self.step_count)),
                "rule_3": f3, "rule_4": 1 - f3, "rule_1": 0.0, "rule_2": 0.0}

    def snapshot(self) -> dict:
        originals = self.images[:8]
        return {"step": self.step_count, "templates": self.model.templates(),
                "originals": originals.copy(), "reconstructions": self.model.reconstruct(originals),
                "rule_fractions": {"rule_3": min(1.0, self.step_count / 50.0)},
                "params": self.model.state_arrays(),
                "viewer": {"kind": "fake-capsules", "model": dict(self.model_kwargs), "seed": self.seed},
                "view_images": self.images[:64].copy()}

    def state_dict(self):
        return (self.model.state_arrays(),
                {"step": self.step_count, "stream": self.stream.get_state(), **self.metadata})

    def load_state_dict(self, arrays, meta) -> None:
        self.model.load_state_arrays(arrays)
        self.step_count = int(meta["step"])
        self.stream.set_state(meta["stream"])
