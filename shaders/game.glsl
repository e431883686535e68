#version 330 core
// The game screen: one quad per frame sampling its own layer of the screen array, nearest texel.
#include "common.glsl"

#if defined VERTEX_SHADER
uniform vec4 u_rect;            // x, y, w, h in frame pixels
flat out int v_layer;

void main() {
    vec2 corner = quad_corner();
    v_layer = gl_InstanceID;
    gl_Position = frame_to_clip(u_rect.xy + corner * u_rect.zw, gl_InstanceID);
}

#elif defined FRAGMENT_SHADER
uniform sampler2DArray t_screens;
uniform vec4 u_rect;
flat in int v_layer;
out vec4 f_color;

void main() {
    // nearest filtering; texture() is several times cheaper than texelFetch on llvmpipe. The
    // coordinate comes from the exact frame pixel, so every tile samples the same texels.
    vec2 uv = (frame_pixel() - u_rect.xy) / u_rect.zw;
    f_color = vec4(texture(t_screens, vec3(uv, float(v_layer))).rgb, 1.0);
}
#endif
