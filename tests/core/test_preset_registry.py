"""The preset registry: one decorator, the `forecache.presets` entry points, and what reads them
(the command line, calibration's knobs, dllm's cache names)."""

import subprocess
import sys
from importlib.metadata import entry_points

import forecache.core as fc
import pytest
import torch
from forecache.core import Blocks, Policy
from forecache.core.calibration import SearchConfig, knob_for, knob_names, search_knob
from forecache.core.cli import main
from forecache.core.forecasters import Reuse
from forecache.core.presets import registry
from forecache.core.presets.registry import build, first_sentence, lookup, preset, preset_info, preset_infos, presets
from forecache.core.testing.toy import ToyAdapter, ToyTransformer, sample, toy_inputs
from forecache.core.triggers.interval import Interval

SCIENCE = {"ab_forecast", "ab_forecast_timed", "taylor_forecast"}
DLLM = {"dllm_cache", "fast_dllm_cache", "fast_dllm"}


@pytest.fixture
def scratch(monkeypatch):
    """A copy of the registry for this test: what it registers is gone afterwards."""
    registry.preset_infos()  # discover first, so the copy holds every domain
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_entry_points_name_core_science_and_dllm():
    found = {ep.name: ep.value for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert found == {"core": "forecache.core.presets", "science": "forecache.science.presets",
                     "dllm": "forecache.dllm"}


def test_core_imports_no_domain_and_the_entry_points_bring_them_in():
    """In a fresh interpreter: importing core registers core's presets only; the first listing
    imports the domains through the entry points."""
    code = (
        "import sys\n"
        "import forecache.core\n"
        "from forecache.core.presets.registry import presets\n"
        "assert not {'forecache.science', 'forecache.dllm'} & set(sys.modules), 'core imported a domain'\n"
        "assert set(presets('core', discover=False)) == set(forecache.core.PRESETS)\n"
        "assert set(presets(discover=False)) == set(forecache.core.PRESETS)\n"
        "found = presets()\n"
        "assert {'forecache.science', 'forecache.dllm'} <= set(sys.modules)\n"
        "print(' '.join(sorted(found)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == set(fc.PRESETS) | SCIENCE | DLLM


def test_the_registry_holds_every_domain_with_its_knob_and_policy_kind():
    import forecache.dllm as dllm
    import forecache.science as science

    infos = preset_infos()
    assert {n for n, i in infos.items() if i.domain == "core"} == set(fc.PRESETS)
    assert {n for n, i in infos.items() if i.domain == "science"} == SCIENCE
    assert {n for n, i in infos.items() if i.domain == "dllm"} == DLLM
    assert list(presets("core").items()) == list(fc.PRESETS.items())  # core's part of the registry, in order
    assert list(fc.PRESETS)[:3] == ["fora", "deepcache", "delta_dit"]
    assert presets("science")["ab_forecast"] is science.ab_forecast
    assert lookup("dllm_cache") is dllm.dllm_cache
    # the knobs calibration used to hard-code, now declared where each preset registers
    assert knob_names() == {
        **{m: "threshold" for m in ("teacache", "magcache", "easycache", "fbcache", "dbcache", "speca")},
        "foresight": "gamma",
        **{m: "interval" for m in ("fora", "deepcache", "delta_dit", "toca", "taylorseer", "hicache",
                                   "abcache", "foca", "freqca", *SCIENCE)},
    }
    assert infos["pab"].knob is None and infos["fastercache"].knob is None
    assert all(infos[n].core_policy and infos[n].returns is Policy for n in (*fc.PRESETS, *SCIENCE))
    assert infos["dllm_cache"].core_policy and infos["fast_dllm_cache"].core_policy  # dllm's caches run on core
    assert infos["fast_dllm"].returns is dllm.FastDllm  # sampler settings with a cache policy inside


def test_build_makes_a_preset_from_its_name_and_knobs():
    policy = build("fora", interval=4)
    assert isinstance(policy, Policy) and policy.describe() == fc.fora(interval=4).describe()
    with pytest.raises(ValueError, match=r"unknown knobs \['intervall'\] for preset 'fora'"):
        build("fora", intervall=4)
    with pytest.raises(ValueError, match="is a core preset, not a dllm one"):
        build("fora", "dllm")
    with pytest.raises(ValueError, match="unknown preset 'forra'"):
        build("forra")


def test_a_decorated_function_is_registered_and_listed_by_the_cli(scratch, capsys):
    @preset(domain="testing", knob="interval")
    def every_other(interval: int = 2, **options) -> Policy:
        """Every Other Step: a made-up method for this test, whose first sentence runs over
        two lines (arXiv 0000.00000).

        A second paragraph that the summary leaves out.
        """
        return Policy(where=Blocks(), when=Interval(interval), what=Reuse(), name="every_other", **options)

    info = preset_info("every_other")
    assert info.function is every_other and info.domain == "testing" and info.knob == "interval"
    assert info.summary == ("Every Other Step: a made-up method for this test, whose first sentence runs over "
                            "two lines (arXiv 0000.00000).")
    assert presets("testing") == {"every_other": every_other}

    assert main(["presets", "--domain", "testing"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "testing"
    assert lines[1].split()[:2] == ["every_other", "interval"]
    assert info.summary in " ".join(out.split())  # whole, however the terminal wraps it
    assert "teacache" not in out and "second paragraph" not in out

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    headings = [line for line in out.splitlines() if line and not line.startswith(" ")]
    assert headings == ["core", "dllm", "science", "testing"]
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ") and not line.startswith("   ")}
    assert listed == set(fc.PRESETS) | SCIENCE | DLLM | {"every_other"}
    pab = next(line for line in out.splitlines() if line.split()[:1] == ["pab"])
    assert pab.split()[1] == "-"  # no knob to search


def test_knob_for_a_science_preset_and_its_search_on_the_toy_model():
    knob = knob_for("ab_forecast")
    assert (knob.method, knob.name, knob.integer, knob.never_skip, knob.default) == ("ab_forecast", "interval",
                                                                                      True, 1, 3)
    torch.manual_seed(0)
    model, inputs = ToyTransformer().eval(), toy_inputs(batch=1, seed=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = search_knob(model, lambda: sample(model, inputs, torch.linspace(1.0, 0.05, 12)), "ab_forecast",
                             compute_ratio=0.5, adapter=ToyAdapter(), options={"where": "layers", "warmup": 1},
                             config=SearchConfig(tolerance=0.0), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert result.knob == "interval" and isinstance(result.value, int) and result.met
    assert result.achieved.compute_ratio <= 0.5
    by_value = {e.value: e.compute_ratio for e in result.evaluations}
    assert by_value.get(result.value - 1, 1.0) > 0.5  # one step less aggressive misses the target


def test_knob_for_refuses_presets_without_a_searchable_knob(scratch):
    with pytest.raises(ValueError, match="dllm_cache has no single strength knob.*calibrate one of .*ab_forecast"):
        knob_for("dllm_cache")

    class Settings:
        pass

    @preset(domain="testing", knob="threshold")
    def own_policy(threshold: float = 0.5) -> Settings:
        """Own Policy (arXiv 0000.00000)."""
        return Settings()

    with pytest.raises(ValueError, match="builds a Settings, not a forecache.core Policy"):
        knob_for("own_policy")


def test_unknown_names_raise_naming_the_known_presets_and_the_fix():
    for ask in (lambda: preset_info("teacach"), lambda: lookup("teacach"), lambda: knob_for("teacach")):
        with pytest.raises(ValueError, match="unknown preset 'teacach'; choose one of") as error:
            ask()
        message = str(error.value)
        assert all(f"'{name}'" in message for name in ("teacache", "ab_forecast", "dllm_cache"))
        assert "@forecache.core.presets.registry.preset" in message and "'forecache.presets' entry points" in message
    with pytest.raises(ValueError, match=r"no presets registered for domain 'chemistry'; registered domains: "
                                         r"\['core', 'dllm', 'science'\]"):
        presets("chemistry")
    with pytest.raises(SystemExit, match="forecache presets: no presets registered for domain 'chemistry'"):
        main(["presets", "--domain", "chemistry"])


def test_the_decorator_refuses_what_it_cannot_register(scratch):
    with pytest.raises(ValueError, match="'teacache' of domain 'testing' is already registered by "
                                         "forecache.core.presets.dynamic.teacache"):
        @preset(domain="testing")
        def teacache() -> Policy:
            """A second TeaCache (arXiv 2411.19108)."""

    with pytest.raises(ValueError, match="knob='ratio' is not one a search can move"):
        @preset(knob="ratio")
        def a(ratio: float = 0.1) -> Policy:
            """A (arXiv 0000.00000)."""

    with pytest.raises(ValueError, match="knob='interval' must be an argument with a default"):
        @preset(knob="interval")
        def b(interval: int) -> Policy:
            """B (arXiv 0000.00000)."""

    with pytest.raises(ValueError, match="'c' has no docstring"):
        @preset
        def c() -> Policy:
            return None

    with pytest.raises(ValueError, match="'d' needs a return annotation"):
        @preset
        def d():
            """D (arXiv 0000.00000)."""

    assert not {"teacache", "a", "b", "c", "d"} & {n for n, i in preset_infos().items() if i.domain == "testing"}


def test_plain_decorator_takes_the_domain_from_the_package(scratch):
    @preset
    def plain() -> Policy:
        """Plain (arXiv 0000.00000)."""

    assert preset_info("plain").domain == __name__.split(".")[0]  # outside forecache: the top-level package
    assert preset_info("ab_forecast").domain == "science"  # forecache.science.presets -> science


def test_every_core_summary_is_its_whole_first_sentence():
    infos = preset_infos("core")
    for name, info in infos.items():
        assert info.summary.endswith("."), name
        assert "\n" not in info.summary and "  " not in info.summary, name
    # the two whose first sentence runs over two docstring lines
    assert infos["fbcache"].summary == (
        "First-Block Cache (ParaAttention; the idea of TeaCache, arXiv 2411.19108, probed on the first block's "
        "residual instead of the modulated input).")
    assert infos["foresight"].summary == (
        "Foresight: Adaptive Layer Reuse for Accelerated and High-Quality Text-to-Video Generation "
        "(arXiv 2506.00329).")


def test_first_sentence_ends_at_a_sentence_not_at_an_abbreviation_or_a_number():
    doc = """AB-Cache (arXiv 2504.10540) as Sommer et al. (arXiv 2510.04646) apply it, e.g. Foo
    and i.e. Bar, on the ``step index``. ``basis="time"`` is the other.

    Second paragraph."""
    assert first_sentence(doc) == ("AB-Cache (arXiv 2504.10540) as Sommer et al. (arXiv 2510.04646) apply it, "
                                   "e.g. Foo and i.e. Bar, on the `step index`.")
    assert first_sentence("See :func:`~a.b` first. Then more.") == "See `a.b` first."
    assert first_sentence("No full stop at all") == "No full stop at all"
