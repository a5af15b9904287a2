"""An offline viewer: ONE self-contained .html file that draws the gaussians with WebGL2.

No network at open time: the gaussians are inlined (base64 of the .splat records, 32 bytes each,
ism3d/export/splats.py, in the y-down frame that 3DGS viewers use) and the renderer is our own
~150 lines of JavaScript below (no library). Open it from disk in any browser with WebGL2.

Rendering, per frame (the 3DGS rasteriser's maths, Kerbl et al. 2023, in a vertex shader):
    1. at load: each gaussian's 3D covariance S = R diag(s^2) R^T from its quaternion and scales
    2. view space (OpenCV: x right, y down, z forward); 2D covariance S' = J W S W^T J^T + 0.3 I,
       J the perspective Jacobian [[f/z, 0, -f x/z^2], [0, f/z, -f y/z^2]]
    3. a screen quad along S''s eigenvectors, 3 sigma each way; the fragment's alpha is
       o exp(-1/2 d^T S'^-1 d) (d in sigma units), dropped below 1/255
    4. splats sorted back to front by view depth (a linear-time counting sort on 16-bit depth
       keys, on the CPU, when the camera moved) and blended with premultiplied alpha over a
       white background (our objects are trained on white)

Orbit controls: drag to turn, wheel (or pinch) to zoom, double-click to reset. The default camera
looks at the object's front from the -z side, up = -y (the file frame's up), like SuperSplat's and
gsplat's viewers. The URL fragment can set the view: `view.html#az=90&el=10&r=3.5&center=0`
(azimuth and elevation in degrees as in ism3d's cameras: az 0 = front, 90 = the object's left
side; r = distance; center=0 looks at the origin instead of the object's centre).
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from ..frames import to_frame
from .splats import SplatError, splat_bytes
from .video import atomic_write

__all__ = ["viewer_html", "write_viewer"]

_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
html,body{margin:0;height:100%;background:#fff;overflow:hidden;font:13px sans-serif}
canvas{display:block;width:100%;height:100%;touch-action:none}
#info{position:absolute;left:8px;bottom:6px;color:#888;pointer-events:none}
</style></head><body>
<canvas id="c"></canvas>
<div id="info">__TITLE__ &middot; __COUNT__ gaussians &middot; drag to turn, wheel to zoom, double-click to reset</div>
<script id="data" type="application/octet-stream">__DATA__</script>
<script>
"use strict";
const FOVY = 0.55;
const raw = Uint8Array.from(atob(document.getElementById("data").textContent.trim()), c => c.charCodeAt(0));
const N = raw.length / 32, f32 = new Float32Array(raw.buffer);
const pos = new Float32Array(3 * N), cov = new Float32Array(6 * N), rgba = new Uint8Array(4 * N);
for (let i = 0; i < N; i++) {
  // 1. S = R diag(s^2) R^T
  const s = [f32[8 * i + 3], f32[8 * i + 4], f32[8 * i + 5]];
  for (let k = 0; k < 3; k++) pos[3 * i + k] = f32[8 * i + k];
  for (let k = 0; k < 4; k++) rgba[4 * i + k] = raw[32 * i + 24 + k];
  let q = [0, 1, 2, 3].map(k => (raw[32 * i + 28 + k] - 128) / 128);
  const n = Math.hypot(...q) || 1; q = q.map(v => v / n);
  const [w, x, y, z] = q;
  const R = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
             2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
             2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)];
  const S = (a, b) => R[3 * a] * R[3 * b] * s[0] * s[0] + R[3 * a + 1] * R[3 * b + 1] * s[1] * s[1] + R[3 * a + 2] * R[3 * b + 2] * s[2] * s[2];
  cov.set([S(0, 0), S(0, 1), S(0, 2), S(1, 1), S(1, 2), S(2, 2)], 6 * i);
}
// framing: the middle 96% of the gaussians along each axis
const centre = [0, 0, 0]; let extent = 0;
for (let k = 0; k < 3; k++) {
  const v = Array.from({length: N}, (_, i) => pos[3 * i + k]).sort((a, b) => a - b);
  const lo = v[Math.floor(0.02 * (N - 1))], hi = v[Math.ceil(0.98 * (N - 1))];
  centre[k] = (lo + hi) / 2; extent = Math.max(extent, (hi - lo) / 2);
}
const hash = Object.fromEntries(location.hash.slice(1).split("&").filter(Boolean).map(p => p.split("=")));
const fit = 1.25 * Math.sqrt(3) * Math.max(extent, 1e-3) / Math.sin(FOVY / 2);
const home = {az: +(hash.az || 0), el: +(hash.el || 15), r: +(hash.r || fit)};
const target = hash.center === "0" ? [0, 0, 0] : centre;
let cam = {...home};

const canvas = document.getElementById("c");
const gl = canvas.getContext("webgl2", {premultipliedAlpha: true, alpha: false, preserveDrawingBuffer: true});
if (!gl) document.getElementById("info").textContent = "this viewer needs WebGL2";
const vs = `#version 300 es
precision highp float;
in vec2 corner; in vec3 center; in vec4 color; in vec3 covA; in vec3 covB;
uniform mat3 W; uniform vec3 t; uniform vec2 size; uniform float f;
out vec4 vColor; out vec2 vPos;
void main() {
  vec3 p = W * center + t;                        // 2. view space, OpenCV axes
  if (p.z < 0.05) { gl_Position = vec4(0, 0, 2, 1); return; }
  mat3 S = mat3(covA.x, covA.y, covA.z, covA.y, covB.x, covB.y, covA.z, covB.y, covB.z);
  mat3 J = mat3(f / p.z, 0.0, 0.0, 0.0, f / p.z, 0.0, -f * p.x / (p.z * p.z), -f * p.y / (p.z * p.z), 0.0);
  mat3 T = J * W;
  mat3 C = T * S * transpose(T);
  float a = C[0][0] + 0.3, b = C[0][1], c = C[1][1] + 0.3;
  float mid = 0.5 * (a + c), rad = length(vec2(0.5 * (a - c), b));
  float l1 = mid + rad, l2 = max(mid - rad, 0.1);   // 3. eigen-axes of S'
  vec2 v1 = abs(b) < 1e-9 ? (a >= c ? vec2(1, 0) : vec2(0, 1)) : normalize(vec2(b, l1 - a));
  vec2 v2 = vec2(-v1.y, v1.x);
  vec2 px = vec2(f * p.x / p.z, f * p.y / p.z) + 3.0 * (corner.x * sqrt(l1) * v1 + corner.y * sqrt(l2) * v2);
  gl_Position = vec4(2.0 * px.x / size.x, -2.0 * px.y / size.y, 0.0, 1.0);
  vColor = color; vPos = 3.0 * corner;
}`;
const fs = `#version 300 es
precision highp float;
in vec4 vColor; in vec2 vPos; out vec4 o;
void main() {
  float alpha = min(0.99, vColor.a * exp(-0.5 * dot(vPos, vPos)));
  if (alpha < 1.0 / 255.0) discard;
  o = vec4(vColor.rgb * alpha, alpha);            // 4. premultiplied
}`;
function shader(type, src) {
  const s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
  if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
  return s;
}
const prog = gl.createProgram();
gl.attachShader(prog, shader(gl.VERTEX_SHADER, vs)); gl.attachShader(prog, shader(gl.FRAGMENT_SHADER, fs));
gl.linkProgram(prog); gl.useProgram(prog);
const U = n => gl.getUniformLocation(prog, n);
const vao = gl.createVertexArray(); gl.bindVertexArray(vao);
function attr(name, data, size, type, norm, divisor) {
  const loc = gl.getAttribLocation(prog, name), buf = gl.createBuffer();
  gl.bindBuffer(gl.ARRAY_BUFFER, buf); gl.bufferData(gl.ARRAY_BUFFER, data, gl.DYNAMIC_DRAW);
  gl.enableVertexAttribArray(loc); gl.vertexAttribPointer(loc, size, type, norm, 0, 0);
  gl.vertexAttribDivisor(loc, divisor); return buf;
}
attr("corner", new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), 2, gl.FLOAT, false, 0);
const sPos = new Float32Array(3 * N), sRgba = new Uint8Array(4 * N), sA = new Float32Array(3 * N), sB = new Float32Array(3 * N);
const bufs = [attr("center", sPos, 3, gl.FLOAT, false, 1), attr("color", sRgba, 4, gl.UNSIGNED_BYTE, true, 1),
              attr("covA", sA, 3, gl.FLOAT, false, 1), attr("covB", sB, 3, gl.FLOAT, false, 1)];
gl.disable(gl.DEPTH_TEST); gl.enable(gl.BLEND); gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);

function view() {
  // the eye on the orbit around the target; file frame: up = -y, front = -z
  const az = cam.az * Math.PI / 180, el = cam.el * Math.PI / 180;
  const eye = [target[0] + cam.r * Math.sin(az) * Math.cos(el), target[1] - cam.r * Math.sin(el),
               target[2] - cam.r * Math.cos(az) * Math.cos(el)];
  const fw = [target[0] - eye[0], target[1] - eye[1], target[2] - eye[2]];
  const fl = Math.hypot(...fw); const F = fw.map(v => v / fl);
  const up = [0, -1, 0];
  let Rt = [F[1] * up[2] - F[2] * up[1], F[2] * up[0] - F[0] * up[2], F[0] * up[1] - F[1] * up[0]];
  const rl = Math.hypot(...Rt) || 1; Rt = Rt.map(v => v / rl);
  const D = [F[1] * Rt[2] - F[2] * Rt[1], F[2] * Rt[0] - F[0] * Rt[2], F[0] * Rt[1] - F[1] * Rt[0]];
  const rows = [Rt, D, F];
  const t = rows.map(r => -(r[0] * eye[0] + r[1] * eye[1] + r[2] * eye[2]));
  return {rows, t};
}
let dirty = true;
function draw() {
  requestAnimationFrame(draw);
  const w = canvas.clientWidth * devicePixelRatio | 0, h = canvas.clientHeight * devicePixelRatio | 0;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; dirty = true; }
  if (!dirty) return;
  dirty = false;
  const {rows, t} = view();
  // 4. back to front: a counting sort on 16-bit depth keys (linear time: millions of splats)
  const depth = new Float32Array(N); let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < N; i++) {
    const d = rows[2][0] * pos[3 * i] + rows[2][1] * pos[3 * i + 1] + rows[2][2] * pos[3 * i + 2];
    depth[i] = d; if (d < lo) lo = d; if (d > hi) hi = d;
  }
  const k16 = new Uint16Array(N), counts = new Uint32Array(65537), sc = 65535 / (hi - lo || 1);
  for (let i = 0; i < N; i++) { k16[i] = ((hi - depth[i]) * sc) | 0; counts[k16[i] + 1]++; }
  for (let k = 1; k <= 65536; k++) counts[k] += counts[k - 1];
  const order = new Uint32Array(N);
  for (let i = 0; i < N; i++) order[counts[k16[i]]++] = i;
  for (let j = 0; j < N; j++) {
    const i = order[j];
    sPos.set(pos.subarray(3 * i, 3 * i + 3), 3 * j); sRgba.set(rgba.subarray(4 * i, 4 * i + 4), 4 * j);
    sA.set(cov.subarray(6 * i, 6 * i + 3), 3 * j); sB.set(cov.subarray(6 * i + 3, 6 * i + 6), 3 * j);
  }
  [sPos, sRgba, sA, sB].forEach((d, k) => { gl.bindBuffer(gl.ARRAY_BUFFER, bufs[k]); gl.bufferSubData(gl.ARRAY_BUFFER, 0, d); });
  gl.viewport(0, 0, w, h); gl.clearColor(1, 1, 1, 1); gl.clear(gl.COLOR_BUFFER_BIT);
  // column-major upload of W (rows = camera axes)
  gl.uniformMatrix3fv(U("W"), false, [rows[0][0], rows[1][0], rows[2][0], rows[0][1], rows[1][1], rows[2][1], rows[0][2], rows[1][2], rows[2][2]]);
  gl.uniform3fv(U("t"), t); gl.uniform2f(U("size"), w, h); gl.uniform1f(U("f"), 0.5 * h / Math.tan(FOVY / 2));
  gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, N);
  document.body.dataset.drawn = "1";
}
let drag = null;
canvas.addEventListener("pointerdown", e => { drag = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId); });
canvas.addEventListener("pointerup", () => { drag = null; });
canvas.addEventListener("pointermove", e => {
  if (!drag) return;
  cam.az -= 0.4 * (e.clientX - drag[0]); cam.el = Math.max(-89, Math.min(89, cam.el + 0.4 * (e.clientY - drag[1])));
  drag = [e.clientX, e.clientY]; dirty = true;
});
canvas.addEventListener("wheel", e => { e.preventDefault(); cam.r *= Math.exp(0.001 * e.deltaY); dirty = true; }, {passive: false});
canvas.addEventListener("dblclick", () => { cam = {...home}; dirty = true; });
requestAnimationFrame(draw);
</script></body></html>
"""


def viewer_html(params, title: str = "ism3d") -> str:
    """The viewer page for world-frame raw gaussians (degree 0 colours; see module docstring)."""
    if len(params["means"]) == 0:
        raise SplatError("the scene holds no gaussians: nothing to view")
    data = base64.b64encode(splat_bytes(to_frame(params, "y-down"))).decode("ascii")
    safe = html.escape(title)
    return (_TEMPLATE.replace("__TITLE__", safe).replace("__COUNT__", str(len(params["means"])))
            .replace("__DATA__", data))


def write_viewer(params, path: str | os.PathLike, title: str = "ism3d") -> Path:
    """Write the viewer page atomically. Returns the path."""
    if Path(path).suffix.lower() not in (".html", ".htm"):
        raise SplatError(f"cannot write {path}: the viewer is an .html file")
    text = viewer_html(params, title)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
