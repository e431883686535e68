#version 330 core
// The game screen: one quad per frame sampling its own layer of the screen array, nearest texel.
#include "common.glsl"

#if defined VERTEX_SHADER
uniform vec4 u_rect;            // x, y, w, h in frame pixels
uniform vec2 u_screen_size;     // 160, 210
out vec2 v_texel;
flat out int v_layer;

void main() {
    vec2 corner = quad_corner();
    v_texel = corner * u_screen_size;
    v_layer = gl_InstanceID;
    gl_Position = frame_to_clip(u_rect.xy + corner * u_rect.zw, gl_InstanceID);
}

#elif defined FRAGMENT_SHADER
uniform sampler2DArray t_screens;
uniform vec2 u_screen_size;
in vec2 v_texel;
flat in int v_layer;
out vec4 f_color;

void main() {
    // nearest filtering; texture() is several times cheaper than texelFetch on llvmpipe
    f_color = vec4(texture(t_screens, vec3(v_texel / u_screen_size, float(v_layer))).rgb, 1.0);
}
#endif
