#version 330 core
// Network connections. Strength = |weight| between the two node groups x |source node level|,
// in u_negative where the source's level is negative (an attribution away from the executed
// action); the glow is analytic: a Gaussian falloff across the segment inside its own quad.
#include "common.glsl"

#if defined VERTEX_SHADER
uniform float u_half_width;
uniform vec3 u_negative;    // the colour of edges from negative levels
flat out vec2 v_start;     // the segment's start, frame pixels
flat out vec2 v_normal;
flat out vec4 v_color;

void main() {
    int frame, item;
    instance_frame_item(frame, item);
    vec4 seg = item_row(item, 0);       // x0, y0, x1, y1
    vec4 binding = item_row(item, 3);   // x: source level slot, y: group weight slot
    float level = clamp(frame_value(frame, int(binding.x)), -1.0, 1.0);
    float strength = frame_value(frame, int(binding.y)) * abs(level);
    vec2 dir = normalize(seg.zw - seg.xy);
    vec2 normal = vec2(-dir.y, dir.x);
    vec2 corner = quad_corner();
    vec2 p = mix(seg.xy, seg.zw, corner.x) + normal * (corner.y * 2.0 - 1.0) * u_half_width;
    v_start = seg.xy;
    v_normal = normal;
    vec3 base = level < 0.0 ? u_negative : item_row(item, 1).rgb;
    v_color = vec4(base, strength * strength * 0.7);  // squared: weak flow fades out
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
