// Shared by every program that draws into the tiled frame target.
// Frames are stacked vertically; frame pixel (0,0) is the frame's top-left and lands on the
// lowest GL row of its tile, so a plain glReadPixels returns rows top-down.
uniform vec2 u_frame_size;   // one frame (tile) of the target, pixels: 960, 540 for the panel frames
uniform int u_tile0;         // tile of the first frame drawn by this call
uniform int u_tiles;         // tiles in the target

// Frame pixel px of frame `frame` in clip space. px is snapped to the rasteriser's 1/256-pixel
// grid first, so a vertex lands on the same sub-pixel position of its tile in every tile (the
// tile offset is a whole number of rows): a frame is rasterised the same wherever it is drawn.
vec4 frame_to_clip(vec2 px, int frame) {
    px = floor(px * 256.0 + 0.5) / 256.0;
    float tile = float(u_tile0 + frame);
    float x = px.x / u_frame_size.x * 2.0 - 1.0;
    float y = (tile * u_frame_size.y + px.y) / (u_frame_size.y * float(u_tiles)) * 2.0 - 1.0;
    return vec4(x, y, 0.0, 1.0);
}

#if defined FRAGMENT_SHADER
// This fragment's position in its frame's pixels (frame_to_clip's px), from its window position
// alone: exact, and the same in every tile. Shapes are computed from it instead of from
// interpolated varyings, whose rounding depends on where the tile is.
vec2 frame_pixel() {
    float tile = floor(gl_FragCoord.y / u_frame_size.y);
    return vec2(gl_FragCoord.x, gl_FragCoord.y - tile * u_frame_size.y);
}
#endif

// Per-frame model numbers: one row per frame, one column per value slot (see layout.py).
uniform sampler2D t_values;
float frame_value(int frame, int slot) {
    return texelFetch(t_values, ivec2(slot, frame), 0).r;
}

// Static item descriptors: column = item, rows 0..3 = geometry, colour a, colour b, binding.
uniform sampler2D t_items;
vec4 item_row(int item, int row) {
    return texelFetch(t_items, ivec2(item, row), 0);
}

// binding.y / binding.z: "this item is matched when value[y] == z" (e.g. the executed action).
bool item_matched(int frame, vec4 binding) {
    return binding.y >= 0.0 && abs(frame_value(frame, int(binding.y)) - binding.z) < 0.5;
}

#if defined VERTEX_SHADER
// Instanced item programs draw u_items items from item u_item0 on for every frame:
// instance = frame * u_items + (item - u_item0).
uniform int u_items;
uniform int u_item0;
void instance_frame_item(out int frame, out int item) {
    frame = gl_InstanceID / u_items;
    item = u_item0 + gl_InstanceID - frame * u_items;
}

// Corner of a 4-vertex triangle strip: (0,0) (1,0) (0,1) (1,1).
vec2 quad_corner() {
    return vec2(float(gl_VertexID & 1), float(gl_VertexID >> 1));
}
#endif
