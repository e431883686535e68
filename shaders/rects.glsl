#version 330 core
// Flat rectangles: panel backgrounds, probability bars (width = a model value), highlights.
#include "common.glsl"

#if defined VERTEX_SHADER
uniform int u_items;
out vec4 v_color;

void main() {
    int frame = gl_InstanceID / u_items;
    int item = gl_InstanceID - frame * u_items;
    vec4 geom = item_row(item, 0);
    vec4 binding = item_row(item, 3);
    float w = geom.z;
    if (binding.x >= 0.0) {
        w *= clamp(frame_value(frame, int(binding.x)), 0.0, 1.0);
    }
    v_color = item_matched(frame, binding) ? item_row(item, 2) : item_row(item, 1);
    gl_Position = frame_to_clip(geom.xy + quad_corner() * vec2(w, geom.w), frame);
}

#elif defined FRAGMENT_SHADER
in vec4 v_color;
out vec4 f_color;

void main() {
    if (v_color.a <= 0.0) discard;
    f_color = v_color;
}
#endif
