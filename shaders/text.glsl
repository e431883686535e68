#version 330 core
// Monospace text from a glyph atlas. Every glyph slot is a static item; the character in each
// slot comes from a per-frame texture, so changing numbers never rebuilds geometry.
#include "common.glsl"

#if defined VERTEX_SHADER
uniform usampler2D t_chars;     // (slots, frames) character codes
uniform vec4 u_fonts[8];        // per font: atlas origin y, cell width, cell height, unused
out vec2 v_atlas;
out vec4 v_color;

void main() {
    int frame, item;
    instance_frame_item(frame, item);
    uint code = texelFetch(t_chars, ivec2(item, frame), 0).r;
    vec4 geom = item_row(item, 0);  // x, y (top of the line box), font index
    vec4 font = u_fonts[int(geom.z)];
    vec2 cell = font.yz;
    if (code <= 32u || code > 126u) {
        gl_Position = vec4(2.0, 2.0, 2.0, 1.0);  // blank: outside the clip volume
        v_atlas = vec2(0.0);
        v_color = vec4(0.0);
        return;
    }
    int index = int(code) - 32;
    vec2 origin = vec2(float(index % 16) * cell.x, font.x + float(index / 16) * cell.y);
    vec2 corner = quad_corner();
    v_atlas = origin + corner * cell;
    vec4 binding = item_row(item, 3);
    v_color = item_matched(frame, binding) ? item_row(item, 2) : item_row(item, 1);
    gl_Position = frame_to_clip(geom.xy + corner * cell, frame);
}

#elif defined FRAGMENT_SHADER
uniform sampler2D t_atlas;      // R8 coverage, nearest filtering
uniform vec2 u_atlas_size;
in vec2 v_atlas;
in vec4 v_color;
out vec4 f_color;

void main() {
    float coverage = texture(t_atlas, v_atlas / u_atlas_size).r;
    if (coverage <= 0.0) discard;
    f_color = vec4(v_color.rgb, v_color.a * coverage);
}
#endif
