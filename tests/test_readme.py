"""The README's Python API block runs as written (on the demo zoo, with a smaller n)."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_api_block_runs(tmp_path, capsys):
    """It once read ``engine.pre_sd``, which the engine does not have (an AttributeError)."""
    text = README.read_text()
    block = re.search(r"## Python API\s+```python\n(.*?)```", text, re.S).group(1)
    assert "n=128" in block and 'Store("results.sqlite")' in block
    code = block.replace("n=128", "n=16").replace('Store("results.sqlite")',
                                                  f'Store({str(tmp_path / "r.sqlite")!r})')
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    first = lines[0].split()
    assert 0 <= float(first[1]) <= float(first[0]) <= 1 and first[2] == "pgd-10"
    assert [float(l.split()[0]) for l in lines[1:4]] == [0.0, 0.5, 1.0]
    assert float(lines[4]) > 0   # the norm of the extracted task vector
