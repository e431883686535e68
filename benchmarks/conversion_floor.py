"""How low can the RGB -> I420 conversion go on this CPU? Issue 15's floor for the encoder threads'
conversion, measured rather than estimated.

gpurender converts each frame on the encoder threads with OpenCV (``encode.I420Converter.compose``:
the drawn panel, RGBA, on the left; the game screen scaled nearest onto the right half;
limited-range BT.601, each chroma sample the mean of its 2x2 block). The candidate the issue left
open is one fused pass. This script compiles such a pass in C (``gcc -O3 -march=native``: the
panel half a contiguous loop the compiler vectorises, the game half through precomputed nearest
index tables), checks it against OpenCV's output on real frames (|difference| and PSNR per plane),
and times both on one thread in alternating rounds, median reported. Needs gcc; nothing of it
ships in gpurender.

    python benchmarks/conversion_floor.py VIDEO.mp4 [--rounds 5 --frames 200]
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpurender.encode import I420Converter, configure_opencv_threads

SOURCE = r"""
#include <stdint.h>
/* Limited-range BT.601 (8-bit integer coefficients); chroma from 4x the 2x2 block's sums. */
#define Y(r, g, b) (uint8_t)(((66 * (r) + 129 * (g) + 25 * (b) + 128) >> 8) + 16)
#define U(R, G, B) (uint8_t)(((-38 * (R) - 74 * (G) + 112 * (B) + 512) >> 10) + 128)
#define V(R, G, B) (uint8_t)(((112 * (R) - 94 * (G) - 18 * (B) + 512) >> 10) + 128)

/* panel: h x pw RGBA on the left; screen: RGB rows of sw pixels, scaled nearest through
   game_ys (h) and game_xs (pw) onto the right; out: Y (h x 2pw), then U, then V. */
void compose(const uint8_t *panel, int h, int pw, const uint8_t *screen, int sw,
             const int *game_xs, const int *game_ys, uint8_t *out) {
    int w = 2 * pw;
    uint8_t *y = out, *u = out + (long)h * w, *v = u + (long)(h / 2) * (w / 2);
    for (int j = 0; j < h; j += 2) {
        const uint8_t *a = panel + (long)j * pw * 4, *b = a + (long)pw * 4;
        uint8_t *ya = y + (long)j * w, *yb = ya + w;
        uint8_t *uu = u + (long)(j / 2) * (w / 2), *vv = v + (long)(j / 2) * (w / 2);
        for (int i = 0; i < pw; i++) {
            ya[i] = Y(a[4 * i], a[4 * i + 1], a[4 * i + 2]);
            yb[i] = Y(b[4 * i], b[4 * i + 1], b[4 * i + 2]);
        }
        for (int i = 0; i < pw / 2; i++) {
            int R = a[8 * i] + a[8 * i + 4] + b[8 * i] + b[8 * i + 4];
            int G = a[8 * i + 1] + a[8 * i + 5] + b[8 * i + 1] + b[8 * i + 5];
            int B = a[8 * i + 2] + a[8 * i + 6] + b[8 * i + 2] + b[8 * i + 6];
            uu[i] = U(R, G, B);
            vv[i] = V(R, G, B);
        }
        const uint8_t *ga = screen + (long)game_ys[j] * sw * 3, *gb = screen + (long)game_ys[j + 1] * sw * 3;
        for (int i = 0; i < pw; i += 2) {
            const uint8_t *p0 = ga + 3 * game_xs[i], *p1 = ga + 3 * game_xs[i + 1];
            const uint8_t *p2 = gb + 3 * game_xs[i], *p3 = gb + 3 * game_xs[i + 1];
            ya[pw + i] = Y(p0[0], p0[1], p0[2]);
            ya[pw + i + 1] = Y(p1[0], p1[1], p1[2]);
            yb[pw + i] = Y(p2[0], p2[1], p2[2]);
            yb[pw + i + 1] = Y(p3[0], p3[1], p3[2]);
            int R = p0[0] + p1[0] + p2[0] + p3[0], G = p0[1] + p1[1] + p2[1] + p3[1];
            int B = p0[2] + p1[2] + p2[2] + p3[2];
            uu[(pw + i) / 2] = U(R, G, B);
            vv[(pw + i) / 2] = V(R, G, B);
        }
    }
}
"""


def build(folder: Path) -> ctypes.CDLL:
    src, lib = folder / "fused_i420.c", folder / "fused_i420.so"
    src.write_text(SOURCE)
    subprocess.run(["gcc", "-O3", "-march=native", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    fn = ctypes.CDLL(str(lib))
    fn.compose.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                           ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return fn


def halves(video: Path, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Real frames split as the encoder threads get them: the panel (540, 480, 4) RGBA and a
    (210, 160, 3) game screen (the video's right half resized back to the screen's size)."""
    out = []
    with av.open(str(video)) as c:
        for f in c.decode(video=0):
            rgb = f.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            panel = np.dstack([rgb[:, : w // 2], np.full((h, w // 2, 1), 255, np.uint8)])
            screen = cv2.resize(rgb[:, w // 2 :], (160, 210), interpolation=cv2.INTER_AREA)
            out.append((np.ascontiguousarray(panel), np.ascontiguousarray(screen)))
            if len(out) == n:
                break
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", type=Path, help="a gpurender video (960 x 540) whose frames are converted")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--frames", type=int, default=200, help="conversions per round and side")
    args = ap.parse_args()
    configure_opencv_threads()
    frames = halves(args.video, 20)
    h, pw = frames[0][0].shape[:2]
    sh, sw = frames[0][1].shape[:2]
    xs = np.minimum(((np.arange(pw) + 0.5) * sw / pw).astype(np.int32), sw - 1)
    ys = np.minimum(((np.arange(h) + 0.5) * sh / h).astype(np.int32), sh - 1)
    out = np.empty((h * 3 // 2, 2 * pw), np.uint8)
    converter = I420Converter(2 * pw, h)
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(Path(tmp))

        def fused(panel: np.ndarray, screen: np.ndarray) -> np.ndarray:
            lib.compose(panel.ctypes.data, h, pw, screen.ctypes.data, sw, xs.ctypes.data, ys.ctypes.data,
                        out.ctypes.data)
            return out

        sides = {"opencv (I420Converter.compose)": converter.compose, "fused C pass": fused}
        for name, plane in (("Y", slice(0, h)), ("U/V", slice(h, None))):
            pairs = [(converter.compose(*f)[plane].copy(), fused(*f)[plane].copy()) for f in frames]
            diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in pairs)
            print(f"{name}: fused vs OpenCV max |diff| {diff}, PSNR {np.mean([psnr(a, b) for a, b in pairs]):.1f} dB")
        times: dict[str, list[float]] = {k: [] for k in sides}
        for r in range(args.rounds):
            for name in sides if r % 2 == 0 else reversed(list(sides)):
                t0 = time.process_time()
                for k in range(args.frames):
                    sides[name](*frames[k % len(frames)])
                times[name].append((time.process_time() - t0) / args.frames * 1000)
    for name, ms in times.items():
        print(f"{name}: median {np.median(ms):.3f} CPU ms/frame (rounds {', '.join(f'{x:.3f}' for x in ms)})")


if __name__ == "__main__":
    main()
