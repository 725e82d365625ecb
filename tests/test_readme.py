"""The README's "Use SN in your model" example runs as written."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_section_code(title):
    text = README.read_text()
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, f"no python block under '## {title}'"
    return "\n".join(blocks)


def test_use_sn_in_your_model_example_runs(capsys):
    torch.manual_seed(0)
    namespace = {}
    exec(compile(readme_section_code("Use SN in your model"), str(README), "exec"), namespace)
    model = namespace["model"]
    printed = capsys.readouterr().out
    assert printed.count("'layer': '1'") == 6  # 3 ops x (mean, var) of the one SN layer
    assert not model.training
    layer = model[1]
    # the example trained the logits away from their initial value of 1 and set batch-average stats
    assert not torch.equal(layer.mean_weight.detach(), torch.ones(3))
    assert int(layer.num_batches_tracked) == 4
