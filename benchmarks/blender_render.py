"""Blender side of benchmarks/render.py: Cycles renders of the same objects and views.

Run by render.py, not by hand:

    blender -b --factory-startup -noaudio --python-exit-code 1 \
        -P benchmarks/blender_render.py -- JOB.json RESULT.json

JOB.json: {"resolution", "samples", "threads" (0 = Blender's automatic count), "out_dir",
"objects": [{"uid", "glb", "lo", "hi", "views": [{"view_id", "c2w" (16, row-major,
dreamline's Y-up world), "fov_deg"}]}]}.

Per view Cycles writes, through compositor File Output nodes, what the dreamline renderer
produces: RGBA (PNG, 8 bit), depth (Z pass, float EXR), world normals (Normal pass, EXR)
and the CCM (an AOV written by every material: the shading point's position mapped with
the object's (lo, hi) box, the normaliser the dreamline renderer uses). Only the
bpy.ops.render.render() call is timed per view; startup (process launch, factory scene,
a warm-up render of a small sphere that loads the Cycles kernels) and the per-object
import are timed separately. After an object's views are timed, its files are read back
into one npz (not timed) so render.py can compare them with its own buffers.

Runs on the Blender's own Python (3.4 on Debian uses the system python3 and python3-numpy).
"""
import json
import math
import sys
import time
from pathlib import Path

T_SCRIPT = time.time()  # wall clock, comparable with the parent's spawn time

import numpy  # noqa: E402

# Blender 3.4's glTF importer still uses numpy.bool, removed in numpy 1.24 (Debian 12 ships 1.24).
numpy.bool = bool

import bpy  # noqa: E402
from mathutils import Matrix  # noqa: E402

# glTF/dreamline world is Y-up; the importer converts to Blender's Z-up as
# (x, y, z) -> (x, -z, y). Cameras look down their local -Z with +Y up in both, so a
# dreamline c2w becomes a Blender matrix_world by this change of world basis alone.
Y_UP_TO_Z_UP = Matrix(((1, 0, 0, 0), (0, 0, -1, 0), (0, 1, 0, 0), (0, 0, 0, 1)))
AOV = "ccm"


def setup_scene(job: dict):
    """Empty Cycles scene: camera with a sun attached (a headlight, like dreamline's), grey
    world for ambient light, passes Z + Normal + the CCM AOV, File Output nodes."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    res = int(job["resolution"])
    r = scene.render
    r.engine = "CYCLES"
    r.resolution_x = r.resolution_y = res
    r.resolution_percentage = 100
    r.film_transparent = True
    # Only the camera moves between an object's views: keep the BVH and synced data.
    r.use_persistent_data = True
    if job["threads"]:
        r.threads_mode, r.threads = "FIXED", int(job["threads"])
    c = scene.cycles
    c.device = "CPU"
    c.samples = int(job["samples"])
    c.use_adaptive_sampling = False  # exactly `samples` per pixel, as Cap3D's setting reads
    c.use_denoising = False

    world = bpy.data.worlds.new("ambient")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.35, 0.35, 0.35, 1.0)
    scene.world = world

    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    cam.data.sensor_fit = "VERTICAL"  # dreamline's fov is vertical
    cam.data.clip_start, cam.data.clip_end = 0.01, 100.0
    scene.collection.objects.link(cam)
    scene.camera = cam
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.data.energy = 3.0
    sun.parent = cam  # identity local transform: shines along the view direction
    scene.collection.objects.link(sun)

    layer = scene.view_layers[0]
    layer.use_pass_z = True
    layer.use_pass_normal = True
    aov = layer.aovs.add()
    aov.name, aov.type = AOV, "COLOR"

    scene.use_nodes = True
    tree = scene.node_tree
    for n in list(tree.nodes):
        tree.nodes.remove(n)
    rl = tree.nodes.new("CompositorNodeRLayers")
    comp = tree.nodes.new("CompositorNodeComposite")
    tree.links.new(rl.outputs["Image"], comp.inputs["Image"])
    out = tree.nodes.new("CompositorNodeOutputFile")
    out.format.file_format = "OPEN_EXR"
    out.format.color_depth = "32"
    out.format.exr_codec = "ZIP"
    out.file_slots.clear()
    for slot, socket in (("rgba", "Image"), ("depth", "Depth"), ("normal", "Normal"), ("ccm", AOV)):
        out.file_slots.new(slot)
        tree.links.new(rl.outputs[socket], out.inputs[slot])
    rgba = out.file_slots["rgba"]
    rgba.use_node_format = False
    rgba.format.file_format, rgba.format.color_mode, rgba.format.color_depth = "PNG", "RGBA", "8"
    return scene, cam, out


def warm_up(scene, out_node, out_dir: Path) -> None:
    """One render of a small sphere, so kernel loading is not billed to the first view."""
    out_node.base_path = str(out_dir / "warmup")
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.3)
    sphere = bpy.context.active_object
    scene.camera.matrix_world = Y_UP_TO_Z_UP @ Matrix.Translation((0, 0, 2))
    scene.camera.data.angle_y = math.radians(40)
    bpy.ops.render.render()
    bpy.data.objects.remove(sphere, do_unlink=True)


def ccm_material_nodes(material, lo, hi) -> None:
    """Add an AOV output = canonical coordinate of the shading point, in the GLB's frame."""
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    geo = nodes.new("ShaderNodeNewGeometry")
    sep = nodes.new("ShaderNodeSeparateXYZ")
    comb = nodes.new("ShaderNodeCombineXYZ")
    neg = nodes.new("ShaderNodeMath")
    neg.operation = "MULTIPLY"
    neg.inputs[1].default_value = -1.0
    links.new(geo.outputs["Position"], sep.inputs[0])
    # Blender world (x, y, z) is glTF (x, z, -y): undo the importer's axis change.
    links.new(sep.outputs["X"], comb.inputs["X"])
    links.new(sep.outputs["Z"], comb.inputs["Y"])
    links.new(sep.outputs["Y"], neg.inputs[0])
    links.new(neg.outputs[0], comb.inputs["Z"])
    sub = nodes.new("ShaderNodeVectorMath")
    sub.operation = "SUBTRACT"
    sub.inputs[1].default_value = lo
    mul = nodes.new("ShaderNodeVectorMath")
    mul.operation = "MULTIPLY"
    # A flat axis maps to 0, as dreamline.rendering.renderer.to_canonical does.
    mul.inputs[1].default_value = [1.0 / (h - l) if h - l > 1e-12 else 1.0 for l, h in zip(lo, hi)]
    links.new(comb.outputs[0], sub.inputs[0])
    links.new(sub.outputs[0], mul.inputs[0])
    aov = nodes.new("ShaderNodeOutputAOV")
    aov.name = AOV  # on this node `name` is the AOV's name
    links.new(mul.outputs[0], aov.inputs["Color"])


def import_object(obj: dict) -> list:
    """Remove the previous object, import this GLB, give every material the CCM AOV."""
    for o in [o for o in bpy.data.objects if o.type not in ("CAMERA", "LIGHT")]:
        bpy.data.objects.remove(o, do_unlink=True)
    for block in (bpy.data.meshes, bpy.data.materials, bpy.data.images):
        for item in [i for i in block if i.users == 0]:
            block.remove(item)
    before = set(bpy.data.objects)
    bpy.ops.import_scene.gltf(filepath=obj["glb"])
    new = [o for o in bpy.data.objects if o not in before]
    lo, hi = obj["lo"], obj["hi"]
    for o in new:
        if o.type != "MESH":
            continue
        if not o.data.materials:
            o.data.materials.append(bpy.data.materials.new("grey"))
        for m in o.data.materials:
            if m is not None:
                ccm_material_nodes(m, lo, hi)
    return new


def render_views(scene, cam, out_node, obj: dict, folder: Path) -> list[dict]:
    times = []
    for v in obj["views"]:
        c2w = Matrix([v["c2w"][4 * i:4 * i + 4] for i in range(4)])
        cam.matrix_world = Y_UP_TO_Z_UP @ c2w
        cam.data.angle_y = math.radians(v["fov_deg"])
        out_node.base_path = str(folder / v["view_id"])  # a folder: <slot><frame>.<ext> in it
        t, c = time.perf_counter(), time.process_time()  # process_time: all threads
        bpy.ops.render.render()
        times.append({"view_id": v["view_id"], "wall_s": time.perf_counter() - t,
                      "cpu_s": time.process_time() - c})
    return times


def _pixels(path: Path, channels: int) -> numpy.ndarray:
    img = bpy.data.images.load(str(path))
    img.colorspace_settings.name = "Non-Color"  # raw stored values, no view transform
    w, h = img.size
    buf = numpy.empty(w * h * 4, dtype=numpy.float32)
    img.pixels.foreach_get(buf)
    bpy.data.images.remove(img)
    # Blender images are stored bottom row first; numpy images top row first.
    return buf.reshape(h, w, 4)[::-1, :, :channels].copy()


def read_back(obj: dict, folder: Path, frame: int) -> None:
    """Stack the view files of one object into folder/blender.npz for the comparison."""
    arrays = {k: [] for k in ("alpha", "depth", "normal", "ccm")}
    for v in obj["views"]:
        view = folder / v["view_id"]
        arrays["alpha"].append(_pixels(view / f"rgba{frame:04d}.png", 4)[..., 3])
        arrays["depth"].append(_pixels(view / f"depth{frame:04d}.exr", 1)[..., 0])
        arrays["normal"].append(_pixels(view / f"normal{frame:04d}.exr", 3))
        arrays["ccm"].append(_pixels(view / f"ccm{frame:04d}.exr", 3))
    numpy.savez(folder / "blender.npz", view_id=numpy.array([v["view_id"] for v in obj["views"]]),
                **{k: numpy.stack(a) for k, a in arrays.items()})


def main() -> None:
    argv = sys.argv[sys.argv.index("--") + 1:]
    job = json.loads(Path(argv[0]).read_text())
    out_dir = Path(job["out_dir"])
    result = {"t_script_start": T_SCRIPT, "blender": bpy.app.version_string,
              "numpy": numpy.__version__}

    t, c = time.perf_counter(), time.process_time()
    scene, cam, out_node = setup_scene(job)
    warm_up(scene, out_node, out_dir)
    result["setup_s"], result["setup_cpu_s"] = time.perf_counter() - t, time.process_time() - c
    result["threads"] = scene.render.threads  # the count Cycles actually uses
    result["objects"] = []
    for obj in job["objects"]:
        folder = out_dir / obj["uid"]
        folder.mkdir(parents=True, exist_ok=True)
        t, c = time.perf_counter(), time.process_time()
        imported = import_object(obj)
        import_s, import_cpu_s = time.perf_counter() - t, time.process_time() - c
        faces = sum(len(o.data.polygons) for o in imported if o.type == "MESH")
        views = render_views(scene, cam, out_node, obj, folder)
        read_back(obj, folder, scene.frame_current)
        result["objects"].append({"uid": obj["uid"], "import_s": import_s,
                                  "import_cpu_s": import_cpu_s, "faces": faces, "views": views})
    Path(argv[1]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
