import subprocess
import sys

import llm_dit


def test_every_exported_name_resolves():
    for name in llm_dit.__all__:
        assert getattr(llm_dit, name) is not None


def test_import_is_light():
    code = "import sys, llm_dit; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_the_api_shows_no_library_progress_bars_or_logs_the_cli_hides(zoo, tmp_path):
    """One output policy for the CLI and the API (models.quiet_libraries where models load). Before: the API printed
    transformers' "Loading weights" bars on stderr, which only the CLI's entry point turned off."""
    models = {"models.zimage": str(zoo / "zimage"), "models.vl": str(zoo / "qwen3-vl")}
    code = (
        "from llm_dit import Generator, load_config\n"
        "from PIL import Image\n"
        f"cfg = load_config(overrides={models!r} | {{'generation.width': 32, 'generation.height': 32,"
        " 'generation.steps': 1})\n"
        "Generator(cfg).generate('x', Image.new('RGB', (64, 64), 'red'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Loading" not in proc.stderr and "%|" not in proc.stderr, proc.stderr
