#version 330 core
// Final pass: RGB tiles -> planar I420 (BT.601, limited range), laid out so one tile of the R8
// target (960 x 810) read row by row *is* the Y, U and V planes of one frame back to back.
//
// Compiled twice: without CHROMA it draws one Y quad per tile (one texel per fragment); with
// CHROMA four quads per tile, U and V as two half-width quads each (a 960-byte target row holds
// two 480-byte chroma rows), each fragment the mean of its 2x2 block. This pass runs on GPUs;
// on llvmpipe the encoder threads convert (texelFetch costs several times a texture() there).

#if defined VERTEX_SHADER
uniform ivec2 u_frame_size;     // 960, 540
uniform int u_tiles;            // tiles in the target
flat out int v_plane;           // 0 Y, 1 U, 2 V

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
    vec2 dst0, dst_size;
    if (part == 0) {
        dst0 = vec2(0.0, 0.0);
        dst_size = size;
    } else {
        float right = float((part - 1) & 1);
        float plane = float((part - 1) >> 1);    // 0 U, 1 V
        dst0 = vec2(right * size.x * 0.5, size.y + plane * size.y * 0.25);
        dst_size = vec2(size.x * 0.5, size.y * 0.25);
    }
    v_plane = part == 0 ? 0 : 1 + ((part - 1) >> 1);
    vec2 dst = dst0 + corner * dst_size + vec2(0.0, float(tile) * tile_rows);
    gl_Position = vec4(dst / vec2(size.x, tile_rows * float(u_tiles)) * 2.0 - 1.0, 0.0, 1.0);
}

#elif defined FRAGMENT_SHADER
uniform sampler2D t_rgb;
uniform ivec2 u_frame_size;
flat in int v_plane;
out float f_value;

const vec3 Y_ROW = vec3(65.481, 128.553, 24.966);
const vec3 U_ROW = vec3(-37.797, -74.203, 112.0);
const vec3 V_ROW = vec3(112.0, -93.786, -18.214);

// The source texels are addressed from the fragment's exact window position, not from an
// interpolated coordinate: a frame converts to the same bytes in every tile.
void main() {
    ivec2 p = ivec2(gl_FragCoord.xy);
    int tile_rows = u_frame_size.y * 3 / 2;
    int tile = p.y / tile_rows;
    int row = p.y - tile * tile_rows;           // target row inside this frame's tile
    int src_row0 = tile * u_frame_size.y;
#if defined CHROMA
    int half_w = u_frame_size.x / 2;
    int right = p.x >= half_w ? 1 : 0;
    int plane_rows = u_frame_size.y / 4;
    int line = (row - u_frame_size.y) % plane_rows;      // target row inside the U or V plane
    ivec2 s = ivec2(2 * (p.x - right * half_w), src_row0 + 4 * line + 2 * right);
    vec3 c = 0.25 * (texelFetch(t_rgb, s, 0).rgb + texelFetch(t_rgb, s + ivec2(1, 0), 0).rgb
                     + texelFetch(t_rgb, s + ivec2(0, 1), 0).rgb + texelFetch(t_rgb, s + ivec2(1, 1), 0).rgb);
    f_value = (128.0 + dot(c, v_plane == 1 ? U_ROW : V_ROW)) / 255.0;
#else
    vec3 c = texelFetch(t_rgb, ivec2(p.x, src_row0 + row), 0).rgb;
    f_value = (16.0 + dot(c, Y_ROW)) / 255.0;
#endif
}
#endif
