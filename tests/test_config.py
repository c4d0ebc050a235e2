from __future__ import annotations

import re

import pytest

from explorer.config import (
    AttackSpec,
    EvalSpec,
    MergeSpec,
    SweepSpec,
    eps_label,
    parse_alphas,
    parse_eps,
    parse_options,
)


def test_sweep_spec_json_round_trip_and_stable_digest():
    s = SweepSpec(manifest="m.toml", base="b", natural=("n",), robust=("r1", "r2"),
                  methods=("ties", "dare"), keeps=(0.2, 1.0), attack=AttackSpec("apgd-ce", eps="2/255"),
                  eval=EvalSpec(task="shapes", n=64, seed=3))
    back = SweepSpec.from_json(s.to_json())
    assert back == s
    assert back.digest() == s.digest()
    assert SweepSpec.from_json(s.to_json().replace('"n":64', '"n":65')).digest() != s.digest()


def test_merge_spec_round_trip_with_options():
    m = MergeSpec.from_alpha(0.25, method="stability", keep=0.5, options={"calib_n": 32}.items())
    assert MergeSpec.from_json(m.to_json()) == m
    assert m.option("calib_n") == 32 and m.option("missing", 7) == 7


@pytest.mark.parametrize("text,value", [("4/255", 4 / 255), ("0.5", 0.5), (0, 0.0), ("1", 1.0)])
def test_parse_eps(text, value):
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize("bad,message", [
    ("abc", "eps 'abc' is not a number or a fraction like 4/255"),
    ("4/0", "eps '4/0' is not a number or a fraction like 4/255"),
    ("-1/255", r"eps must lie in \[0, 1\] \(pixel units\), got '-1/255'"),
    ("2", r"eps must lie in \[0, 1\] \(pixel units\), got '2'"),
    ("nan", r"eps must lie in \[0, 1\] \(pixel units\), got 'nan'")])
def test_parse_eps_rejects(bad, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        parse_eps(bad)


def test_eps_label():
    assert eps_label(4 / 255) == "4/255"
    assert AttackSpec("pgd-10", eps="8/255").label == "pgd-10 Linf eps=8/255"
    assert AttackSpec("pgd-10", eps=0).label == "none (clean)"


def test_l2_radii_print_as_plain_floats():
    """An L2 radius is not counted in grey levels: 8 is ``8``, never ``2040/255`` (issue 11.8)."""
    assert AttackSpec("pgd-10", eps=8, norm="L2").label == "pgd-10 L2 eps=8"
    assert AttackSpec("apgd-ce", eps=0.5, norm="L2").label == "apgd-ce L2 eps=0.5"
    assert AttackSpec("pgd-10", eps=1.0, norm="L2").label == "pgd-10 L2 eps=1"
    assert eps_label(8, "L2") == "8" and eps_label(4 / 255, "L2") == f"{4 / 255:g}"
    assert AttackSpec("pgd-10", eps=1.0).label == "pgd-10 Linf eps=255/255"


def test_parse_alphas():
    assert parse_alphas("0:1:11")[3] == pytest.approx(0.3)
    assert len(parse_alphas("0:1:11")) == 11
    assert parse_alphas("0, 0.5,1") == (0.0, 0.5, 1.0)
    assert parse_alphas(" 0 : 1 : 5 ") == (0.0, 0.25, 0.5, 0.75, 1.0)
    # a range may run downwards (robust to natural); a count of 1 is its start; empty items are skipped
    assert parse_alphas("1:0:5") == (1.0, 0.75, 0.5, 0.25, 0.0)
    assert parse_alphas("0.3:1:1") == (0.3,)
    assert parse_alphas("0,1,") == (0.0, 1.0)


FORMS = re.escape("; use start:stop:count, both ends included (e.g. 0:1:11), or a comma list of numbers "
                  "in [0, 1] (e.g. 0,0.5,1)") + "$"


@pytest.mark.parametrize("text,problem", [
    ("", "alphas '': no values"),
    ("   ", "alphas '': no values"),
    (" , ", "alphas ',': no values"),
    ("0:1:0", "alphas '0:1:0': count must be a whole number from 1 to 100000, got '0'"),
    ("0:1:-3", "alphas '0:1:-3': count must be a whole number from 1 to 100000, got '-3'"),
    ("0:1:2.5", "alphas '0:1:2.5': count must be a whole number from 1 to 100000, got '2.5'"),
    ("0:1:1000000", "alphas '0:1:1000000': count must be a whole number from 1 to 100000, got '1000000'"),
    ("0:1:z", "alphas '0:1:z': count must be a whole number from 1 to 100000, got 'z'"),
    ("0:1:2:3", "alphas '0:1:2:3': a range has 3 parts start:stop:count, got 4"),
    ("0:1", "alphas '0:1': a range has 3 parts start:stop:count, got 2"),
    ("a:b:c", "alphas 'a:b:c': start 'a' is not a number"),
    ("0:2:3", "alphas '0:2:3': stop 2 is outside [0, 1]"),
    ("0:nan:3", "alphas '0:nan:3': stop 'nan' is not a finite number"),
    ("a,b", "alphas 'a,b': 'a' is not a number"),
    ("x,1", "alphas 'x,1': 'x' is not a number"),
    ("nan", "alphas 'nan': 'nan' is not a finite number"),
    ("0,inf", "alphas '0,inf': 'inf' is not a finite number"),
    ("1.5", "alphas '1.5': 1.5 is outside [0, 1]"),
    ("0.5,-0.1", "alphas '0.5,-0.1': -0.1 is outside [0, 1]"),
    ("9" * 50, f"alphas '{'9' * 40}...': 1e+50 is outside [0, 1]"),   # a long text is cut at 40 characters
])
def test_bad_alphas_name_the_problem_and_the_forms(text, problem):
    """Each mistake is one line: what is wrong, then the accepted forms (never Python's float() message)."""
    with pytest.raises(ValueError, match="^" + re.escape(problem) + FORMS) as err:
        parse_alphas(text)
    assert "\n" not in str(err.value) and "could not convert" not in str(err.value)


def test_from_alpha_endpoints_and_shares():
    assert MergeSpec.from_alpha(0.0).lambdas == (1.0, 0.0)
    assert MergeSpec.from_alpha(1.0).lambdas == (0.0, 1.0)
    assert MergeSpec.from_alpha(0.5, n_natural=2, n_robust=1, scale=2.0).lambdas == (0.5, 0.5, 1.0)


@pytest.mark.parametrize("kwargs,message", [
    ({"keep": 0.0}, r"keep must lie in \(0, 1\], got 0.0"), ({"keep": 1.5}, r"keep must lie in \(0, 1\], got 1.5"),
    ({"scope": "layer"}, "scope must be 'global' or 'per_tensor', got 'layer'"),
    ({"alpha": 2.0}, r"alpha must lie in \[0, 1\], got 2.0")])
def test_merge_spec_rejects_out_of_range(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        MergeSpec(**kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"lambdas": (float("nan"), 1.0)}, "lambdas must be finite numbers, got (nan, 1.0)"),
    ({"lambdas": (0.0, float("inf"))}, "lambdas must be finite numbers, got (0.0, inf)"),
    ({"options": (("kappa", float("inf")),)}, "method option kappa must be a finite number, got inf"),
])
def test_merge_spec_rejects_non_finite(kwargs, message):
    """NaN/inf coefficients were accepted and every point failed after the merge; now the spec says it."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        MergeSpec(**kwargs)


def test_non_finite_scale_seed_and_option_text_are_refused():
    with pytest.raises(ValueError, match=r"^scale must be a finite number, got nan$"):
        SweepSpec(manifest="m.toml", base="b", natural=("n",), robust=("r",), scale=float("nan"))
    with pytest.raises(ValueError, match=r"^lambdas must be finite numbers, got \(inf, inf\)$"):
        MergeSpec.from_alpha(0.5, scale=float("inf"))
    with pytest.raises(ValueError, match=r"^seed must be >= 0, got -1$"):
        EvalSpec(seed=-1)
    with pytest.raises(ValueError, match=r"^seed must be >= 0, got -3$"):
        AttackSpec("none", eps=0, seed=-3)
    with pytest.raises(ValueError, match=r"^method option q must be a finite number, got 'NaN'$"):
        parse_options("kappa=2, q=NaN")
    assert parse_options("kappa=2, q=0.05") == (("kappa", 2), ("q", 0.05))


def test_eval_spec_rejects_empty():
    with pytest.raises(ValueError, match="^sample count n must be >= 1, got 0$"):
        EvalSpec(n=0)


def test_resolve_defaults_falls_back_and_feeds_the_specs():
    from explorer.config import AttackSpec, Defaults, EvalSpec, resolve_defaults

    d = resolve_defaults({}, ["pre", "other"])
    assert d == Defaults(task="shapes", eps="4/255", attack="pgd-10", n=256, base="pre")
    # The spec dataclasses default to the same values (one source).
    assert AttackSpec() == d.attack_spec() and EvalSpec() == d.eval_spec()
    assert AttackSpec().eps == 4 / 255 == d.eps_value
    m = resolve_defaults({"task": "digits", "eps": 0.01, "attack": "fgsm", "n": 32, "base": "other",
                          "extra": 1}, ["pre"])
    assert (m.task, m.eps, m.eps_value, m.attack, m.n, m.base) == ("digits", "0.01", 0.01, "fgsm", 32, "other")
    # Given values win over the defaults; None falls back.
    a = m.attack_spec(None, "8/255", "L2", 3)
    assert (a.name, a.eps, a.norm, a.seed) == ("fgsm", 8 / 255, "L2", 3)
    assert m.eval_spec("shapes", None, 1, "train") == EvalSpec("shapes", 32, 1, "train")
    assert resolve_defaults(None).base is None


@pytest.mark.parametrize("table, match", [({"eps": "four"}, "eps"), ({"n": 0}, "n must be")])
def test_resolve_defaults_rejects_bad_tables(table, match):
    from explorer.config import resolve_defaults

    with pytest.raises(ValueError, match=match):
        resolve_defaults(table)


def test_a_point_is_one_record_for_the_page_the_executors_and_the_engine():
    """``PointSpec`` replaced the page's ``Selection`` and the executors' ``PointJob``: names in
    lambda order, lists frozen to tuples (hashable: a job's affinity), the sweep id not part of it."""
    from explorer.config import PointSpec

    ms, attack, ev = MergeSpec.from_alpha(0.5), AttackSpec("pgd-3", eps=4 / 255), EvalSpec("shapes", n=8)
    a = PointSpec(["nat"], ["rob1", "rob2"], ms, attack, ev, base="base", sweep="s1")
    b = PointSpec(("nat",), ("rob1", "rob2"), ms, attack, ev, base="base", sweep="s2")
    assert a.names == ("nat", "rob1", "rob2") and a.natural == ("nat",)
    assert a == b and hash(a) == hash(b) and a.sweep == "s1"
    assert a != PointSpec(("nat",), ("rob1", "rob2"), ms, attack, ev, base="other")
