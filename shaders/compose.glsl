#version 330 core
// Progress video: frames of the frame renderer's tiled target, each scaled into its own
// rectangle of a larger frame (one instanced quad per frame). Both targets keep a frame's top row
// at its lowest GL row (passes.Target), so rows map straight through. At a reduced scale each
// output pixel is the mean of 2x2 bilinear taps (an area filter, no mipmaps needed): at 1/2 that
// is exactly the mean of its 2x2 source texels.

#if defined VERTEX_SHADER
uniform vec2 u_dst_size;        // the output frame, pixels
uniform int u_tiles;            // frames (tiles) in the source target
uniform vec4 u_rects[16];       // per instance: x, y (top), w, h in output pixels
uniform int u_src_tiles[16];    // per instance: the source frame's tile
out vec2 v_uv;

void main() {
    vec2 corner = vec2(float(gl_VertexID & 1), float(gl_VertexID >> 1));
    vec4 rect = u_rects[gl_InstanceID];
    v_uv = vec2(corner.x, (float(u_src_tiles[gl_InstanceID]) + corner.y) / float(u_tiles));
    gl_Position = vec4((rect.xy + corner * rect.zw) / u_dst_size * 2.0 - 1.0, 0.0, 1.0);
}

#elif defined FRAGMENT_SHADER
uniform sampler2D t_frame;
uniform int u_taps;             // 1: one sample (scale >= 1); 2: 2x2 taps (scale < 1)
uniform vec2 u_tap_offset;      // a quarter of an output pixel in source texture coordinates
in vec2 v_uv;
out vec4 f_color;

void main() {
    if (u_taps == 1) {
        f_color = vec4(texture(t_frame, v_uv).rgb, 1.0);
        return;
    }
    vec2 q = u_tap_offset;
    vec3 sum = texture(t_frame, v_uv + vec2(-q.x, -q.y)).rgb + texture(t_frame, v_uv + vec2(q.x, -q.y)).rgb
             + texture(t_frame, v_uv + vec2(-q.x, q.y)).rgb + texture(t_frame, v_uv + vec2(q.x, q.y)).rgb;
    f_color = vec4(0.25 * sum, 1.0);
}
#endif
