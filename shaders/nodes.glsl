#version 330 core
// Network nodes: a disc whose brightness is the node's activation level, an analytic glow
// around it that grows with the level, and a ring on the executed action's output node whose
// strength is that action's probability.
#include "common.glsl"

#if defined VERTEX_SHADER
uniform float u_glow_extent;    // quad half-size in radii
flat out vec3 v_disc;          // centre (frame pixels), radius
flat out float v_level;
flat out float v_ring;
flat out vec3 v_color;
flat out vec3 v_ring_color;

void main() {
    int frame, item;
    instance_frame_item(frame, item);
    vec4 geom = item_row(item, 0);      // cx, cy, radius, level slot
    vec4 binding = item_row(item, 3);   // y/z: action match, w: probability slot or -1
    v_level = clamp(frame_value(frame, int(geom.w)), 0.0, 1.0);
    v_ring = (item_matched(frame, binding) && binding.w >= 0.0)
        ? 0.35 + 0.65 * clamp(frame_value(frame, int(binding.w)), 0.0, 1.0) : 0.0;
    v_color = item_row(item, 1).rgb;
    v_ring_color = item_row(item, 2).rgb;
    v_disc = geom.xyz;
    gl_Position = frame_to_clip(geom.xy + (quad_corner() * 2.0 - 1.0) * u_glow_extent * geom.z, frame);
}

#elif defined FRAGMENT_SHADER
flat in vec3 v_disc;
flat in float v_level;
flat in float v_ring;
flat in vec3 v_color;
flat in vec3 v_ring_color;
out vec4 f_color;

void main() {
    float d = length(frame_pixel() - v_disc.xy) / v_disc.z;  // in radii from the centre
    float aa = fwidth(d);
    float disc = 1.0 - smoothstep(1.0 - aa, 1.0 + aa, d);
    float rim = disc * smoothstep(0.70, 1.0, d);
    vec3 core = mix(v_color * 0.18, v_color, v_level) + vec3(0.6) * rim * 0.25;
    float halo = d > 1.0 ? v_level * 0.8 * exp(-(d - 1.0) * (d - 1.0) * 2.5) : 0.0;
    float ring = v_ring * exp(-pow((d - 1.6) / 0.18, 2.0));
    vec3 rgb = core * disc + v_color * halo * (1.0 - disc) + v_ring_color * ring;
    float a = max(disc, max(halo, ring));
    if (a < 0.004) discard;
    f_color = vec4(rgb, a);
}
#endif
