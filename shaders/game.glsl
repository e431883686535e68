#version 330 core
// The game screen: one quad per frame sampling its own layer of the screen array, nearest texel.
// With SALIENCY defined, the frame's actor and critic saliency maps (layer of t_saliency: R actor,
// G critic, in [0, 1]) are blended over it, each in its own colour, with opacity u_alpha x map.
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
#if defined SALIENCY
uniform sampler2DArray t_saliency;  // 84 x 84 maps, bilinear, clamped to the edge
uniform vec3 u_actor_colour;
uniform vec3 u_critic_colour;
uniform float u_alpha;              // opacity where a map is 1
#endif
flat in int v_layer;
out vec4 f_color;

void main() {
    // nearest filtering; texture() is several times cheaper than texelFetch on llvmpipe. The
    // coordinate comes from the exact frame pixel, so every tile samples the same texels.
    vec2 uv = (frame_pixel() - u_rect.xy) / u_rect.zw;
    vec3 rgb = texture(t_screens, vec3(uv, float(v_layer))).rgb;
#if defined SALIENCY
    // the 84 x 84 observation is the whole 210 x 160 screen resized (SB3's WarpFrame), so map
    // texel centres sit at (i + 0.5) / 84 of the game rectangle: the same uv, sampled bilinearly
    vec2 w = u_alpha * clamp(texture(t_saliency, vec3(uv, float(v_layer))).rg, 0.0, 1.0);
    // both maps alike (neither hides the other): their colours mixed by weight, laid over the
    // game with their summed opacity (at most 1); where both are 0 the game is unchanged
    float total = w.r + w.g;
    vec3 colour = (u_actor_colour * w.r + u_critic_colour * w.g) / max(total, 1e-6);
    rgb = mix(rgb, colour, min(total, 1.0));
#endif
    f_color = vec4(rgb, 1.0);
}
#endif
