import pytest
from ptdeploy import names
from ptdeploy.errors import ParameterError


def test_three_level_name_built_and_checked():
    assert names.registered_model_name("main", "default", "llama") == "main.default.llama"


@pytest.mark.parametrize(
    ("name", "target", "fragment"),
    [
        ("default.llama", "databricks", "has 2 level(s); Unity Catalog"),
        ("llama", "databricks", "has 1 level(s)"),
        ("main.default.my model", "databricks", "contains ' '"),
        ("main.def/ault.m", "local", "contains '/'"),
        ("main.default.Llama", "databricks", "Use 'llama'"),
        ("a.b.c.d", "local", "has 4 levels"),
        ("", "local", "is empty"),
    ],
)
def test_illegal_registered_names(name, target, fragment):
    with pytest.raises(ParameterError) as err:
        names.check_registered_model_name(name, target)
    assert fragment in str(err.value)


def test_local_accepts_three_levels_and_plain_names():
    assert names.check_registered_model_name("main.default.m", "local") == "main.default.m"
    assert names.check_registered_model_name("m", "local") == "m"


@pytest.mark.parametrize("alias", ["latest", "v3", "bad alias", ""])
def test_reserved_or_bad_aliases(alias):
    with pytest.raises(ParameterError):
        names.check_alias(alias)
