#version 330 core
// Preview window: show one rendered frame scaled into the window with its aspect kept.

#if defined VERTEX_SHADER
uniform vec4 u_viewport_rect;   // x0, y0, x1, y1 in clip space: the letterboxed area
out vec2 v_uv;

void main() {
    vec2 corner = vec2(float(gl_VertexID & 1), float(gl_VertexID >> 1));
    v_uv = vec2(corner.x, 1.0 - corner.y);   // frame row 0 is the top of the picture
    gl_Position = vec4(mix(u_viewport_rect.xy, u_viewport_rect.zw, corner), 0.0, 1.0);
}

#elif defined FRAGMENT_SHADER
uniform sampler2D t_frame;
uniform vec4 u_uv_rect;         // the frame's tile inside the target: u0, v0, u1, v1
in vec2 v_uv;
out vec4 f_color;

void main() {
    f_color = vec4(texture(t_frame, mix(u_uv_rect.xy, u_uv_rect.zw, v_uv)).rgb, 1.0);
}
#endif
