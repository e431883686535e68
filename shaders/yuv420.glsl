#version 330 core
// Final pass: RGB tiles -> planar I420 (BT.601, limited range), laid out so one tile of the R8
// target (960 x 810) read row by row *is* the Y, U and V planes of one frame back to back.
//
// Compiled twice: without CHROMA it draws one Y quad per tile (nearest fetch); with CHROMA four
// quads per tile, U and V as two half-width quads each (a 960-byte target row holds two
// 480-byte chroma rows), fetched bilinearly. Each quad maps target pixels to source pixels linearly, so
// the vertex stage does all the addressing and a fragment is one bilinear fetch: at a chroma
// sample the fetch sits on the corner of a 2x2 block and returns its average. (On llvmpipe
// texelFetch and integer arithmetic cost several times a plain texture() fetch.)

#if defined VERTEX_SHADER
uniform ivec2 u_frame_size;     // 960, 540
uniform int u_tiles;            // tiles in the target
flat out int v_plane;           // 0 Y, 1 U, 2 V
out vec2 v_uv;

void main() {
    vec2 corner = vec2(float(gl_VertexID & 1), float(gl_VertexID >> 1));
#if defined CHROMA
    int tile = gl_InstanceID >> 2;
    int part = 1 + (gl_InstanceID & 3);          // 1 U-left, 2 U-right, 3 V-left, 4 V-right
#else
    int tile = gl_InstanceID;
    int part = 0;
#endif
    vec2 size = vec2(u_frame_size);
    float tile_rows = size.y * 1.5;
    float src_row0 = float(tile) * size.y;
    vec2 dst0, dst_size, src;
    if (part == 0) {
        dst0 = vec2(0.0, 0.0);
        dst_size = size;
        src = corner * size;
    } else {
        float right = float((part - 1) & 1);
        float plane = float((part - 1) >> 1);    // 0 U, 1 V
        dst0 = vec2(right * size.x * 0.5, size.y + plane * size.y * 0.25);
        dst_size = vec2(size.x * 0.5, size.y * 0.25);
        vec2 local = corner * dst_size;          // target pixels inside this quad
        src = vec2(local.x * 2.0, local.y * 4.0 + right * 2.0 - 1.0);
    }
    v_plane = part == 0 ? 0 : 1 + ((part - 1) >> 1);
    v_uv = (src + vec2(0.0, src_row0)) / vec2(size.x, size.y * float(u_tiles));
    vec2 dst = dst0 + corner * dst_size + vec2(0.0, float(tile) * tile_rows);
    gl_Position = vec4(dst / vec2(size.x, tile_rows * float(u_tiles)) * 2.0 - 1.0, 0.0, 1.0);
}

#elif defined FRAGMENT_SHADER
uniform sampler2D t_rgb;        // nearest for Y, bilinear for CHROMA (sampler objects)
flat in int v_plane;
in vec2 v_uv;
out float f_value;

const vec3 Y_ROW = vec3(65.481, 128.553, 24.966);
const vec3 U_ROW = vec3(-37.797, -74.203, 112.0);
const vec3 V_ROW = vec3(112.0, -93.786, -18.214);

void main() {
    vec3 c = texture(t_rgb, v_uv).rgb;
#if defined CHROMA
    f_value = (128.0 + dot(c, v_plane == 1 ? U_ROW : V_ROW)) / 255.0;
#else
    f_value = (16.0 + dot(c, Y_ROW)) / 255.0;
#endif
}
#endif
