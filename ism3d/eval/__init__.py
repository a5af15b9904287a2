"""Evaluation: the ToyWorld benchmark (`ism3d eval`) and its metrics.

- `metrics`: silhouette IoU and PSNR inside the union of two silhouettes;
- `janus`: the Janus test of the asymmetric ToyWorld objects (part on the wrong side, or twice);
- `bench`: `ism3d eval`, prompt set x method x seed runs, resumable (`run_bench`; re-exports
  the public names of the three below);
- `spec`: its input and its list of runs (`make_spec`, `build_runs`);
- `scoring`: a result against the ground truth on the eval rings (`evaluate_gaussians`);
- `report`: the summary, report.json and report.md.
"""
from .janus import JanusReference, JanusResult, janus_objects, janus_reference, janus_test, mirror_x
from .metrics import masked_mse, masked_psnr, psnr_from_mse, silhouette_iou, union_mask

__all__ = ["JanusReference", "JanusResult", "janus_objects", "janus_reference", "janus_test",
           "mirror_x", "masked_mse", "masked_psnr", "psnr_from_mse", "silhouette_iou",
           "union_mask"]
