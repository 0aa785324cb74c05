"""The analysis stage: density and pairwise IOU of masks (`overlap`, the math) and `density.nc` / `iou.nc` with their
figures (`density_iou`)."""
