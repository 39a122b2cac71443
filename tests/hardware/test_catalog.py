import pytest

from swarm.errors import HardwareError
from swarm.hardware import catalog, gpu_spec


def test_catalog_has_every_csv_row_with_positive_figures():
    specs = catalog()
    assert len(specs) == 13
    for spec in specs.values():
        assert spec.tflops > 0 and spec.memory_gb > 0 and spec.memory_bandwidth_gbs > 0


@pytest.mark.parametrize("name, canonical", [
    ("A40", "A40"), ("a40", "A40"), ("RTX 3090 Ti", "RTX3090Ti"), ("3090Ti", "RTX3090Ti"),
    ("NVIDIA A100", "A100-80G"), ("rtx a6000", "A6000"), ("H100", "H100"),
])
def test_gpu_names_are_forgiving(name, canonical):
    assert gpu_spec(name).name == canonical


def test_paper_table_figures():
    assert gpu_spec("A100-80G").memory_gb == 80
    assert gpu_spec("A40").memory_bandwidth_gbs == 696
    assert gpu_spec("A5000").price_per_hour == pytest.approx(0.223)


def test_unknown_gpu_names_the_choices():
    with pytest.raises(HardwareError, match=r"unknown GPU 'B300'.*A40"):
        gpu_spec("B300")
