import subprocess
import sys

import llm_dit


def test_every_exported_name_resolves():
    for name in llm_dit.__all__:
        assert getattr(llm_dit, name) is not None


def test_import_is_light():
    code = "import sys, llm_dit; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
