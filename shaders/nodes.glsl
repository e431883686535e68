#version 330 core
// Network nodes: a disc whose brightness is the node's level, an analytic glow around it that
// grows with the level, and a ring on the executed action's output node whose strength is that
// action's probability. Levels are in [-1, 1]: a negative level (an attribution away from the
// executed action) is drawn at its magnitude in u_negative instead of the node's colour.
#include "common.glsl"

// Alpha below which a fragment is discarded (draws nothing).
const float MIN_ALPHA = 0.004;

#if defined VERTEX_SHADER
uniform float u_glow_extent;    // the largest quad half-size, in radii
uniform bool u_fit_quads;       // quads fitted to what each node draws; false: all u_glow_extent
uniform vec3 u_negative;        // the colour of negative levels

// Half-size (radii) of the square that holds every pixel this node draws: the distance at which
// its disc, halo and ring fall below MIN_ALPHA (the fragment shader's own formulas solved for d),
// plus 3 pixels for the disc's anti-aliased edge and rounding; never more than u_glow_extent.
// Every pixel it leaves out of the u_glow_extent quad would have been discarded.
float visible_extent(float radius, float level, float ring) {
    float e = 1.0;
    float halo_peak = level * 0.8;
    if (halo_peak > MIN_ALPHA) e = max(e, 1.0 + sqrt(log(halo_peak / MIN_ALPHA) / 2.5));
    if (ring > MIN_ALPHA) e = max(e, 1.6 + 0.18 * sqrt(log(ring / MIN_ALPHA)));
    return min(u_glow_extent, e + 3.0 / radius);
}
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
    float level = clamp(frame_value(frame, int(geom.w)), -1.0, 1.0);
    v_level = abs(level);
    v_ring = (item_matched(frame, binding) && binding.w >= 0.0)
        ? 0.35 + 0.65 * clamp(frame_value(frame, int(binding.w)), 0.0, 1.0) : 0.0;
    v_color = level < 0.0 ? u_negative : item_row(item, 1).rgb;
    v_ring_color = item_row(item, 2).rgb;
    v_disc = geom.xyz;
    float extent = u_fit_quads ? visible_extent(geom.z, v_level, v_ring) : u_glow_extent;
    gl_Position = frame_to_clip(geom.xy + (quad_corner() * 2.0 - 1.0) * extent * geom.z, frame);
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
    if (a < MIN_ALPHA) discard;
    f_color = vec4(rgb, a);
}
#endif
