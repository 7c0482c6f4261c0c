import pytest
from ptdeploy import names
from ptdeploy.errors import ParameterError


def test_three_level_name_built_and_checked():
    assert names.registered_model_name("main", "default", "llama") == "main.default.llama"


@pytest.mark.parametrize(
    ("name", "unity_catalog", "fragment"),
    [
        ("default.llama", True, "has 2 level(s); Unity Catalog"),
        ("llama", True, "has 1 level(s)"),
        ("main.default.my model", True, "contains ' '"),
        ("main.def/ault.m", False, "contains '/'"),
        ("main.default.Llama", True, "Use 'llama'"),
        ("a.b.c.d", False, "has 4 levels"),
        ("", False, "is empty"),
    ],
)
def test_illegal_registered_names(name, unity_catalog, fragment):
    with pytest.raises(ParameterError) as err:
        names.check_registered_model_name(name, unity_catalog=unity_catalog)
    assert fragment in str(err.value)


def test_local_accepts_three_levels_and_plain_names():
    assert (
        names.check_registered_model_name("main.default.m", unity_catalog=False) == "main.default.m"
    )
    assert names.check_registered_model_name("m", unity_catalog=False) == "m"


@pytest.mark.parametrize("alias", ["latest", "v3", "bad alias", ""])
def test_reserved_or_bad_aliases(alias):
    with pytest.raises(ParameterError):
        names.check_alias(alias)
