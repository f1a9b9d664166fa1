"""Differentiable 2-D graphics: the decoder's rendering half (thesis 2.3.1-2.3.5).

Components, each under its thesis name (one module per idea):

    frames  coordinate conventions (unit squares, pixel centres, array order)
    ntm     NTM / INTM (figs 2.4, 2.5): nice pose -> world->template matrix
    migp    MIGP (fig. 2.8): CC-in-world x AC-in-CC iGeo poses
    acr     ACR (fig. 2.3): the fused render op with a hand-written backward
    om      OM (2.3.3): sum, max, maxSoft, maxSemiSoft and the listed alternatives
    threads the render threads (``set_render_threads``, ``$LAB_RENDER_THREADS``)

Data flow of a capsule decoder (figs 2.6, 2.7, 2.12)::

    nice (B,K,6) --nice_to_matrix--> (B,K,3,3) --compose with CC pose-->
    render_templates(templates, matrices, intensities) (B,K,H,W) --output_model--> (B,H,W)

See ``lab.graphics.frames`` for the coordinate conventions.
"""
from lab.graphics.acr import render_templates
from lab.graphics.frames import FILL_DETERMINANT, canvas_points, pixel_centres
from lab.graphics.migp import compose
from lab.graphics.ntm import IDENTITY_NICE, determinant, igeo_nice_to_igeo, nice_to_matrix
from lab.graphics.threads import set_render_threads
from lab.graphics.om import OUTPUT_MODELS, SEMI_SOFT_SHARPNESS, max_semi_soft, output_model

__all__ = ["FILL_DETERMINANT", "IDENTITY_NICE", "OUTPUT_MODELS", "SEMI_SOFT_SHARPNESS",
           "canvas_points", "compose", "determinant", "igeo_nice_to_igeo", "max_semi_soft", "nice_to_matrix",
           "output_model", "pixel_centres", "render_templates", "set_render_threads"]
