import numpy as np
import pytest

from swarm.errors import WorkloadError
from swarm.workloads import load_workload, parse_workload_csv


def test_azure_traces_match_their_published_statistics():
    conv, code = load_workload("azure-conv"), load_workload("azure-code")
    assert conv.num_requests == 19366 and code.num_requests == 8819
    assert conv.mean_prompt_tokens == pytest.approx(1155, abs=1)
    assert conv.mean_output_tokens == pytest.approx(211, abs=1)
    assert code.mean_prompt_tokens == pytest.approx(2048, abs=1)
    assert conv.rate_rps == pytest.approx(5.5, abs=0.1) and code.rate_rps == pytest.approx(2.6, abs=0.1)
    assert conv.arrival_s[0] == 0 and np.all(np.diff(conv.arrival_s) >= 0)


def test_mooncake_trace_loads():
    w = load_workload("mooncake-conv")
    assert w.num_requests == 12031 and w.mean_prompt_tokens == pytest.approx(12035, rel=0.01)


def test_resampling_is_seeded_and_near_the_rate():
    w = load_workload("azure-conv")
    a, b = w.at_rate(10, 600, seed=3), w.at_rate(10, 600, seed=3)
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.prompt_tokens, b.prompt_tokens)
    assert a.num_requests == pytest.approx(6000, rel=0.1)
    assert w.scaled(11.0).rate_rps == pytest.approx(11.0)


def test_csv_file(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n1.5,10,3\n0.5,20,4\n")
    w = load_workload(path)
    assert list(w.arrival_s) == [0.0, 1.0] and list(w.prompt_tokens) == [20, 10]


@pytest.mark.parametrize("text, message", [
    ("a,b,c\n1,2,3\n", "header must be"),
    ("arrival_s,prompt_tokens,output_tokens\n1,x,3\n", "line 2"),
    ("arrival_s,prompt_tokens,output_tokens\n1,0,3\n", "line 2: token counts must be"),
    ("arrival_s,prompt_tokens,output_tokens\n", "no requests"),
])
def test_bad_csv_names_the_line(text, message):
    with pytest.raises(WorkloadError, match=message):
        parse_workload_csv(text, name="w", source="w.csv")


def test_unknown_workload():
    with pytest.raises(WorkloadError, match="azure-conv"):
        load_workload("sharegpt")
