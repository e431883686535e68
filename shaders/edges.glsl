#version 330 core
// Network connections. Strength = |weight| between the two node groups x source node level;
// the glow is analytic: a Gaussian falloff across the segment inside the segment's own quad.
#include "common.glsl"

#if defined VERTEX_SHADER
uniform float u_half_width;
flat out vec2 v_start;     // the segment's start, frame pixels
flat out vec2 v_normal;
flat out vec4 v_color;

void main() {
    int frame, item;
    instance_frame_item(frame, item);
    vec4 seg = item_row(item, 0);       // x0, y0, x1, y1
    vec4 binding = item_row(item, 3);   // x: source level slot, y: group weight slot
    float strength = frame_value(frame, int(binding.y)) * clamp(frame_value(frame, int(binding.x)), 0.0, 1.0);
    vec2 dir = normalize(seg.zw - seg.xy);
    vec2 normal = vec2(-dir.y, dir.x);
    vec2 corner = quad_corner();
    vec2 p = mix(seg.xy, seg.zw, corner.x) + normal * (corner.y * 2.0 - 1.0) * u_half_width;
    v_start = seg.xy;
    v_normal = normal;
    vec4 base = item_row(item, 1);
    v_color = vec4(base.rgb, strength * strength * 0.7);  // squared: weak flow fades out
    // an edge whose brightest fragment would be discarded is not rasterised at all
    gl_Position = v_color.a < 0.004 ? vec4(2.0, 2.0, 2.0, 1.0) : frame_to_clip(p, frame);
}

#elif defined FRAGMENT_SHADER
uniform float u_half_width;
flat in vec2 v_start;
flat in vec2 v_normal;
flat in vec4 v_color;
out vec4 f_color;

void main() {
    float across = dot(frame_pixel() - v_start, v_normal) / u_half_width;  // -1..1 over the quad
    float glow = exp(-across * across * 6.0);
    float a = v_color.a * glow;
    if (a < 0.004) discard;
    f_color = vec4(v_color.rgb * a, a);
}
#endif
