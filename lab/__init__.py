"""lab: learning to recognise images by learning to generate them (Tieleman, 2014).

Modules:
    backend    numpy / CuPy selection, seeded random streams
    autodiff   define-by-run reverse-mode autodiff with gradient checks
    data       MNIST, Olivetti faces, 5x5 patches, artificial outlines (thesis 3.3)
"""
__version__ = "0.1.0"
