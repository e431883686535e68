#version 330 core
// Flat rectangles: panel backgrounds, probability bars (width = a model value), highlights,
// the action-history cells (colour = the action's palette entry) and reward-history bars
// (height = a value). binding.w picks the mode: 0 width, 1 height (bottom-anchored), 2 palette.
#include "common.glsl"

#if defined VERTEX_SHADER
uniform vec4 u_palette[18];     // one colour per action index
out vec4 v_color;

void main() {
    int frame, item;
    instance_frame_item(frame, item);
    vec4 geom = item_row(item, 0);
    vec4 binding = item_row(item, 3);
    int mode = int(binding.w);
    float value = binding.x >= 0.0 ? frame_value(frame, int(binding.x)) : 1.0;
    vec4 rect = geom;
    v_color = item_matched(frame, binding) ? item_row(item, 2) : item_row(item, 1);
    if (mode == 0) {
        rect.z *= clamp(value, 0.0, 1.0);
    } else if (mode == 1) {
        float h = geom.w * clamp(value, 0.0, 1.0);
        rect.y += geom.w - h;
        rect.w = h;
    } else {
        v_color = value < 0.0 ? vec4(0.0) : u_palette[clamp(int(value + 0.5), 0, 17)];
    }
    // a transparent rect (an unmatched highlight, an empty history cell) is not rasterised at all
    gl_Position = v_color.a <= 0.0 ? vec4(2.0, 2.0, 2.0, 1.0) : frame_to_clip(rect.xy + quad_corner() * rect.zw, frame);
}

#elif defined FRAGMENT_SHADER
in vec4 v_color;
out vec4 f_color;

void main() {
    if (v_color.a <= 0.0) discard;
    f_color = v_color;
}
#endif
