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


@pytest.mark.parametrize("name", ["-leading", "_leading", "has space", "a" * 64, "ünïcode"])
def test_the_client_and_the_local_workspace_refuse_the_same_endpoint_names(local_client, name):
    from databricks.sdk.errors import InvalidParameterValue
    from databricks.sdk.service.serving import EndpointCoreConfigInput, ServedEntityInput
    from fakes import Catalog, ReadyWorker
    from ptdeploy.errors import EndpointConfigError

    with pytest.raises(EndpointConfigError) as client_side:
        names.check_endpoint_name(name, "name")
    w = local_client(ReadyWorker, Catalog())
    entity = ServedEntityInput(
        entity_name="main.default.llama", entity_version="1", max_provisioned_throughput=20
    )
    with pytest.raises(InvalidParameterValue) as server_side:
        w.serving_endpoints.create(
            name=name, config=EndpointCoreConfigInput(name=name, served_entities=[entity])
        )
    assert str(server_side.value) == str(client_side.value)
    assert f"name={name!r} is not valid: expected 1 to 63 letters" in str(client_side.value)


@pytest.mark.parametrize("name", ["a", "llama-3_chat", "A" * 63, "0start"])
def test_a_name_the_client_accepts_the_local_workspace_creates(local_client, name):
    from databricks.sdk.service.serving import EndpointCoreConfigInput, ServedEntityInput
    from fakes import Catalog, ReadyWorker

    w = local_client(ReadyWorker, Catalog())
    entity = ServedEntityInput(
        entity_name="main.default.llama", entity_version="1", max_provisioned_throughput=20
    )
    names.check_endpoint_name(name)
    w.serving_endpoints.create(
        name=name, config=EndpointCoreConfigInput(name=name, served_entities=[entity])
    )
    assert w.serving_endpoints.get(name).name == name
