"""Live views of training sessions: one implementation of each view, two front ends.

* ``widgets.views``: the views themselves, framework-free (snapshot in, numpy out):
  ``ReconstructionsView`` (fig 2.14), ``DistortionExplorer`` (fig 2.18),
  ``TemplateHistory`` (fig 2.15 over time), ``MixtureView`` (fig 2.19), ``RBMView``
  (fantasy particles, FPCD fast overlay), ``curve_groups`` (fig 2.13 and the curves).
* ``widgets.panel``: Panel/bokeh components for the dashboard (and for notebooks with
  ``pn.extension()``); bokeh models are only touched on their document's thread.
* ``widgets.notebook``: ipywidgets versions (PNG frames, sliders) for Jupyter.
* ``widgets.dashboard``: the app, ``lab serve`` or ``panel serve widgets/dashboard.py``.
"""
