"""Data for the chapter-2 figures, as numpy arrays (the notebooks draw them).

=========================  =====================================================
fig 2.13                   ``rule_dominance(metrics)``: optimizer rule fractions over time
fig 2.14 / 2.20            ``reconstructions_with_contributions(model, images)``;
                           ``active_acs(intensities)``: how many ACs take part
fig 2.15 / 2.21            ``template_images(model)``: templates with bilinear interpolation
fig 2.16                   ``centres_of_gravity(model, images)``
fig 2.17                   ``mfa_pixels_vs_poses(model, images)``
fig 2.18 / 2.22            ``distortion_sweep(model, images)``
fig 2.19                   ``component_reconstructions(model, images)``
2.2 (the encoder's cost)   ``code_search(model, images)``: codes found by gradient descent
=========================  =====================================================
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lab.autodiff import Tensor, no_grad, reshape
from lab.backend import to_numpy
from lab.capsules.autoencoders import CapsuleAutoencoder
from lab.capsules.mfa import MFA


def reconstructions_with_contributions(model: CapsuleAutoencoder, images) -> dict:
    """Fig 2.14: ``original``, ``reconstruction``, ``mismatch`` (N,H,W), every AC's
    ``contributions`` (N,K,H,W) and the squared ``error_per_pixel`` (test-time network)."""
    x = model._images(images)
    out = model.contributions(x)
    rec = out["output"]
    return {"original": x, "reconstruction": rec, "mismatch": x - rec,
            "contributions": out["contributions"],
            "error_per_pixel": float(((x - rec) ** 2).mean())}


def active_acs(intensities, threshold: float = 0.05, min_fraction: float = 0.05) -> int:
    """How many ACs take part (fig 2.14: "The 9 ACs have all found a role for
    themselves"): those whose intensity (N,K,M), largest over channels, exceeds
    ``threshold`` on at least ``min_fraction`` of the images. An AC that drops out
    of use gets almost no gradient through its (softplus) intensity: in the long
    ``mnist-thesis`` runs so far, such ACs were shrunk (det(world -> template)
    90-170 against 5-14 for those in use); one of three came back in 10,000 steps
    (the session-8 preset's seed-0 run, from step 20,200). The count says
    nothing about size: a usage term on intensities (session 9) "revived" ACs as tiny,
    very bright dots that this still counts."""
    i = np.asarray(intensities)
    on = i.reshape(i.shape[0], i.shape[1], -1).max(axis=2) > threshold
    return int((on.mean(axis=0) >= min_fraction).sum())


def template_images(model: CapsuleAutoencoder, upsample: int = 4) -> np.ndarray:
    """Fig 2.15: every template (K, M, T*up, T*up) as the renderer sees it: template pixels
    are points with bilinear interpolation between them (rendered with the identity
    world -> template matrix onto a finer canvas)."""
    from lab.graphics import render_templates  # noqa: PLC0415
    t = model.templates()                              # (K, M, T, T)
    K, M, T, _ = t.shape
    size = T * upsample
    eye = np.broadcast_to(np.eye(3, dtype=t.dtype), (1, K * M, 3, 3)).copy()
    with no_grad():
        img = render_templates(Tensor(t.reshape(K * M, T, T)), Tensor(eye),
                               Tensor(np.ones((1, K * M), dtype=t.dtype)), size=(size, size))
    return img.numpy().reshape(K, M, size, size)


def centres_of_gravity(model: CapsuleAutoencoder, images) -> np.ndarray:
    """Fig 2.16: (N, K, 2) centre of gravity (row, column, in pixels) of each AC's
    contribution per image; NaN where an AC drew nothing."""
    c = model.contributions(images)["contributions"].astype(np.float64)   # (N,K,H,W)
    H, W = c.shape[-2:]
    mass = c.sum(axis=(2, 3))
    rows = (c.sum(axis=3) * np.arange(H)).sum(axis=2)
    cols = (c.sum(axis=2) * np.arange(W)).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.stack([rows / mass, cols / mass], axis=-1)
    out[mass <= 1e-8] = np.nan
    return out


def ac_pose_features(code) -> np.ndarray:
    """(N, K*(6+M)): the AC iGeo poses of a code (first two matrix rows, intensities)."""
    n = len(code)
    return np.concatenate([code.ac_matrices[:, :, :2, :].reshape(n, -1),
                           code.ac_intensities.reshape(n, -1)], axis=1)


def _features_to_igeo(features, K, M):
    n = len(features)
    mats = np.zeros((n, K, 3, 3))
    mats[:, :, :2, :] = features[:, :K * 6].reshape(n, K, 2, 3)
    mats[:, :, 2, 2] = 1.0
    return mats, features[:, K * 6:].reshape(n, K, M)


def mfa_pixels_vs_poses(model: CapsuleAutoencoder, images, n_components: int = 10,
                        n_factors: int = 4, n_iter: int = 20, seed: int = 0) -> dict:
    """Fig 2.17: an MFA on raw pixels and one on the encoder's AC iGeo poses.

    Returns ``pixel_means`` (C,H,W), ``pose_means_rendered`` (C,H,W) (the pose-space
    means drawn by the decoder), the two models' mean log-likelihoods, and the
    ``pose_means`` themselves."""
    x = model._images(images)
    n = len(x)
    pix = MFA(n_components, n_factors, n_iter, seed).fit(x.reshape(n, -1))
    code = model.encode(x)
    feats = ac_pose_features(code)
    K, M = code.ac_intensities.shape[1:]
    pose = MFA(n_components, n_factors, n_iter, seed).fit(feats)
    mats, ints = _features_to_igeo(pose.means_, K, M)
    return {"pixel_means": pix.means_.reshape(n_components, *model.image_shape),
            "pose_means_rendered": model.render_world(mats, np.maximum(ints, 0.0)),
            "pose_means": pose.means_, "pixel_loglik": pix.loglik_,
            "pose_loglik": pose.loglik_}


def distortion_sweep(model: CapsuleAutoencoder, images, component: int | None = None,
                     n_steps: int = 5, n_sigma: float = 2.0) -> dict:
    """Fig 2.18: the CC's typical output with one distortion variable at a time moved
    from -n_sigma σ to +n_sigma σ (σ = its standard deviation over the images that the
    manager gives this CC), the others at 0.

    ``component``: the CC (default: the one chosen most often). The typical pose is
    the median CC-in-world pose over those images. Returns ``images`` (D, n_steps, H, W),
    ``values`` (D, n_steps), ``component``, ``sigma`` (D,), ``n_cases``.
    """
    code = model.encode(images)
    sel = code.selected()
    if component is None:
        component = int(np.bincount(sel, minlength=code.n_components).argmax())
    mine = sel == component
    if not mine.any():
        mine = np.ones(len(code), dtype=bool)
    pose = np.median(code.poses[mine, component], axis=0)
    dist = code.distortions[mine, component]
    D = dist.shape[1]
    sigma = dist.std(axis=0) if mine.sum() > 1 else np.ones(D)
    steps = np.linspace(-n_sigma, n_sigma, n_steps)
    values = sigma[:, None] * steps[None, :]
    C = code.n_components
    n = D * n_steps
    mixture = np.zeros((n, C), dtype=np.float32)
    mixture[:, component] = 1.0
    poses = np.broadcast_to(pose, (n, C, pose.shape[-1])).copy()
    distortions = np.zeros((n, C, D), dtype=np.float32)
    for d in range(D):
        distortions[d * n_steps:(d + 1) * n_steps, component, d] = values[d]
    from lab.capsules.code import CapsuleCode  # noqa: PLC0415
    out = model.decode(CapsuleCode(mixture=mixture, poses=poses, distortions=distortions),
                       component=component if C > 1 else None)
    return {"images": out.reshape(D, n_steps, *model.image_shape), "values": values,
            "component": component, "sigma": sigma, "n_cases": int(mine.sum())}


def component_reconstructions(model: CapsuleAutoencoder, images) -> dict:
    """Fig 2.19: ``original`` (N,H,W), ``chosen`` (the manager's reconstruction),
    ``per_component`` (N,C,H,W) (every CC made to reconstruct every image with its own
    pose) and ``selected`` (N,)."""
    x = model._images(images)
    code = model.encode(x)
    per = np.stack([model.decode(code, component=c) for c in range(code.n_components)], axis=1)
    return {"original": x, "chosen": model.decode(code), "per_component": per,
            "selected": code.selected()}


def code_search(model: CapsuleAutoencoder, images, steps: int = 300, lr: float = 0.01,
                keep_mixture: bool = True, every: int = 50, batch_size: int = 500) -> dict:
    """How well the decoder could reconstruct ``images`` if each image's code were found
    by gradient descent instead of by the encoder: Adam on the encoder's output (the
    code layer before the offset), started from the encoder's code, decoder fixed,
    test-time network. The encoder is "emphatically not the crucial ingredient" (2.2);
    this measures what it costs. ``keep_mixture``: {y_i} stay the encoder's (the same CC
    renders the image). Returns ``steps`` (0, ``every``, ..., ``steps``) and ``error``,
    the squared error per pixel at those steps (``error[0]``: the encoder's codes),
    ``raw``, the codes found (N, code size), and ``reconstruction`` (N,H,W), their
    rendering."""
    from lab.autodiff import sum as tsum  # noqa: PLC0415
    from lab.optim import Adam  # noqa: PLC0415
    if steps < 0 or every < 1:
        raise ValueError(f"code_search: steps must be >= 0 and every >= 1, got {steps}, {every}")
    x = model._images(images).reshape(-1, model.n_pixels)
    marks = sorted({0, steps, *range(every, steps, every)})
    sq_sums = np.zeros(len(marks))
    found, renders = [], []
    frozen = [(p, p.requires_grad) for p in model.params.values()]
    try:
        for p, _ in frozen:             # no weight gradients: only the codes move
            p.requires_grad = False
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            target = Tensor(model._device_images(xb, model.dtype))
            with no_grad():
                enc = model.forward(xb, train=False)
            raw = Tensor(enc["raw"].data.copy(), requires_grad=True)
            mixture = enc.get("mixture") if keep_mixture else None
            opt = Adam({"code": raw}, lr=lr)
            for t in range(steps + 1):
                out = model.decode_raw(raw, mixture=mixture)
                diff = reshape(out["output"], target.shape) - target
                loss = tsum(diff * diff)
                if t in marks:
                    sq_sums[marks.index(t)] += float(loss.item())
                if t == steps:
                    renders.append(to_numpy(out["output"].data))
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
            found.append(to_numpy(raw.data))
    finally:
        for p, requires in frozen:
            p.requires_grad = requires
    return {"steps": np.array(marks), "error": sq_sums / x.size, "raw": np.concatenate(found),
            "reconstruction": np.concatenate(renders)}


def load_metrics(path) -> list[dict]:
    """The step records of a ``metrics.jsonl`` (event lines skipped). A run resumed from a
    checkpoint older than its last records (an interrupted run) logs those steps again:
    the later records win, as the run went on from them."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    records = []
    for line in p.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if "event" not in r:
                while records and "step" in r and records[-1].get("step", -1) >= r["step"]:
                    records.pop()                       # superseded by the resumed run
                records.append(r)
    return records


def rule_dominance(metrics) -> dict:
    """Fig 2.13: ``step`` and, per rule, the fraction of parameter elements whose update
    that rule decided, over time (empty rules for Adam). ``metrics``: records or a path."""
    if isinstance(metrics, (str, Path)):
        metrics = load_metrics(metrics)
    keys = sorted({k for r in metrics for k in r if k.startswith("rule_")})
    rows = [r for r in metrics if any(k in r for k in keys)]
    out = {"step": np.array([r["step"] for r in rows], dtype=np.int64)}
    for k in keys:
        out[k[len("rule_"):]] = np.array([r.get(k, np.nan) for r in rows], dtype=np.float64)
    return out
