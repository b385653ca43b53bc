"""DVC stage `render`: `python -m stages.render [--params params.yaml]`."""
import os

from stages._common import run_stage


def _choose_backend(params) -> None:
    # PyOpenGL fixes its platform at first import: decide before the flow imports pyrender.
    os.environ["PYOPENGL_PLATFORM"] = params.render.backend


if __name__ == "__main__":
    run_stage("render", "flows.render:render_flow", before=_choose_backend)
