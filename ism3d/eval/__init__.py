"""Evaluation: the ToyWorld benchmark (`ism3d eval`) and its metrics.

- `metrics`: silhouette IoU and PSNR inside the union of two silhouettes;
- `janus`: the Janus test of the asymmetric ToyWorld objects (part on the wrong side, or twice);
- `bench`: prompt set x method x seed runs, resumable, report.md / report.json.
"""
from .janus import JanusReference, JanusResult, janus_objects, janus_reference, janus_test, mirror_x
from .metrics import masked_mse, masked_psnr, psnr_from_mse, silhouette_iou, union_mask

__all__ = ["JanusReference", "JanusResult", "janus_objects", "janus_reference", "janus_test",
           "mirror_x", "masked_mse", "masked_psnr", "psnr_from_mse", "silhouette_iou",
           "union_mask"]
