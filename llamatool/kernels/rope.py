"""Rotary position embedding as ggml computes it: adjacent pairs (llama) or halves (NEOX).

llama.cpp's converter permutes the Q and K projection rows of Hugging Face LLaMA checkpoints
so that rotated pairs are adjacent: (x[2i], x[2i+1]) turns by angle pos * theta_i, ggml's
"normal" rope (mode 0). The angles follow ggml_rope_cache_init exactly, in float32: theta
starts at the position and is multiplied by theta_scale = base^(-2/n_rot) once per pair,
divided by the pair's frequency factor (Llama 3's rope_freqs.weight), scaled by freq_scale
(linear scaling) and, for YaRN, blended with the unscaled angle and magnitude-corrected.
"""

from __future__ import annotations

import numpy as np

from llamatool.jit import njit

from numba import float32  # noqa: E402


@njit(cache=True, _nrt=False, forceinline=True)
def _yarn_ramp(low, high, i0):
    y = (float32(i0 // 2) - low) / max(float32(0.001), high - low)
    return float32(1) - min(float32(1), max(float32(0), y))


@njit(cache=True, _nrt=False)
def rope_angles(pos, n_rot, theta_scale, freq_scale, ext_factor, attn_factor, corr0, corr1, freq_factors, out, oo):
    """out[oo + 2i], out[oo + 2i + 1] = cos, sin of pair i's angle at position pos (times mscale)."""
    theta = float32(pos)
    for i in range(n_rot // 2):
        theta_extrap = theta / freq_factors[i]
        theta_interp = freq_scale * theta_extrap
        angle = theta_interp
        mscale = attn_factor
        if ext_factor != 0:
            mix = _yarn_ramp(corr0, corr1, 2 * i) * ext_factor
            angle = theta_interp * (float32(1) - mix) + theta_extrap * mix
            mscale *= float32(1) + float32(0.1) * np.log(float32(1) / freq_scale)
        out[oo + 2 * i] = np.cos(angle) * mscale
        out[oo + 2 * i + 1] = np.sin(angle) * mscale
        theta *= theta_scale


@njit(cache=True, _nrt=False)
def rope_rotate(v, vo, n_rot, angles, ao):
    """Rotate the adjacent pairs of v[vo:vo+n_rot] by the angles at angles[ao:]; later
    channels of the head are left as they are."""
    for i in range(n_rot // 2):
        c = angles[ao + 2 * i]
        s = angles[ao + 2 * i + 1]
        x0 = v[vo + 2 * i]
        x1 = v[vo + 2 * i + 1]
        v[vo + 2 * i] = x0 * c - x1 * s
        v[vo + 2 * i + 1] = x0 * s + x1 * c


@njit(cache=True, _nrt=False)
def rope_rotate_neox(v, vo, n_rot, angles, ao):
    """NEOX rope (Qwen, Gemma, Phi-3): pair i is (v[vo+i], v[vo+i+n_rot/2]), turned by the
    same angle as adjacent pair i (ggml's rope cache is shared by both modes)."""
    half = n_rot // 2
    for i in range(half):
        c = angles[ao + 2 * i]
        s = angles[ao + 2 * i + 1]
        x0 = v[vo + i]
        x1 = v[vo + i + half]
        v[vo + i] = x0 * c - x1 * s
        v[vo + i + half] = x0 * s + x1 * c
