"""The GLSL of :mod:`.render`: the weak-perspective vertex shader and the lighting fragment shader.

The vertex shader turns the head about the neck (``rotation``, ``pivot``), scales and shifts it to pixels
(``scale``, ``centre``) and flips y so that the framebuffer reads back in image order; depth is the posed z.

The fragment shader is compiled in variants (``{eye}``, ``{inside}`` replaced by 0 or 1): a CPU rasteriser runs
every branch of a shader whether taken or not, so each kind of surface gets only its own code. Colours arrive
linear (the squares of the sRGB-ish values) and leave as their square roots: gamma 2, cheaper than 2.2 per pixel.
Two-sided lighting: a normal facing away is flipped (the mouth socket is seen from inside).
"""

VERTEX_SHADER = """
#version 330
in vec3 in_position;
in vec3 in_normal;
in vec2 in_uv;
in float in_eye;
in float in_lip;
uniform mat3 rotation;
uniform vec3 pivot;
uniform float scale;
uniform vec2 centre;
uniform vec2 viewport;
out vec3 v_normal;
out vec2 v_uv;
out float v_eye;
out float v_depth;
out float v_lip;
void main() {
    v_depth = in_position.z;
    v_lip = in_lip;
    vec3 p = rotation * (in_position - pivot) + pivot;
    vec2 pixel = centre + vec2(p.x, -p.y) * scale;
    // y flipped: row 0 of the framebuffer is the top of the image, as numpy wants it
    gl_Position = vec4(pixel.x / viewport.x * 2.0 - 1.0, pixel.y / viewport.y * 2.0 - 1.0, -p.z / 64.0, 1.0);
    v_normal = rotation * in_normal;
    v_uv = in_uv;
    v_eye = in_eye;
}
"""

FRAGMENT_SHADER = """
#version 330
#define EYE {eye}
#define INSIDE {inside}
in vec3 v_normal;
in vec2 v_uv;
in float v_eye;
in float v_depth;
in float v_lip;
uniform vec3 albedo;
uniform vec3 lips;
uniform vec2 cavity;
uniform vec3 iris;
uniform vec3 pupil;
uniform vec2 eye_radii;
uniform float occlusion;
uniform float specular;
uniform float shininess;
uniform bool textured;
uniform sampler2D skin_texture;
uniform vec3 light_direction;
uniform vec3 light_colour;
uniform vec3 ambient;
out vec4 colour;
void main() {
    vec3 n = normalize(v_normal);
    if (n.z < 0.0) n = -n;  // two-sided: the mouth socket is seen from inside
    // colours arrive linear (squared: gamma 2, cheaper than 2.2 on a CPU rasteriser); the texture is squared here
    vec3 base = mix(albedo, lips, v_lip);
    if (textured) {
        base = texture(skin_texture, vec2(v_uv.x, 1.0 - v_uv.y)).rgb;
        base *= base;
    }
#if EYE
    {
        float edge = fwidth(v_eye);
        vec3 ring = iris * mix(1.0, 0.55, smoothstep(0.6 * eye_radii.y, eye_radii.y, v_eye));
        base = mix(pupil, ring, smoothstep(eye_radii.x - edge, eye_radii.x + edge, v_eye));
        base = mix(base, albedo, smoothstep(eye_radii.y - edge, eye_radii.y + edge, v_eye));
    }
#endif
    float diffuse = max(dot(n, light_direction), 0.0);
    vec3 halfway = normalize(light_direction + vec3(0.0, 0.0, 1.0));
    float shine = specular * pow(max(dot(n, halfway), 0.0), shininess) * step(0.0, diffuse);
#if INSIDE
    // inside the mouth light fades with depth behind the front teeth
    float inside = mix(0.12, 1.0, smoothstep(cavity.x, cavity.y, v_depth));
#else
    float inside = 1.0;
#endif
    vec3 linear = (base * (ambient + diffuse * light_colour) + shine * light_colour) * occlusion * inside;
    colour = vec4(sqrt(clamp(linear, 0.0, 1.0)), 1.0);
}
"""
